"""The PinSage model against hand/NumPy computations, gradcheck, masking and batch/full-graph parity."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.model import (AGGREGATORS, PinSage, PinSageConv, build_model, hash_ids,
                            max_margin_loss)

# The 5-node graph used for hand computations: node features (2-d) and T = 3
# neighbour slots per node, -1 = padding (weight 0).
H5 = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [0, -1]], dtype=np.float64)
NBR5 = np.array([[1, 2, -1], [4, 3, -1], [-1, -1, -1], [0, -1, -1], [1, 2, -1]])
W5 = np.array([[0.25, 0.5, 0], [0.6, 0.4, 0], [0, 0, 0], [1, 0, 0], [0.5, 0.5, 0]])


def conv_inputs(h, nbr, w, dtype=torch.float64):
    h = torch.tensor(h, dtype=dtype)
    idx = torch.tensor(nbr)
    return h, h[idx.clamp_min(0)], torch.tensor(w, dtype=dtype), idx >= 0


def set_identity_weights(conv: PinSageConv) -> None:
    """Q = I, q = 0, W = [I I], w = 0: then z = normalize(ReLU(h_self + n))."""
    with torch.no_grad():
        d = conv.out_dim
        conv.msg.weight.copy_(torch.eye(d))
        conv.msg.bias.zero_()
        conv.out.weight.copy_(torch.cat([torch.eye(d), torch.eye(d)], 1))
        conv.out.bias.zero_()


def unit(*v):
    v = np.array(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# Worked by hand, node by node: m_j = ReLU(h_j), n = AGG(m_j), z = unit(ReLU(h_self + n)).
# node 0: m = [0,1], [1,1] with w .25/.5; node 1: m = [0,0] (ReLU of [0,-1]), [2,0]
# with w .6/.4; node 2: no neighbours, n = 0; node 3: m = [1,0]; node 4 (h = [0,-1]):
# m = [0,1], [1,1] with w .5/.5.
HAND = {
    "importance": [unit(1 + 2 / 3, 1), unit(0.8, 1), unit(1, 1), unit(1, 0), unit(1, 0)],
    "mean": [unit(1.5, 1), unit(1, 1), unit(1, 1), unit(1, 0), unit(1, 0)],
    "max": [unit(2, 1), unit(2, 1), unit(1, 1), unit(1, 0), unit(1, 0)],
}


@pytest.mark.parametrize("agg", sorted(HAND))
def test_hand_computed_values(agg):
    conv = PinSageConv(2, 2, agg).double()
    set_identity_weights(conv)
    z = conv(*conv_inputs(H5, NBR5, W5))
    np.testing.assert_allclose(z.detach().numpy(), np.stack(HAND[agg]), rtol=0, atol=1e-12)


def numpy_conv(agg, params, h, nbr, w):
    """Independent per-node reference with explicit formulas."""
    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    Q, q, W, b = (params[k] for k in ("msg.weight", "msg.bias", "out.weight", "out.bias"))
    out = []
    for i in range(len(nbr)):
        js = [j for j in nbr[i] if j >= 0]
        ws = np.array([w[i, t] for t in range(nbr.shape[1]) if nbr[i, t] >= 0])
        msgs = [relu(Q @ h[j] + q) for j in js]
        n = np.zeros(Q.shape[0])
        if js and agg == "importance":
            n = sum(wj * mj for wj, mj in zip(ws, msgs)) / ws.sum()
        elif js and agg == "mean":
            n = sum(msgs) / len(msgs)
        elif js and agg == "max":
            n = np.max(np.stack(msgs), axis=0)
        elif js and agg == "gatv2":
            Wl, bl, Wr, a = (params[k] for k in ("att_self.weight", "att_self.bias",
                                                 "att_nbr.weight", "att.weight"))
            e = []
            for j, wj in zip(js, ws):
                x = Wl @ h[i] + bl + Wr @ h[j]
                e.append(a[0] @ np.where(x > 0, x, 0.2 * x) + np.log(wj))
            alpha = np.exp(np.array(e) - max(e))
            alpha /= alpha.sum()
            n = sum(al * mj for al, mj in zip(alpha, msgs))
        elif js and agg == "gated":
            Gs, gs, Gn = (params[k] for k in ("gate_self.weight", "gate_self.bias",
                                              "gate_nbr.weight"))
            gates = [sigmoid(Gs @ h[i] + gs + Gn @ h[j]) for j in js]
            n = sum(wj * g * mj for wj, g, mj in zip(ws, gates, msgs)) / ws.sum()
        z = relu(W @ np.concatenate([h[i], n]) + b)
        if agg == "gated":
            z = z + params["residual.weight"] @ h[i]
        out.append(z / np.linalg.norm(z) if np.linalg.norm(z) > 0 else z)
    return np.stack(out)


@pytest.mark.parametrize("agg", AGGREGATORS)
def test_matches_numpy_reference(agg):
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    h = rng.normal(size=(5, 3))
    conv = PinSageConv(3, 4, agg).double()
    params = {k: v.detach().numpy() for k, v in conv.state_dict().items()}
    hs, hn, w, mask = conv_inputs(h, NBR5, W5)
    z = conv(hs, hn, w, mask).detach().numpy()
    np.testing.assert_allclose(z, numpy_conv(agg, params, h, NBR5, W5), rtol=1e-10, atol=1e-12)


def random_conv_case(n=6, t=4, d_in=3, seed=0):
    """Distinct random inputs, some padded slots, node 0 with every slot padded."""
    g = torch.Generator().manual_seed(seed)
    h_self = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    h_nbr = torch.randn(n, t, d_in, generator=g, dtype=torch.float64)
    weight = torch.rand(n, t, generator=g, dtype=torch.float64) * 0.9 + 0.1
    mask = torch.rand(n, t, generator=g) > 0.3
    mask[0] = False
    mask[1] = True
    mask[2, 1:] = False
    weight = weight.masked_fill(~mask, 0.0)
    return h_self, h_nbr, weight, mask


@pytest.mark.parametrize("agg,d_out", [(a, 5) for a in AGGREGATORS] + [("gated", 3)])
def test_gradcheck(agg, d_out):
    torch.manual_seed(0)
    conv = PinSageConv(3, d_out, agg).double()
    h_self, h_nbr, weight, mask = random_conv_case()
    inputs = [h_self.requires_grad_(), h_nbr.requires_grad_()]
    if agg in ("importance", "gatv2", "gated"):
        inputs.append(weight.requires_grad_())
        fn = lambda a, b, c: conv(a, b, c, mask)  # noqa: E731
    else:
        fn = lambda a, b: conv(a, b, weight, mask)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("agg", AGGREGATORS)
def test_padding_is_ignored_and_empty_rows_are_finite(agg):
    torch.manual_seed(0)
    conv = PinSageConv(3, 4, agg).double()
    h_self, h_nbr, weight, mask = random_conv_case()
    z = conv(h_self, h_nbr, weight, mask)

    pad = ~mask
    g = torch.Generator().manual_seed(7)
    for junk_h, junk_w in [(torch.randn(h_nbr.shape, generator=g, dtype=torch.float64) * 100,
                            torch.rand(weight.shape, generator=g, dtype=torch.float64) * 50),
                           (torch.full(h_nbr.shape, float("nan"), dtype=torch.float64),
                            torch.full(weight.shape, float("inf"), dtype=torch.float64))]:
        h2 = torch.where(pad.unsqueeze(-1), junk_h, h_nbr)
        w2 = torch.where(pad, junk_w, weight)
        assert torch.equal(conv(h_self, h2, w2, mask), z)

    h_self.requires_grad_()
    h_nbr.requires_grad_()
    weight.requires_grad_()
    with torch.autograd.detect_anomaly():  # fails on any NaN produced in backward
        z = conv(h_self, h_nbr, weight, mask)
        assert torch.isfinite(z).all()
        (z * torch.randn_like(z)).sum().backward()
    uses_weight = agg in ("importance", "gatv2", "gated")
    assert (weight.grad is not None) == uses_weight
    grads = [h_self.grad, h_nbr.grad] + [p.grad for p in conv.parameters()]
    for t in grads + ([weight.grad] if uses_weight else []):
        assert t is not None and torch.isfinite(t).all()
    assert (h_nbr.grad[pad] == 0).all() and (h_nbr.grad[0] == 0).all()
    if uses_weight:
        assert (weight.grad[pad] == 0).all()


def test_unknown_aggregator_and_id_embedding_raise():
    with pytest.raises(ValueError, match="unknown aggregator 'sum'"):
        PinSageConv(3, 3, "sum")
    with pytest.raises(ValueError, match="unknown aggregator"):
        PinSage(4, 8, 2, "attention", num_items=10)
    with pytest.raises(ValueError, match="unknown id_embedding"):
        PinSage(4, 8, 2, "mean", num_items=10, id_embedding="yes")
    with pytest.raises(ValueError, match="no input"):
        PinSage(0, 8, 2, "mean", num_items=10, id_embedding="off")


def random_graph(n=40, t=4, seed=0):
    rng = np.random.default_rng(seed)
    table = rng.integers(0, n, size=(n, t))
    counts = rng.integers(0, t + 1, size=n)
    counts[0] = 0
    counts[1] = t
    table[np.arange(t)[None, :] >= counts[:, None]] = -1
    weights = np.where(table >= 0, rng.uniform(0.05, 1.0, size=(n, t)), 0.0)
    return table, weights.astype(np.float32)


def build_batch(targets, table, weights, features, num_layers):
    """A minibatch in the ``schemas.BATCHES`` layout, built node by node in Python."""
    layers, idx, wts = [list(targets)], [], []
    for _ in range(num_layers):
        cur = layers[-1]
        nxt = list(cur)
        pos = {node: i for i, node in enumerate(nxt)}
        rows = []
        for node in cur:
            row = []
            for j in table[node]:
                if j < 0:
                    row.append(-1)
                    continue
                if j not in pos:
                    pos[j] = len(nxt)
                    nxt.append(int(j))
                row.append(pos[j])
            rows.append(row)
        idx.append(torch.tensor(rows, dtype=torch.int32))
        wts.append(torch.from_numpy(weights[cur]))
        layers.append(nxt)
    nodes = [torch.tensor(layer, dtype=torch.int64) for layer in layers]
    return nodes, features[nodes[-1]], idx, wts


@pytest.mark.parametrize("agg,id_embedding,num_layers,head_layers",
                         [(a, "on", 2, 0) for a in AGGREGATORS]
                         + [("gated", "on", 2, 2), ("importance", "hashed", 3, 2),
                            ("gatv2", "off", 1, 2), ("max", "on", 0, 1)])
def test_minibatch_forward_equals_full_graph(agg, id_embedding, num_layers, head_layers):
    torch.manual_seed(3)
    n, feat_dim = 40, 6
    table, weights = random_graph(n)
    features = torch.randn(n, feat_dim)
    model = PinSage(feat_dim, 8, num_layers, agg, num_items=n, id_embedding=id_embedding,
                    id_buckets=13, head_layers=head_layers)
    model.eval()
    with torch.no_grad():
        full, layers = model.full_graph_embed(torch.arange(n), features, torch.from_numpy(table),
                                              torch.from_numpy(weights), return_layers=True)
        assert len(layers) == num_layers + 1 and full.shape == (n, 8)
        for targets in ([0, 5, 7, 11], [1], list(range(20, 40))):
            nodes, feats, idx, wts = build_batch(targets, table, weights, features, num_layers)
            if num_layers:
                assert len(nodes[-1]) > len(targets)
            z = model(nodes, feats, idx, wts)
            torch.testing.assert_close(z, full[targets], rtol=0, atol=1e-5)
            torch.testing.assert_close(z.norm(dim=-1), torch.ones(len(targets)))


def test_head_is_g2_relu_g1_then_normalised():
    """``head_layers=2``: ``z = normalize(G2 ReLU(G1 h + g))`` on the last conv's output, by hand."""
    torch.manual_seed(4)
    n = 30
    table, weights = random_graph(n)
    model = PinSage(5, 8, 2, "importance", num_items=n, head_layers=2).eval()
    sd = model.state_dict()
    assert {k for k in sd if k.startswith("head.")} == {"head.0.weight", "head.0.bias",
                                                          "head.2.weight"}   # G2 has no bias
    with torch.no_grad():
        z, layers = model.full_graph_embed(torch.arange(n), torch.randn(n, 5),
                                           torch.from_numpy(table), torch.from_numpy(weights),
                                           return_layers=True)
    h = layers[-1].double().numpy()
    g1, b1, g2 = (sd[f"head.{k}"].double().numpy() for k in ("0.weight", "0.bias", "2.weight"))
    expected = np.maximum(h @ g1.T + b1, 0) @ g2.T
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(z.numpy(), expected, rtol=0, atol=1e-6)
    assert not np.allclose(z.numpy(), h, atol=1e-2)                      # the head did something
    plain = PinSage(5, 8, 2, "importance", num_items=n, head_layers=0)
    assert not any(k.startswith("head.") for k in plain.state_dict())


