"""PinSage graph convolution on fixed-fanout neighbour tensors.

Every node has exactly T neighbour slots (padded, with a boolean mask), so a
layer is a handful of dense batched ops: no graph library and no per-edge
Python. The same layer serves a training minibatch and full-graph inference:
``forward`` is ``combine(message(h_nbr))``, and inference calls the two halves
itself, computing each node's message once rather than once per edge.

Padding rule, shared by every aggregator: padded slots are zeroed *before*
anything is computed from them (``masked_fill``, which passes no gradient), so
whatever a padded slot holds (even NaN) cannot reach the output or the
gradients, and a node with no real neighbour aggregates to ``n = 0``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AGGREGATORS = ("importance", "mean", "max", "gatv2", "gated")

# Normalisation eps; also keeps a ReLU-zeroed output at exactly 0 instead of NaN.
NORM_EPS = 1e-12
GATV2_SLOPE = 0.2


def check_aggregator(aggregator: str) -> str:
    if aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {aggregator!r}; expected one of {AGGREGATORS}")
    return aggregator


def _weighted_sum(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_j w_j v_j / sum_j w_j`` over T; 0 where the weights sum to 0.

    ``weight`` is already 0 on padding. The denominator is clamped so that an
    all-padded (or all-zero-weight) row gives 0/tiny = 0 with finite gradients.
    """
    den = weight.sum(1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    return torch.einsum("nt,ntd->nd", weight, values) / den


class PinSageConv(nn.Module):
    """One PinSage convolution (Ying et al. 2018, Algorithm 1).

    ``m_j = ReLU(Q h_j + q)`` for each neighbour, ``n = AGG_j(m_j)``,
    ``z = normalize(ReLU(W [h_self, n] + w))``. Parameters: ``msg`` (Q, q) and
    ``out`` (W, w); ``gatv2`` adds ``att_self``, ``att_nbr``, ``att``; ``gated``
    adds ``gate_self``, ``gate_nbr`` and ``residual``.
    """

    def __init__(self, in_dim: int, out_dim: int, aggregator: str = "importance"):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.aggregator = check_aggregator(aggregator)
        self.msg = nn.Linear(in_dim, out_dim)
        self.out = nn.Linear(in_dim + out_dim, out_dim)
        if aggregator == "gatv2":
            self.att_self = nn.Linear(in_dim, out_dim)
            self.att_nbr = nn.Linear(in_dim, out_dim, bias=False)
            self.att = nn.Linear(out_dim, 1, bias=False)
        elif aggregator == "gated":
            self.gate_self = nn.Linear(in_dim, out_dim)
            self.gate_nbr = nn.Linear(in_dim, out_dim, bias=False)
            # Identity keeps the state_dict free of a redundant square matrix.
            self.residual = (nn.Identity() if in_dim == out_dim
                             else nn.Linear(in_dim, out_dim, bias=False))

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}, aggregator={self.aggregator!r}"

    @property
    def message_dim(self) -> int:
        """Width of :meth:`message`: ``m_j``, plus ``W_r h_j`` (gatv2) or ``G_n h_j`` (gated)."""
        return self.out_dim * (2 if self.aggregator in ("gatv2", "gated") else 1)

    def message(self, h: torch.Tensor) -> torch.Tensor:
        """What a node sends to each node that has it as a neighbour: (..., in) -> (..., message_dim).

        Everything the aggregator needs from a neighbour is a function of that
        neighbour alone, so it is computed once per node (whole-graph
        inference ships it to the T nodes that need it) instead of once per edge.
        """
        m = torch.relu(self.msg(h))
        if self.aggregator == "gatv2":
            return torch.cat([m, self.att_nbr(h)], dim=-1)
        if self.aggregator == "gated":
            return torch.cat([m, self.gate_nbr(h)], dim=-1)
        return m

    def combine(self, h_self: torch.Tensor, msgs: torch.Tensor, weight: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """``h_self`` (N, in), ``msgs`` (N, T, message_dim), ``weight`` (N, T), ``mask`` (N, T) bool.

        Aggregates the neighbours' messages and applies the dense layer; returns
        the (N, out) L2-normalised representations.
        """
        mask = mask.to(torch.bool)
        pad = ~mask
        msgs = msgs.masked_fill(pad.unsqueeze(-1), 0.0)
        weight = weight.to(msgs.dtype).masked_fill(pad, 0.0)
        m, nbr_part = msgs[..., :self.out_dim], msgs[..., self.out_dim:]

        agg = self.aggregator
        if agg == "importance":
            n = _weighted_sum(m, weight)
        elif agg == "mean":
            n = _weighted_sum(m, mask.to(m.dtype))
        elif agg == "max":
            # m >= 0 (ReLU) and padded slots hold 0, so the max over all T slots
            # is the max over the real ones, and 0 for a node without neighbours.
            n = m.amax(1)
        elif agg == "gatv2":
            n = self._gatv2(h_self, nbr_part, weight, mask, m)
        else:
            n = self._gated(h_self, nbr_part, weight, m)

        z = torch.relu(self.out(torch.cat([h_self, n], dim=-1)))
        if agg == "gated":
            z = z + self.residual(h_self)
        return F.normalize(z, dim=-1, eps=NORM_EPS)

    def forward(self, h_self: torch.Tensor, h_nbr: torch.Tensor, weight: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """``h_self`` (N, in), ``h_nbr`` (N, T, in), ``weight`` (N, T), ``mask`` (N, T) bool.

        ``combine(h_self, message(h_nbr), ...)``; returns the (N, out)
        L2-normalised representations.
        """
        mask = mask.to(torch.bool)
        h_nbr = h_nbr.masked_fill(~mask.unsqueeze(-1), 0.0)
        return self.combine(h_self, self.message(h_nbr), weight, mask)

    def _gatv2(self, h_self, att_nbr, weight, mask, m):
        """GATv2 attention with ``log(weight)`` as an additive prior.

        ``e_j = a^T LeakyReLU(W_l h_self + W_r h_j) + log(max(w_j, tiny))``
        (``att_nbr`` = ``W_r h_j``, sent with the message),
        ``alpha = softmax`` over real neighbours, ``n = sum_j alpha_j m_j``.
        Padded slots get -inf; rows with no real neighbour get all-zero scores
        (a finite softmax) and their alphas are then zeroed, so ``n = 0``.
        """
        tiny = torch.finfo(weight.dtype).tiny
        hidden = F.leaky_relu(self.att_self(h_self).unsqueeze(1) + att_nbr,
                              GATV2_SLOPE)
        score = self.att(hidden).squeeze(-1) + torch.log(weight.clamp_min(tiny))
        score = score.masked_fill(~mask, float("-inf"))
        has_nbr = mask.any(1, keepdim=True)
        score = score.masked_fill(~has_nbr, 0.0)
        alpha = torch.softmax(score, dim=1).masked_fill(~mask, 0.0)
        return torch.einsum("nt,ntd->nd", alpha, m)

    def _gated(self, h_self, gate_nbr, weight, m):
        """Gated-GCN aggregation, importance-weighted.

        ``g_j = sigmoid(G_s h_self + g + G_n h_j)`` (elementwise, out_dim wide;
        ``gate_nbr`` = ``G_n h_j``, sent with the message),
        ``n = sum_j w_j g_j * m_j / sum_j w_j`` over real neighbours (w = 0 on
        padding). The gates rescale messages without being renormalised, so a
        node can damp its whole neighbourhood; the residual (added in forward,
        before normalising) keeps its own signal: ``z = ReLU(W [h_self, n] + w)
        + R h_self`` with R the identity when in_dim == out_dim, else a Linear
        without bias.
        """
        gate = torch.sigmoid(self.gate_self(h_self).unsqueeze(1) + gate_nbr)
        return _weighted_sum(gate * m, weight)
