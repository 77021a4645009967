"""Baselines, each built from the TRAINING graph only, each returning a top-K list.

Every function takes an :class:`~pipeline.evaluate.data.EvalData` and distinct
query items and returns a ``(len(queries), k)`` int64 array of item ids, best
first, the query excluded, ``-1`` padding a short list — exactly what the
metrics read, so every method is scored the same way.

* ``popularity``: the most interacted items (the same list for every query).
* ``random_walk``: Pixie-style, the sampler's own importance ranking: expected
  visits of walks with restart from the query over degree^β
  (:mod:`pipeline.sampling.ppr`, the ``sample.*`` settings).
* ``item_knn``: similarity of the items' interaction vectors (co-occurrence):
  implicit's ``CosineRecommender``, ``TFIDFRecommender`` or ``BM25Recommender``.
* ``als``: implicit's ``AlternatingLeastSquares`` item factors, ``similar_items``.
* ``ease``: EASE (Steck, WWW 2019), a closed-form item-item ridge regression;
  the catalogue-sized dense inverse limits it to ``eval.ease_max_items``.
* ``node2vec``: skip-gram (gensim's ``Word2Vec``) over walks drawn with the
  sampler's kernel; ``p = q = 1``, i.e. DeepWalk, since the kernel is first-order.
* ``lightgcn``: torch-geometric's ``LightGCN`` trained with BPR on the
  training graph; item embeddings compared by cosine.
* ``features_only``: cosine of the input features, no graph at all.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from gensim.models import Word2Vec
from scipy.linalg.lapack import get_lapack_funcs
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits
from torch_geometric.nn import LGConv
from torch_geometric.nn.models import LightGCN

from pipeline.evaluate import index as ann
from pipeline.evaluate.data import EvalData
from pipeline import metrics as M
from pipeline.metrics import drop_query
from pipeline.sampling import ppr, walks

# item_knn with bm25: term-frequency saturation (implicit's default; binary data barely feel it).
BM25_K1 = 1.2
# Dense score cells per chunk of EASE queries (64 MiB of float32).
SCORE_CELLS = 1 << 24
# node2vec: skip-gram negatives per positive (word2vec's default).
NEGATIVES = 5
# lightgcn: L2 strength on the batch's layer-0 embeddings (the paper's 1e-4).
LIGHTGCN_REG = 1e-4


def popularity(data: EvalData, queries: np.ndarray, k: int) -> np.ndarray:
    ranked = np.argsort(-data.degree, kind="stable")[:k + 1]
    return drop_query(np.broadcast_to(ranked, (len(queries), len(ranked))), queries, k)


def random_walk(data: EvalData, queries: np.ndarray, k: int, *, walk_length: int,
                restart_prob: float, push_threshold: float, degree_exponent: float,
                seed: int) -> np.ndarray:
    """The sampler's importance ranking from each query (the same code and ``sample.*`` settings).

    Expected visits of walks with restart over the item's degree^β
    (:mod:`pipeline.sampling.ppr`). The start is never ranked, so the query is
    excluded by construction; equal scores go to a seeded hash of (query, item).
    """
    t = ppr.transitions(data.src, data.dst, data.weight, data.n_nodes, data.n_items,
                        data.bipartite)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    lo = 0
    for chunk, ranked, _ in ppr.neighborhoods(
            t, queries, walk_length=walk_length, restart_prob=restart_prob,
            push_threshold=push_threshold, degree_exponent=degree_exponent, seed=seed,
            num_neighbors=k, window=(k, k + 1), num_hard=0):
        sizes = np.diff(ranked.nbr_offsets)
        rows = np.repeat(np.arange(len(chunk)), sizes)
        cols = np.arange(len(rows)) - np.repeat(ranked.nbr_offsets[:-1], sizes)
        out[lo + rows, cols] = ranked.neighbors
        lo += len(chunk)
    return out


def _user_items(data: EvalData):
    """Contexts x items, the layout implicit fits on."""
    return data.item_context.T.tocsr()


def item_knn(data: EvalData, queries: np.ndarray, k: int, *, similarity: str,
             bm25_b: float) -> np.ndarray:
    """Items most similar in their interaction vectors; none with similarity 0.

    ``similarity``: ``cosine``, ``tfidf`` or ``bm25`` (implicit's item-item
    recommenders: dot products of the re-weighted vectors; BM25 with K1 = 1.2
    and length normalisation ``bm25_b``, 1 = by the item's full degree).
    """
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender
    from implicit.utils import ParameterWarning
    with warnings.catch_warnings():
        # implicit converts its own normalised matrix to CSR internally and warns about it.
        warnings.simplefilter("ignore", ParameterWarning)
        if similarity == "bm25":
            model = BM25Recommender(K=k + 1, K1=BM25_K1, B=bm25_b)
        elif similarity == "tfidf":
            model = TFIDFRecommender(K=k + 1)
        else:
            model = CosineRecommender(K=k + 1)
        model.fit(_user_items(data), show_progress=False)
    ids, _ = model.similar_items(np.asarray(queries, dtype=np.int32), N=k + 1)
    return drop_query(ids, queries, k)


def als(data: EvalData, queries: np.ndarray, k: int, *, factors: int, iterations: int,
        regularization: float, seed: int) -> np.ndarray:
    from implicit.als import AlternatingLeastSquares
    # implicit asks for single-threaded BLAS (its own threads do the parallel work)
    # and checks for it when the model is built.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, iterations=iterations,
                                        regularization=regularization, random_state=seed)
        model.fit(_user_items(data), show_progress=False)
        ids, _ = model.similar_items(np.asarray(queries, dtype=np.int32), N=k + 1)
    return drop_query(ids, queries, k)


def embedding_topk(matrix: np.ndarray, queries: np.ndarray, k: int,
                   live: np.ndarray | None = None, query_vectors: np.ndarray | None = None
                   ) -> np.ndarray:
    """Exact inner-product top-k over item vectors (row = item id), live items only.

    ``query_vectors`` (row = item id): what each query item searches with
    (PinSage's ``query``: embedding, offset and shift); default its own row.
    """
    queries = np.asarray(queries, np.int64)
    if live is None or live.all():
        top, _ = ann.search(ann.exact_index(matrix), matrix, queries, k, query_vectors)
        return top
    items = np.flatnonzero(live)
    row_of = np.cumsum(live) - 1                  # item id -> row among the live items
    if not live[queries].all():
        raise ValueError("a query is a removed item's placeholder")
    sub = matrix[items]
    top, _ = ann.search(ann.exact_index(sub), sub, row_of[queries], k,
                        None if query_vectors is None else query_vectors[items])
    return np.where(top >= 0, items[np.maximum(top, 0)], -1)


def embedding_ranks(data: EvalData, matrix: np.ndarray, query_vectors: np.ndarray | None,
                    ks: list[int]) -> np.ndarray:
    """Each held-out row's target rank among the live items under one set of embeddings
    (:func:`embedding_topk`), 0 beyond ``max(ks)``."""
    uniq, inverse = np.unique(data.queries, return_inverse=True)
    top = M.only_items(embedding_topk(matrix, uniq, ks[-1], data.live, query_vectors), data.live)
    return M.target_ranks(top[inverse], data.targets)


def features_only(data: EvalData, queries: np.ndarray, k: int) -> np.ndarray:
    """Cosine of the items' input features (L2-normalised rows; all-zero rows stay zero)."""
    return embedding_topk(normalize(data.features()), queries, k, data.live)


def _dense_topk(scores: np.ndarray, queries: np.ndarray, k: int, live: np.ndarray) -> np.ndarray:
    """Top-k columns of each score row, best first (ties: lower id), query and removed items
    left out (``scores`` is overwritten); ``-1`` pads when fewer items are candidates."""
    scores[:, ~live] = -np.inf
    scores[np.arange(len(queries)), queries] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.where(np.isfinite(np.take_along_axis(scores, top, 1)), top, -1)
    return np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)


def ease_inverse(data: EvalData, relative_lambda: float) -> np.ndarray:
    """``P = (XᵀX + λI)⁻¹`` in float32, in place by Cholesky (LAPACK potrf, potri).

    X is contexts x items (users on a bipartite graph, the other end on an
    item-item graph), with the graph's weights. ``λ = relative_lambda`` x the
    mean of diag(XᵀX) (the mean item degree on unweighted data), so the same
    setting means the same shrinkage whatever the density or the weights' scale.
    One catalogue-squared matrix is held (3.6 GB at 30,000 items), filled and
    made symmetric a block of rows at a time so no temporary is as large.
    """
    x = data.item_context.astype(np.float32)
    n = x.shape[0]
    gram = np.empty((n, n), dtype=np.float32)
    step = max(1, SCORE_CELLS // max(1, n))
    for lo in range(0, n, step):
        gram[lo:lo + step] = (x[lo:lo + step] @ x.T).toarray()
    diag = np.einsum("ii->i", gram)
    mean = float(diag.mean()) if len(diag) else 0.0
    diag += np.float32(relative_lambda * (mean if mean > 0 else 1.0))
    potrf, potri = get_lapack_funcs(("potrf", "potri"), (gram,))
    # gram is C-ordered and symmetric: its transpose is the same matrix in
    # Fortran order, so LAPACK works on it in place; LAPACK's upper triangle
    # is our lower one, the only one potri sets.
    c, info = potrf(gram.T, lower=False, overwrite_a=True, clean=False)
    if info == 0:
        c, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE: XᵀX + λI is not positive definite (LAPACK info {info})")
    for lo in range(0, n, step):
        hi = lo + step
        block = gram[lo:hi, lo:hi]
        block[...] = np.tril(block) + np.tril(block, -1).T
        gram[lo:hi, hi:] = gram[hi:, lo:hi].T
    return gram


def ease_rows(p: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Rows ``B[q]`` of EASE's weights: ``B[q, j] = -P[q, j] / P[j, j]``, ``B[q, q] = 0``.

    EASE scores a user by ``x B`` (history ``x``), so ``B[i, j]`` is how much
    having item i raises item j: for a query item q the items to return are
    the row ``B[q]`` (a one-item history), not the column.
    """
    queries = np.asarray(queries, np.int64)
    b = -p[queries] / np.diagonal(p)[None, :]
    b[np.arange(len(queries)), queries] = 0.0
    return b


def ease(data: EvalData, queries: np.ndarray, k: int, *, relative_lambda: float) -> np.ndarray:
    """Items ranked by the query's row of EASE's ``B`` (every live item is a candidate)."""
    queries = np.asarray(queries, np.int64)
    p = ease_inverse(data, relative_lambda)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    step = max(1, SCORE_CELLS // max(1, data.n_items))
    for lo in range(0, len(queries), step):
        q = queries[lo:lo + step]
        out[lo:lo + len(q)] = _dense_topk(ease_rows(p, q), q, k, data.live)
    return out


class _Sentences:
    """Walk rows as lists of item ids, a block at a time (gensim re-reads them every epoch)."""

    def __init__(self, seqs: np.ndarray, block: int = 4096):
        self.seqs, self.block = seqs, block

    def __iter__(self):
        for lo in range(0, len(self.seqs), self.block):
            yield from self.seqs[lo:lo + self.block].tolist()


def node2vec_budget(n_starts: int, walks_per_item: int, walk_length: int, epochs: int,
                    max_tokens: int) -> tuple[int, int]:
    """``(walks per item, epochs)`` that train at most ``max_tokens`` skip-gram tokens.

    Tokens = walked items x walks x (walk_length + 1) x epochs. Epochs are cut
    first, then walks, neither below one, so the time grows with the graph
    only up to the budget.
    """
    per_walk = walk_length + 1
    per_epoch = max(1, n_starts * walks_per_item * per_walk)
    if per_epoch <= max_tokens:
        return walks_per_item, max(1, min(epochs, max_tokens // per_epoch))
    return max(1, max_tokens // max(1, n_starts * per_walk)), 1


def node2vec(data: EvalData, queries: np.ndarray, k: int, *, dim: int, walks_per_item: int,
             walk_length: int, window: int, epochs: int, seed: int) -> np.ndarray:
    """Cosine of skip-gram item vectors learnt from walks over the training graph.

    ``walks_per_item`` walks of ``walk_length`` hops from every item with an
    edge (the sampler's kernel, so p = q = 1: DeepWalk); the sentences are the
    items in walk order (item -> user -> item hops on a bipartite graph, so
    users are not tokens). gensim is deterministic only with one worker: one
    it is. Items never walked keep a zero vector, so every score with them is 0.
    """
    csr = walks.build_csr(data.src, data.dst, data.weight, data.n_nodes, data.n_items,
                          data.bipartite)
    starts = np.flatnonzero(csr.deg[:data.n_items] > 0)
    vectors = np.zeros((data.n_items, dim), dtype=np.float32)
    if len(starts):
        seqs = walks.walk_sequences(csr, starts, walks_per_item, walk_length, seed)
        model = Word2Vec(sentences=_Sentences(seqs), vector_size=dim, window=window, min_count=1,
                         sg=1, negative=NEGATIVES, epochs=epochs, workers=1, seed=seed)
        vectors[np.asarray(model.wv.index_to_key, np.int64)] = model.wv.vectors
    return embedding_topk(normalize(vectors), queries, k, data.live)


class _SymmetricSpMM(torch.autograd.Function):
    """``A @ x`` for a symmetric sparse ``A``: the gradient w.r.t. ``x`` is ``A @ grad``.

    torch's own backward transposes ``A`` and sorts it back into CSR on every
    call: three quarters of a LightGCN step on MovieLens-100K.
    """

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.adj @ grad


class _SymmetricLGConv(LGConv):
    """LightGCN's convolution on the symmetric adjacency :func:`_lightgcn_graph` normalised."""

    def __init__(self):
        super().__init__(normalize=False)

    def message_and_aggregate(self, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _SymmetricSpMM.apply(adj_t, x)


def _lightgcn_graph(data: EvalData) -> tuple[int, np.ndarray, np.ndarray, torch.Tensor]:
    """``(n_nodes, anchor, positive, adjacency)`` for LightGCN.

    Bipartite: users and items are nodes, each training edge (user, item) is a
    BPR positive. Item-item: items only, each edge a positive both ways. The
    adjacency is symmetric, weighted, normalised ``D^-1/2 A D^-1/2`` once here
    (the model's convolutions, :class:`_SymmetricLGConv`, skip LGConv's
    per-call normalisation).
    """
    x = data.item_context.tocoo()
    item, ctx, w = x.row.astype(np.int64), x.col.astype(np.int64), x.data.astype(np.float64)
    if data.bipartite:
        n = data.n_nodes
        ctx = ctx + data.n_items
        rows, cols, vals = np.concatenate([item, ctx]), np.concatenate([ctx, item]), np.tile(w, 2)
    else:
        n = data.n_items
        rows, cols, vals = item, ctx, w        # item_context already holds both directions
    adj = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
    adj = sp.csr_matrix(sp.diags(inv) @ adj @ sp.diags(inv))
    adj.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        tensor = torch.sparse_csr_tensor(torch.from_numpy(adj.indptr.astype(np.int64)),
                                         torch.from_numpy(adj.indices.astype(np.int64)),
                                         torch.from_numpy(adj.data.astype(np.float32)),
                                         size=(n, n), check_invariants=False)
    return n, ctx, item, tensor


def _negatives(g: np.random.Generator, items: np.ndarray, anchor: np.ndarray, taken: np.ndarray,
               n: int) -> np.ndarray:
    """A uniform item per anchor, redrawn (up to 3 times) where it is one of the anchor's positives."""
    neg = items[g.integers(0, len(items), len(anchor))]
    for _ in range(3):
        key = anchor * np.int64(n) + neg
        clash = taken[np.minimum(np.searchsorted(taken, key), len(taken) - 1)] == key
        if not clash.any():
            break
        neg[clash] = items[g.integers(0, len(items), int(clash.sum()))]
    return neg


def lightgcn_steps(data: EvalData, epochs: int, batch_size: int) -> int:
    """Minibatches in ``epochs`` passes over the BPR positives (each propagates the whole graph)."""
    return epochs * max(1, -(-data.item_context.nnz // batch_size))


def lightgcn(data: EvalData, queries: np.ndarray, k: int, *, dim: int, layers: int, epochs: int,
             max_steps: int, lr: float, batch_size: int, seed: int) -> np.ndarray:
    """Cosine of LightGCN item embeddings (the layer mean ``get_embedding`` returns).

    Each epoch visits every positive once in shuffled minibatches of BPR
    triples (anchor, positive item, a uniform live item that is not one of the
    anchor's positives); training stops after ``max_steps`` minibatches, since
    each propagates over the whole graph. Adam, the paper's L2 on the batch's
    layer-0 embeddings; seeded, without touching the caller's global torch
    RNG. One torch thread: these sparse products are small, and on shared
    cores a second thread made an epoch ten times slower.
    """
    n, anchor, pos, adj = _lightgcn_graph(data)
    items = np.flatnonzero(data.live)
    taken = np.unique(anchor * np.int64(n) + pos)
    g = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LightGCN(n, dim, layers)
            model.convs = torch.nn.ModuleList(_SymmetricLGConv() for _ in range(layers))
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            batches = (batch for _ in range(epochs if len(pos) and len(items) else 0)
                       for batch in np.array_split(g.permutation(len(pos)),
                                                   max(1, -(-len(pos) // batch_size))))
            for batch in itertools.islice(batches, max_steps):
                a, p = anchor[batch], pos[batch]
                a, p, neg = (torch.from_numpy(v) for v in
                             (a, p, _negatives(g, items, a, taken, n)))
                emb = model.get_embedding(adj)
                loss = model.recommendation_loss((emb[a] * emb[p]).sum(-1),
                                                 (emb[a] * emb[neg]).sum(-1),
                                                 node_id=torch.cat([a, p, neg]),
                                                 lambda_reg=LIGHTGCN_REG)
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                vectors = model.get_embedding(adj)[:data.n_items].numpy()
    finally:
        torch.set_num_threads(threads)
    return embedding_topk(normalize(vectors), queries, k, data.live)