def test_old_spec_without_head_layers_builds_the_headless_model():
    """A model published before ``head_layers`` existed loads as ``head_layers=0``."""
    torch.manual_seed(5)
    old = {"num_layers": 1, "hidden_dim": 8, "aggregator": "mean", "id_embedding": "on",
           "id_buckets": 7}
    model = build_model(SimpleNamespace(**old), 3, 10)
    assert model.head_layers == 0 and len(model.head) == 0
    trained = PinSage(3, 8, 1, "mean", num_items=10)          # the old model: no head keys
    model.load_state_dict(trained.state_dict())
    assert build_model(SimpleNamespace(**old, head_layers=2), 3, 10).head_layers == 2


def test_forward_rejects_wrong_depth():
    model = PinSage(0, 4, 2, "mean", num_items=5)
    table, weights = random_graph(5, 2)
    nodes, feats, idx, wts = build_batch([0, 1], table, weights, torch.zeros(5, 0), 1)
    with pytest.raises(ValueError, match="1 layers"):
        model(nodes, feats, idx, wts)


@pytest.mark.parametrize("feature_dim,id_embedding,id_rows",
                         [(6, "on", 50), (0, "on", 50), (6, "off", None), (6, "hashed", 17),
                          (0, "hashed", 17)])
def test_input_layer_variants(feature_dim, id_embedding, id_rows):
    model = PinSage(feature_dim, 8, 1, "importance", num_items=50, id_embedding=id_embedding,
                    id_buckets=17)
    sd = model.state_dict()
    if id_rows is None:
        assert not any(k.startswith("id_emb") for k in sd)
    else:
        assert sd["id_emb.weight"].shape == (id_rows, 8)
    assert ("feature_proj.weight" in sd) == (feature_dim > 0)
    ids = torch.tensor([0, 3, 49])
    if id_embedding == "hashed":
        ids = torch.tensor([0, 3, 10**12 + 5])
    h = model.input_layer(ids, torch.randn(3, feature_dim))
    assert h.shape == (3, 8) and torch.isfinite(h).all()
    table = torch.tensor([[1, 2], [-1, -1], [0, -1]])
    z = model.full_graph_embed(ids, torch.randn(3, feature_dim), table, torch.rand(3, 2))
    assert z.shape == (3, 8)


