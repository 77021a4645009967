"""Validation during training: hit-rate on the split's validation pairs, and loss.

Hit-rate@k: for each held-out validation pair, is the target among the k
items whose full-graph embeddings have the highest inner product with the
query's (the query itself excluded)? The popularity baseline (the k most
interacted items) is computed once on the same pairs for comparison.
"""
from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import torch

from pipeline.data.features import FeatureStore
from pipeline.data.split import item_degree, read_holdout, read_live_items, read_train_edges
from pipeline.io import versioned
from pipeline.io.arrays import dense_neighbors
from pipeline.metrics import drop_query, summarize, target_ranks
from pipeline.model import max_margin_loss
from pipeline.train.loader import BatchLoader, list_batch_files

QUERY_CHUNK = 1024


def hit_rate(embeddings: torch.Tensor, queries: torch.Tensor, targets: torch.Tensor, k: int,
             live: torch.Tensor | None = None, query_vectors: torch.Tensor | None = None) -> float:
    """Share of queries whose target is among the k best inner products, the query excluded.

    ``live`` (a mask over items) leaves removed items' placeholders out of the
    ranking; ``query_vectors`` (by item, ``PinSage.query``) are what queries
    search with (default: their embeddings).
    """
    hits = 0
    candidates = len(embeddings) if live is None else int(live.sum())
    for lo in range(0, len(queries), QUERY_CHUNK):
        q, tgt = queries[lo:lo + QUERY_CHUNK], targets[lo:lo + QUERY_CHUNK]
        zq = (embeddings if query_vectors is None else query_vectors)[q]
        s = zq @ embeddings.T
        if live is not None:
            s[:, ~live] = -torch.inf
        s[torch.arange(len(q)), q] = -torch.inf
        top = s.topk(max(0, min(k, candidates - 1)), dim=1).indices
        hits += int((top == tgt[:, None]).any(dim=1).sum())
    return hits / max(1, len(queries))


def popularity_hit_rate(degree: np.ndarray, queries: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Hit-rate of recommending the k most interacted items (the query excluded).

    Scored exactly as the evaluation's ``popularity`` baseline.
    """
    ranked = np.argsort(-degree, kind="stable")[:k + 1]
    top = drop_query(np.broadcast_to(ranked, (len(queries), len(ranked))), queries, k)
    return summarize(target_ranks(top, targets), [k])[f"hit_rate@{k}"] if len(queries) else 0.0


class Validator:
    def __init__(self, run_dir: str, inputs: dict, store: FeatureStore, num_neighbors: int,
                 device: torch.device, k: int = 10, margin: float = 0.1,
                 exclude: np.ndarray | None = None):
        """``exclude``: items never ranked (the new items of ``split.protocol=new_items``)."""
        self.k, self.device, self.margin = k, device, margin
        n = store.num_items
        nb_dir = versioned.resolve(run_dir, "neighbors", inputs["neighbors"]) / "neighbors"
        ids, w = dense_neighbors(ds.dataset(str(nb_dir), format="parquet").to_table(), n,
                                 num_neighbors)
        self.nbr = torch.from_numpy(ids).to(device)
        self.nbr_w = torch.from_numpy(w).to(device)
        self.node_ids = torch.arange(n, device=device)
        self.features = torch.from_numpy(np.asarray(store.gather(np.arange(n)))).to(device)
        queries, targets = read_holdout(run_dir, inputs["split"], "validation")
        self.queries, self.targets = torch.from_numpy(queries), torch.from_numpy(targets)
        live = read_live_items(run_dir, inputs["graph"], n)
        if exclude is not None:
            live[exclude] = False
        self.live = torch.from_numpy(live)
        src, dst, _ = read_train_edges(run_dir, inputs["split"])
        self.popularity_hit_rate = popularity_hit_rate(item_degree(src, dst, n), queries, targets, k)
        batches_dir = versioned.resolve(run_dir, "batches", inputs["batches"])
        files = list_batch_files(batches_dir, "validation")
        self.val_loader = BatchLoader(files, store, num_neighbors, prefetch=0, shuffle=False) \
            if files else None

    @torch.no_grad()
    def mrr_by_bias_scale(self, model, scales) -> dict[float, float]:
        """Validation MRR when queries search with ``z_q + o_q + s·u`` (``PinSage.query`` with
        its shift u scaled by s).

        A target's rank counts the live items other than the query that
        score strictly higher; MRR is the mean of 1/rank (no cut-off). Empty
        without validation rows.
        """
        if len(self.queries) == 0:
            return {}
        z = model.full_graph_embed(self.node_ids, self.features, self.nbr, self.nbr_w)
        u = model.query_shift.detach()
        unshifted = (model.query(z, self.node_ids) - u).cpu()  # z_q + o_q
        z, u = z.cpu(), u.cpu()
        bias = z @ u                                           # u.z_c for every candidate
        recip: dict[float, list[torch.Tensor]] = {float(s): [] for s in scales}
        for lo in range(0, len(self.queries), QUERY_CHUNK):
            q, tgt = self.queries[lo:lo + QUERY_CHUNK], self.targets[lo:lo + QUERY_CHUNK]
            cosine = unshifted[q] @ z.T                        # once per chunk, for every scale
            for s, parts in recip.items():
                scores = cosine + s * bias
                scores[:, ~self.live] = -torch.inf
                scores[torch.arange(len(q)), q] = -torch.inf
                own = scores[torch.arange(len(q)), tgt]
                parts.append(1.0 / (1 + (scores > own[:, None]).sum(dim=1)).double())
        return {s: float(torch.cat(parts).mean()) for s, parts in recip.items()}

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        z = model.full_graph_embed(self.node_ids, self.features, self.nbr, self.nbr_w)
        query_vectors = model.query(z, self.node_ids).cpu()
        out = {f"val_hit_rate@{self.k}": hit_rate(z.cpu(), self.queries, self.targets, self.k,
                                                       self.live, query_vectors),
               f"val_popularity_hit_rate@{self.k}": self.popularity_hit_rate}
        losses = []
        if self.val_loader is not None:
            for mb in self.val_loader:
                mb = mb.to(self.device)
                zb = model(mb.nodes, mb.features, mb.nbr_idx, mb.nbr_weight)
                losses.append(max_margin_loss(model.query(zb[mb.query], mb.nodes[0][mb.query]),
                                              zb[mb.positive], zb[mb.easy], self.margin).item())
        out["val_loss"] = float(np.mean(losses)) if losses else None
        return out
