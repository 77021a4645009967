"""Sampled softmax against a direct, one-query-at-a-time computation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.model.loss import (in_batch_collisions, log_expected_count, max_margin_loss,
                                 sampled_softmax_loss)


def _direct(zq, zp, ze, zh, hard_ok, query, positive, easy_ids, p_b, p_e, tau):
    """-log p(positive) with every candidate's logit written out, one query at a time."""
    B, E = len(query), len(easy_ids)
    count = lambda item: B * p_b[item] + E * p_e[item]  # noqa: E731
    total = 0.0
    for i in range(B):
        logits, own = [], None
        for j in range(B):
            not_negative = j != i and (positive[j] == positive[i] or positive[j] == query[i]
                                       or query[j] == query[i])
            if not_negative:
                continue
            logit = float(zq[i] @ zp[j]) / tau - math.log(count(positive[j]))
            logits.append(logit)
            if j == i:
                own = logit
        for j in range(E):
            logits.append(float(zq[i] @ ze[j]) / tau - math.log(count(easy_ids[j])))
        for h in range(zh.shape[1]):
            if hard_ok[i][h]:
                logits.append(float(zq[i] @ zh[i, h]) / tau)
        top = max(logits)
        total += top + math.log(sum(math.exp(x - top) for x in logits)) - own
    return total / B


def test_sampled_softmax_equals_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    n_items, d, tau = 12, 5, 0.2
    # Item ids: query 1 appears twice; positive 4 twice; positive 2 is another query.
    query = [1, 1, 2, 3, 5]
    positive = [4, 6, 4, 2, 7]
    easy_ids = [8, 9, 10, 9]                       # repeats are separate draws
    emb = F.normalize(torch.randn(n_items, d, generator=g), dim=-1).double()
    p_b = torch.rand(n_items, generator=g).double() + 0.1
    p_e = torch.rand(n_items, generator=g).double() + 0.1
    p_b, p_e = p_b / p_b.sum(), p_e / p_e.sum()
    hard = torch.tensor([[0, 11], [11, -1], [-1, -1], [3, 0], [11, 0]])
    hard_ok = hard >= 0
    q, pos, easy = torch.tensor(query), torch.tensor(positive), torch.tensor(easy_ids)
    zq, zp, ze, zh = emb[q], emb[pos], emb[easy], emb[hard.clamp_min(0)]
    B, E = len(q), len(easy)
    got = sampled_softmax_loss(zq, zp, ze, temperature=tau,
                               log_count_pos=log_expected_count(pos, p_b, p_e, B, E),
                               log_count_easy=log_expected_count(easy, p_b, p_e, B, E),
                               collisions=in_batch_collisions(q, pos), z_hard=zh,
                               hard_mask=hard_ok)
    want = _direct(zq, zp, ze, zh, hard_ok.tolist(), query, positive, easy_ids, p_b, p_e, tau)
    assert got.item() == pytest.approx(want, rel=1e-12)
    no_hard = sampled_softmax_loss(zq, zp, ze, temperature=tau,
                                   log_count_pos=log_expected_count(pos, p_b, p_e, B, E),
                                   log_count_easy=log_expected_count(easy, p_b, p_e, B, E),
                                   collisions=in_batch_collisions(q, pos))
    want = _direct(zq, zp, ze, zh[:, :0], [], query, positive, easy_ids, p_b, p_e, tau)
    assert no_hard.item() == pytest.approx(want, rel=1e-12)
    assert got.item() > no_hard.item()             # more negatives, larger normaliser


def test_in_batch_collisions_brute_force():
    q = torch.tensor([1, 1, 2, 3, 5, 4])
    p = torch.tensor([4, 6, 4, 2, 7, 1])
    got = in_batch_collisions(q, p)
    for i in range(6):
        for j in range(6):
            want = i != j and (p[j] == p[i] or p[j] == q[i] or q[j] == q[i])
            assert bool(got[i, j]) == bool(want), (i, j)


def test_softmax_keeps_teaching_where_max_margin_has_stopped():
    """Negatives already below the margin: the hinge has no gradient, the softmax still has."""
    zq = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    zp = torch.tensor([[0.9, 0.436], [0.436, 0.9]])
    ze = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    max_margin_loss(zq, zp, ze, 0.1).backward()
    assert zq.grad.abs().sum() == 0
    zq.grad = None
    zero = torch.zeros(2)
    sampled_softmax_loss(zq, zp, ze, temperature=0.1, log_count_pos=zero,
                         log_count_easy=zero).backward()
    assert zq.grad.abs().sum() > 0