def test_hash_ids_is_fixed_and_in_range():
    ids = torch.tensor([0, 1, 2, 12345, 2**40 + 7])
    b = hash_ids(ids, 1000)
    assert b.dtype == torch.int64 and ((b >= 0) & (b < 1000)).all()
    expected = [((int(i) % 2**32) * 0x5BD1E995 % 2**32) % 1000 for i in ids]
    assert b.tolist() == expected
    many = hash_ids(torch.arange(10_000), 100)
    assert torch.bincount(many, minlength=100).min() > 50


def test_state_dict_loads_with_weights_only():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_layers=2, hidden_dim=8, aggregator="gated",
                                    id_embedding="hashed", id_buckets=31), 4, 20)
    assert isinstance(model, PinSage) and len(model.convs) == 2
    assert all(c.aggregator == "gated" for c in model.convs)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    other = build_model(ModelConfig(num_layers=2, hidden_dim=8, aggregator="gated",
                                    id_embedding="hashed", id_buckets=31), 4, 20)
    other.load_state_dict(sd)
    table, weights = random_graph(20, 3)
    args = (torch.arange(20), torch.randn(20, 4), torch.from_numpy(table),
            torch.from_numpy(weights))
    assert torch.equal(model.full_graph_embed(*args), other.full_graph_embed(*args))


