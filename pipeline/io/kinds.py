"""Node types, kept free of Spark so the trainer can run where PySpark is absent."""

# In a bipartite graph users/boards and items are separate id namespaces;
# only items get embeddings.
ITEM = "item"
USER = "user"
# The id of a removed item's (or user's) placeholder row: its number is never
# reused, so the row stays, with this id, no edges and zero features. Never a
# valid source id; served results never contain it.
RETIRED_ID = ""
