"""The PinSage model in plain PyTorch, its loss, and construction from the config."""
from __future__ import annotations

import torch

from pipeline.model.layers import AGGREGATORS, PinSageConv
from pipeline.model.pinsage import ID_EMBEDDINGS, PinSage, hash_ids

__all__ = ["AGGREGATORS", "ID_EMBEDDINGS", "PinSage", "PinSageConv", "build_model", "hash_ids",
           "max_margin_loss"]


def max_margin_loss(z_q: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor, margin: float,
                    neg_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over queries and negatives of ``max(0, z_q.z_neg - z_q.z_pos + margin)``.

    ``z_q``, ``z_pos``: (Nq, d). ``z_neg``: (Nneg, d) shared by every query, or
    (Nq, H, d) per query (hard negatives). ``neg_mask`` (same leading shape as
    the scores, True = real negative) lets ragged hard-negative lists be
    padded; the mean is then over real entries only (0 if there are none).
    """
    pos = (z_q * z_pos).sum(-1, keepdim=True)
    if z_neg.dim() == 2:
        neg = z_q @ z_neg.T
    elif z_neg.dim() == 3:
        if z_neg.shape[0] != z_q.shape[0]:
            raise ValueError(f"per-query negatives {tuple(z_neg.shape)} do not match "
                             f"{z_q.shape[0]} queries")
        neg = torch.einsum("qd,qhd->qh", z_q, z_neg)
    else:
        raise ValueError(f"z_neg must be (Nneg, d) or (Nq, H, d), got {tuple(z_neg.shape)}")
    loss = torch.relu(neg - pos + margin)
    if neg_mask is None:
        return loss.mean()
    keep = neg_mask.to(torch.bool).expand_as(loss)
    return loss.masked_fill(~keep, 0.0).sum() / keep.sum().clamp_min(1)


def build_model(cfg_model, feature_dim: int, num_items: int) -> PinSage:
    """PinSage from ``ModelConfig`` fields (num_layers, hidden_dim, aggregator, id_*)."""
    return PinSage(feature_dim=feature_dim, hidden_dim=int(cfg_model.hidden_dim),
                   num_layers=int(cfg_model.num_layers), aggregator=str(cfg_model.aggregator),
                   num_items=num_items, id_embedding=str(cfg_model.id_embedding),
                   id_buckets=int(cfg_model.id_buckets))