def test_max_margin_loss_hand_example():
    z_q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_pos = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
    z_neg = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # q0: pos 0.8, negs 1.0 -> 0.3, 0.6 -> 0; q1: pos 0.8, negs 0.0 -> 0, 0.8 -> 0.1.
    loss = max_margin_loss(z_q, z_pos, z_neg, 0.1)
    assert loss.item() == pytest.approx(0.4 / 4)


def test_max_margin_loss_per_query_negatives():
    g = torch.Generator().manual_seed(0)
    z_q, z_pos = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    z_neg = torch.randn(3, 2, 4, generator=g)
    loss = max_margin_loss(z_q, z_pos, z_neg, 0.5)
    terms = [max(0.0, float(z_q[i] @ z_neg[i, j] - z_q[i] @ z_pos[i] + 0.5))
             for i in range(3) for j in range(2)]
    assert loss.shape == () and loss.item() == pytest.approx(sum(terms) / 6, rel=1e-6)
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    kept = [terms[0], terms[2], terms[3]]
    assert max_margin_loss(z_q, z_pos, z_neg, 0.5, mask).item() == pytest.approx(
        sum(kept) / 3, rel=1e-6)
    shared = max_margin_loss(z_q, z_pos, z_neg[0], 0.5)
    per_query = max_margin_loss(z_q, z_pos, z_neg[0].expand(3, 2, 4), 0.5)
    assert shared.item() == pytest.approx(per_query.item(), rel=1e-6)
    with pytest.raises(ValueError):
        max_margin_loss(z_q, z_pos, z_neg[:2], 0.5)


