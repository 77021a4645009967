"""PinSage-style graph embeddings: ingest, sample, train, infer, evaluate, refresh."""
__version__ = "0.1.0"


def similar_items(run_dir, ids, k=10, version=None):
    """The ``k`` items most similar to each of ``ids`` in a published ``index`` stage.

    See :func:`pipeline.evaluate.index.similar_items`; imported on first use so
    that ``import pipeline`` (on every Spark executor) does not load faiss.
    """
    from pipeline.evaluate.index import similar_items as _similar_items
    return _similar_items(run_dir, ids, k, version)
