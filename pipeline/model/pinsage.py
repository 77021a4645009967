"""The PinSage model: an input layer, K stacked PinSage convolutions and a dense head.

Layer convention: conv 0 is applied first (bottom). With a K-layer minibatch,
the nodes of layer k (0 = targets) get their representation from conv
``K-1-k`` applied to layer k+1's; in ``full_graph_embed`` conv c is applied to
every node in turn, c = 0 .. K-1. Both therefore give each node the same
value, which is what lets Spark inference run one ``layer()`` per pass over
all nodes, then ``output()`` (head and L2 norm) on the last layer.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.layers import NORM_EPS, PinSageConv, check_aggregator

ID_EMBEDDINGS = ("on", "off", "hashed")

# Multiplier of the hashed ID embedding (MurmurHash2's m: odd, < 2**31).
HASH_MULTIPLIER = 0x5BD1E995
_LOW32 = 0xFFFFFFFF


def hash_ids(node_ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """Bucket of each node id: ``((id mod 2**32) * 0x5BD1E995 mod 2**32) mod buckets``.

    All in int64 without overflow (a 32-bit value times a 31-bit constant <
    2**63), so it is the same on every platform and in Spark. The multiply
    mod 2**32 is a bijection of 32-bit ids that scatters consecutive ids over
    the buckets.
    """
    x = node_ids.to(torch.int64) & _LOW32
    return ((x * HASH_MULTIPLIER) & _LOW32) % buckets


def dense_head(dim: int, layers: int) -> nn.Sequential:
    """PinSage's final dense layers (Algorithm 2: ``z = G2 ReLU(G1 h + g)``), ``layers`` deep.

    ``layers - 1`` blocks ``Linear(dim, dim) -> ReLU``, then ``Linear(dim, dim)``
    without bias, as the paper's G2 has none. 0 layers: the identity (the model
    ends at the last convolution); 2: the paper's head, Linear -> ReLU -> Linear.
    As after a convolution's ReLU, a node whose ReLU output is all zero gets the
    zero vector, which the final L2 norm keeps at 0.
    """
    blocks: list[nn.Module] = []
    for _ in range(layers - 1):
        blocks += [nn.Linear(dim, dim), nn.ReLU()]
    if layers:
        blocks.append(nn.Linear(dim, dim, bias=False))
    return nn.Sequential(*blocks)


class PinSage(nn.Module):
    """Item embeddings from features and/or a learnable ID embedding, K convolutions, a head.

    ``id_embedding``: ``"on"`` one row per item 0..num_items-1, ``"off"``
    features only, ``"hashed"`` ``id_buckets`` rows shared through ``hash_ids``
    (bounded memory for huge or growing catalogues). With ``"on"`` an item
    added after training (id >= num_items) has no row: its ID contribution is
    zero, so it is embedded from its features and neighbours alone (inductive).
    ``head_layers``: dense layers after the last convolution (:func:`dense_head`).
    ``item_bias``: a learned query shift ``u``; ``query_offsets``: a learned
    offset per item for its query side (see :meth:`query`).
    """

    def __init__(self, feature_dim: int, hidden_dim: int, num_layers: int, aggregator: str,
                 num_items: int, id_embedding: str = "on", id_buckets: int = 100_000,
                 head_layers: int = 0, item_bias: bool = False, query_offsets: bool = False):
        super().__init__()
        check_aggregator(aggregator)
        if id_embedding not in ID_EMBEDDINGS:
            raise ValueError(f"unknown id_embedding {id_embedding!r}; "
                             f"expected one of {ID_EMBEDDINGS}")
        if feature_dim < 0 or hidden_dim < 1 or num_layers < 0 or head_layers < 0:
            raise ValueError(f"need feature_dim >= 0, hidden_dim >= 1, num_layers >= 0, "
                             f"head_layers >= 0; got {feature_dim}, {hidden_dim}, {num_layers}, "
                             f"{head_layers}")
        if feature_dim == 0 and id_embedding == "off":
            raise ValueError("the model has no input: feature_dim is 0 and id_embedding is 'off'")
        self.feature_dim, self.hidden_dim, self.num_layers = feature_dim, hidden_dim, num_layers
        self.aggregator, self.id_embedding, self.id_buckets = aggregator, id_embedding, id_buckets
        self.head_layers = head_layers

        self.feature_proj = nn.Linear(feature_dim, hidden_dim) if feature_dim > 0 else None
        rows = {"on": num_items, "hashed": id_buckets}.get(id_embedding)
        if rows is not None and rows < 1:
            raise ValueError(f"id_embedding={id_embedding!r} needs at least one row, got {rows}")
        self.id_emb = nn.Embedding(rows, hidden_dim) if rows else None
        if self.id_emb is not None:
            # Same scale as a projected feature vector, not N(0, 1) per coordinate.
            nn.init.normal_(self.id_emb.weight, std=1.0 / math.sqrt(hidden_dim))
        self.convs = nn.ModuleList(PinSageConv(hidden_dim, hidden_dim, aggregator)
                                   for _ in range(num_layers))
        self.head = dense_head(hidden_dim, head_layers)
        self.item_bias = item_bias
        self.query_shift = nn.Parameter(torch.zeros(hidden_dim)) if item_bias else None
        # Zero at the start, and for every item never a training query (new items stay inductive).
        self.query_offset = nn.Embedding(num_items, hidden_dim) if query_offsets else None
        if self.query_offset is not None:
            nn.init.zeros_(self.query_offset.weight)

    def query(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The vectors items ``ids`` search with: embedding + own offset ``o_q`` + shift ``u``.

        The score of candidate c is ``(z_q + o_q + u)·z_c = cos(q, c) + o_q·z_c
        + u·z_c``. ``u·z_c`` is a bias for how often c is the answer whatever
        the query, which unit-norm embeddings alone cannot express (on graphs
        whose answers are hubs, popularity beats them). ``o_q`` makes the
        relation directed, as word2vec's separate input vectors do: what
        follows q (the pairs run from earlier to later, source to target) need
        not be what precedes it, yet cosine is symmetric. Candidates keep
        their unit-norm embeddings, so the index is unchanged; only query
        vectors move. An item the model has no row for (added after
        training) gets no offset.
        """
        if self.query_offset is not None:
            ids = ids.to(torch.int64)
            rows = self.query_offset.num_embeddings
            z = z + self.query_offset(ids.clamp_max(rows - 1)).masked_fill(
                (ids >= rows).unsqueeze(-1), 0.0)
        return z if self.query_shift is None else z + self.query_shift

    def input_layer(self, node_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """(n, hidden): projected features plus the node's ID embedding (0 for unseen ids)."""
        h = None
        if self.feature_proj is not None:
            h = self.feature_proj(features.to(self.feature_proj.weight.dtype))
        if self.id_emb is not None:
            ids = node_ids.to(torch.int64)
            if self.id_embedding == "hashed":
                e = self.id_emb(hash_ids(ids, self.id_buckets))
            else:
                rows = self.id_emb.num_embeddings
                e = self.id_emb(ids.clamp_max(rows - 1)).masked_fill((ids >= rows).unsqueeze(-1), 0.0)
            h = e if h is None else h + e
        return h

    def layer(self, k: int, h_self: torch.Tensor, h_nbr: torch.Tensor, weight: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
        """Apply conv ``k`` (0 = bottom) to any number of nodes."""
        return self.convs[k](h_self, h_nbr, weight, mask)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """The embedding from the last layer's representation: the head, then the L2 norm."""
        return F.normalize(self.head(h), dim=-1, eps=NORM_EPS)

    def forward(self, nodes: Sequence[torch.Tensor], features: torch.Tensor | None,
                nbr_idx: Sequence[torch.Tensor], nbr_weight: Sequence[torch.Tensor]
                ) -> torch.Tensor:
        """Embeddings (|layer 0|, hidden) of one minibatch laid out as ``schemas.BATCHES``.

        ``nodes[k]`` are layer k's node ids, ``features`` those of ``nodes[K]``,
        ``nbr_idx[k]`` (|layer k|, T) local indices into layer k+1 (-1 = padding)
        and ``nbr_weight[k]`` their weights.
        """
        K = len(nodes) - 1
        if K != self.num_layers or len(nbr_idx) != K or len(nbr_weight) != K:
            raise ValueError(f"minibatch has {K} layers ({len(nbr_idx)} index and "
                             f"{len(nbr_weight)} weight tensors), model has {self.num_layers}")
        h = self.input_layer(nodes[K], features)
        for k in range(K - 1, -1, -1):
            idx = nbr_idx[k].to(torch.int64)
            h = self.layer(K - 1 - k, h[:len(nodes[k])], h[idx.clamp_min(0)],
                           nbr_weight[k], idx >= 0)
        return self.output(h)

    def full_graph_embed(self, node_ids: torch.Tensor, features: torch.Tensor | None,
                         nbr_table: torch.Tensor, nbr_weight: torch.Tensor,
                         return_layers: bool = False):
        """Every node's embedding, each layer computed once for all N nodes.

        Each node's message is computed once and gathered into its T
        neighbours' slots (what Spark inference does with its map, route and
        reduce, :mod:`pipeline.infer`); the reference the inference tests compare to.

        ``nbr_table`` (N, T) holds row indices into ``node_ids`` (-1 = padding).
        With ``return_layers`` the list [input, after conv 0, ..., after conv
        K-1] (before the head) is returned as well, for layer-by-layer
        exactness checks.
        """
        idx = nbr_table.to(torch.int64)
        safe, mask = idx.clamp_min(0), idx >= 0
        h = self.input_layer(node_ids, features)
        layers = [h]
        for conv in self.convs:
            h = conv.combine(h, conv.message(h)[safe], nbr_weight, mask)
            layers.append(h)
        out = self.output(h)
        return (out, layers) if return_layers else out