def test_item_bias_is_a_learned_query_shift():
    """score(q, c) = (z_q + u).z_c = cos(q, c) + u.z_c; candidates' embeddings are unchanged."""
    torch.manual_seed(3)
    plain = PinSage(3, 8, 1, "mean", num_items=10)
    biased = PinSage(3, 8, 1, "mean", num_items=10, item_bias=True)
    z = F.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.arange(4)
    assert plain.query_shift is None and plain.query(z, ids) is z
    assert torch.equal(biased.query(z, ids), z)            # u starts at 0: no bias until learned
    with torch.no_grad():
        biased.query_shift.copy_(torch.arange(8.0))
    assert torch.allclose(biased.query(z, ids) @ z.T, z @ z.T + (z @ torch.arange(8.0))[None, :])
    assert "query_shift" in biased.state_dict() and "query_shift" not in plain.state_dict()
    old = {"num_layers": 1, "hidden_dim": 8, "aggregator": "mean", "id_embedding": "on",
           "id_buckets": 7}
    assert build_model(SimpleNamespace(**old), 3, 10).query_shift is None   # published before
    assert build_model(SimpleNamespace(**old, item_bias=True), 3, 10).query_shift is not None


def test_query_offsets_make_the_relation_directed():
    """score(q, c) = (z_q + o_q).z_c: each item's own learned offset, zero at the start and
    for ids beyond the table (items added after training); candidates are unchanged."""
    torch.manual_seed(4)
    model = PinSage(3, 8, 1, "mean", num_items=5, query_offsets=True)
    z = F.normalize(torch.randn(7, 8), dim=-1)
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 9])
    assert torch.equal(model.query(z, ids), z)             # o starts at 0
    with torch.no_grad():
        model.query_offset.weight.copy_(torch.arange(40.0).view(5, 8))
    q = model.query(z, ids)
    assert torch.equal(q[:5], z[:5] + model.query_offset.weight)
    assert torch.equal(q[5:], z[5:])                       # no row: no offset
    scores = q @ z.T
    assert not torch.allclose(scores[:5, :5], scores[:5, :5].T)   # a directed relation
    # A parameter the loss trains: it gets a gradient through the query side only.
    model.query(z, ids).sum().backward()
    assert model.query_offset.weight.grad is not None
    old = {"num_layers": 1, "hidden_dim": 8, "aggregator": "mean", "id_embedding": "on",
           "id_buckets": 7}
    assert build_model(SimpleNamespace(**old), 3, 5).query_offset is None    # published before
