"""Node types, kept free of Spark so the trainer can run where PySpark is absent."""

# In a bipartite graph users/boards and items are separate id namespaces;
# only items get embeddings.
ITEM = "item"
USER = "user"
