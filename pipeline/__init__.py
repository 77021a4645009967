"""PinSage-style graph embeddings: ingest, sample, train, infer, evaluate, refresh, serve."""
__version__ = "0.1.0"
