"""Item embeddings of a trained model computed in memory (``full_graph_embed``).

The ``pinsage`` row of the evaluation reads the published ``embeddings``
stage; the models trained only to be compared (``pipeline.evaluate.variants``)
are embedded here, with the same features and neighbourhoods they were
trained on.
"""
from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import torch

from pipeline.data.features import cached_feature_store
from pipeline.io import versioned
from pipeline.io.arrays import dense_neighbors
from pipeline.train.trainer import load_model


@torch.no_grad()
def embed_items(run_dir: str, model_version: str | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(n_items, d)`` L2-normalised embeddings of every item by a published model, and the
    vectors the items search with (``PinSage.query``), as the ``embeddings`` stage has them."""
    model, manifest = load_model(run_dir, model_version)
    inputs = manifest.inputs
    store = cached_feature_store(run_dir, inputs["graph"])
    n, T = store.num_items, manifest.num_neighbors
    nb_dir = versioned.check_version(run_dir, "neighbors", inputs["neighbors"]) / "neighbors"
    ids, w = dense_neighbors(ds.dataset(str(nb_dir), format="parquet").to_table(), n, T)
    nodes = torch.arange(n)
    z = model.full_graph_embed(nodes, torch.from_numpy(store.gather(np.arange(n))),
                               torch.from_numpy(ids), torch.from_numpy(w))
    return z.numpy().astype(np.float32), model.query(z, nodes).numpy().astype(np.float32)
