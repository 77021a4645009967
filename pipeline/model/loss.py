"""Training losses on L2-normalised embeddings: max-margin and sampled softmax.

``max_margin_loss`` is PinSage's: it is zero once every negative sits
``margin`` below the positive, so with easy negatives it soon stops teaching.
``sampled_softmax_loss`` never saturates: each query's positive competes,
through a softmax at ``temperature``, with the batch's other positives
(in-batch negatives) and the shared easy negatives, each logit corrected by
the log of how often that candidate is expected among the candidates (logQ
correction, Yi et al., RecSys 2019), so popular items are not over-penalised
for being sampled often.
"""
from __future__ import annotations

import torch


def max_margin_loss(z_q: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor, margin: float,
                    neg_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over queries and negatives of ``max(0, z_q.z_neg - z_q.z_pos + margin)``.

    ``z_q``, ``z_pos``: (Nq, d). ``z_neg``: (Nneg, d) shared by every query, or
    (Nq, H, d) per query (hard negatives). ``neg_mask`` (same leading shape as
    the scores, True = real negative) lets ragged hard-negative lists be
    padded; the mean is then over real entries only. No negatives: 0.
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
        return loss.mean() if loss.numel() else loss.sum()
    keep = neg_mask.to(torch.bool).expand_as(loss)
    return loss.masked_fill(~keep, 0.0).sum() / keep.sum().clamp_min(1)


def in_batch_collisions(query: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """(B, B) True where the batch's positive j is no negative for query i.

    It is the same item as i's positive, the query itself, or another positive
    of the same query. The diagonal (i's own positive) is False. ``query`` and
    ``positive`` are node ids, or local indices that are unique per node.
    """
    hit = ((positive[None, :] == positive[:, None]) | (positive[None, :] == query[:, None])
           | (query[None, :] == query[:, None]))
    return hit & ~torch.eye(len(query), dtype=torch.bool, device=query.device)


def log_expected_count(ids: torch.Tensor, p_in_batch: torch.Tensor, p_easy: torch.Tensor,
                       n_in_batch: int, n_easy: int) -> torch.Tensor:
    """Log of how often item ``ids`` is expected among a batch's sampled candidates.

    The candidates are ``n_in_batch`` positives, each drawn with probability
    ``p_in_batch`` (an item's share of the training pairs' positives), and
    ``n_easy`` easy negatives drawn with probability ``p_easy``; the sum of
    the two expected counts is the mixture proposal's (mixed negative sampling).
    Every sampled item has a positive count, so the log is finite.
    """
    return torch.log(n_in_batch * p_in_batch[ids] + n_easy * p_easy[ids])


def sampled_softmax_loss(z_q: torch.Tensor, z_pos: torch.Tensor, z_easy: torch.Tensor, *,
                         temperature: float | torch.Tensor, log_count_pos: torch.Tensor,
                         log_count_easy: torch.Tensor, collisions: torch.Tensor | None = None,
                         z_hard: torch.Tensor | None = None,
                         hard_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over queries of ``-log softmax`` of the query's positive among its candidates.

    Query i's candidates: the batch's B positives (column i is its own), the
    E shared easy negatives and its H hard negatives. Logit of candidate c:
    ``z_q.z_c / temperature - log_count_c`` for in-batch and easy candidates
    (``log_count_pos`` (B,), ``log_count_easy`` (E,); see
    :func:`log_expected_count`); hard negatives are chosen, not sampled, so
    each counts once (correction 0). ``collisions`` (B, B, True = not a
    negative, e.g. :func:`in_batch_collisions`) and ``hard_mask`` (B, H, True
    = real) drop candidates; ``z_hard`` is (B, H, d). ``temperature`` may be a
    0-d tensor that is being learned (``train.learn_temperature``).
    """
    inv_t = 1.0 / temperature
    in_batch = (z_q @ z_pos.T) * inv_t - log_count_pos[None, :]
    if collisions is not None:
        in_batch = in_batch.masked_fill(collisions, -torch.inf)
    parts = [in_batch, (z_q @ z_easy.T) * inv_t - log_count_easy[None, :]]
    if z_hard is not None and z_hard.shape[1]:
        hard = torch.einsum("qd,qhd->qh", z_q, z_hard) * inv_t
        if hard_mask is not None:
            hard = hard.masked_fill(~hard_mask.to(torch.bool), -torch.inf)
        parts.append(hard)
    logits = torch.cat(parts, dim=1)
    return (torch.logsumexp(logits, dim=1) - in_batch.diagonal()).mean()
