"""The user-item graph of a task's training interactions, in every form the models use.

Nodes are users then items (item ``i`` is node ``n_users + i``). Each form is cached by the
content of the training split, so jobs that share a split build it once.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from models.graphs.sparse import sym_normalize, to_torch_sparse


def bipartite(n_users: int, n_items: int, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    """The (U+I)×(U+I) binary adjacency [[0, R], [Rᵀ, 0]] of the training interactions."""
    r = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    r.sum_duplicates()
    r.data[:] = 1.0
    return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)


def ui_sym_scipy(task, item_item: sp.spmatrix | None = None) -> sp.csr_matrix:
    """The symmetric normalised user-item adjacency as a scipy matrix, optionally with an
    item-item block added to A before normalising.

    Without ``item_item`` this is the matrix ``ui_adjacency`` wraps (cached by content). With it
    (GUME's enhanced graph) the caller caches the result under its own key.
    """
    if item_item is None:
        def build():
            return sym_normalize(bipartite(task.n_users, task.n_items, task.train_users, task.train_items))
        return task.cached("ui_sym", {"eps": 1e-7}, ("train",), build)
    a = bipartite(task.n_users, task.n_items, task.train_users, task.train_items).tolil()
    a[task.n_users:, task.n_users:] = sp.csr_matrix(item_item, dtype=np.float32)
    return sym_normalize(a.tocsr())


def ui_adjacency(task, device=None) -> torch.Tensor:
    """D^{-1/2} A D^{-1/2} of the training interactions (the LightGCN graph) as torch CSR.
    Symmetric, so it serves as its own transpose."""
    return to_torch_sparse(ui_sym_scipy(task), device or task.device)


def ui_adjacency_rw(task, device=None) -> torch.Tensor:
    """Row-normalised user-item adjacency (D + 1e-7)^{-1} A of the training interactions, cached.
    Not symmetric: products that need a gradient take its transpose too."""

    def build():
        a = bipartite(task.n_users, task.n_items, task.train_users, task.train_items)
        inv = (1.0 / (np.asarray(a.sum(axis=1)).ravel() + 1e-7)).astype(np.float32)
        return sp.csr_matrix(sp.diags(inv) @ a)

    m = task.cached("ui_rw", {"eps": 1e-7}, ("train",), build)
    return to_torch_sparse(m, device or task.device)


def ui_adjacency_rw_self_loops(task, device=None) -> torch.Tensor:
    """Row-normalised user-item adjacency with self loops D̃^{-1}(A + I), D̃ the row sums of A + I
    (LATTICE's graph), cached by content."""

    def build():
        a = bipartite(task.n_users, task.n_items, task.train_users, task.train_items)
        a = sp.csr_matrix(a + sp.eye(a.shape[0], dtype=np.float32))
        inv = (1.0 / np.asarray(a.sum(axis=1)).ravel()).astype(np.float32)
        return sp.csr_matrix(sp.diags(inv) @ a)

    m = task.cached("ui_rw_self_loops", {}, ("train",), build)
    return to_torch_sparse(m, device or task.device)


def ui_mean_adjacency(task, device=None) -> torch.Tensor:
    """D⁻¹A of the joint (U+I)² user-item graph: ``spmm`` gives every node the mean of its
    neighbours' rows (a node without neighbours gets zeros). Cached by content."""

    def build():
        a = bipartite(task.n_users, task.n_items, task.train_users, task.train_items)
        deg = np.asarray(a.sum(axis=1)).ravel()
        inv = np.where(deg > 0, 1.0 / np.maximum(deg, 1.0), 0.0).astype(np.float32)
        return sp.csr_matrix(sp.diags(inv) @ a)

    m = task.cached("ui_mean", {}, ("train",), build)
    return to_torch_sparse(m, device or task.device)


def user_item_block(adj: sp.spmatrix, n_users: int) -> sp.csr_matrix:
    """The user×item block ``adj[:U, U:]`` of a joint (U+I)² adjacency: how users gather items."""
    return sp.csr_matrix(sp.csr_matrix(adj)[:n_users, n_users:])


def ui_edges(task) -> tuple[np.ndarray, np.ndarray]:
    """Unique training pairs (user ids, item ids), sorted by user then item, cached by content:
    the edge list of message passing without a matrix (MMGCN's mean aggregation, GRCN's
    attention-weighted edges)."""

    def build():
        r = task.train_matrix().tocoo()
        order = np.lexsort((r.col, r.row))
        return np.stack([r.row[order].astype(np.int64), r.col[order].astype(np.int64)])

    pairs = task.cached("ui_edges", {}, ("train",), build)
    return pairs[0], pairs[1]


class EdgeDropper:
    """Edge-dropped views of the user-item graph (SGL's augmentation).

    ``sample(keep)`` keeps ``keep`` of the |train| user-item edges, drawn without replacement
    either proportionally to ``weights`` (default: the edge's normalised value
    (d_u+1e-7)^{-1/2} (d_i+1e-7)^{-1/2}) or uniformly, and returns the symmetric normalised
    (U+I)² adjacency of the kept edges with degrees recomputed on them (+1e-7), as torch CSR.
    Weighted sampling without replacement uses exponential keys (smallest Exp(1)/w), which
    has the distribution of successive draws proportional to w (torch.multinomial's).
    """

    def __init__(self, task, device=None):
        r = task.train_matrix().tocoo()
        order = np.lexsort((r.col, r.row))  # user-major, then item
        self.device = device or task.device
        self.n_users, self.n_items = task.n_users, task.n_items
        self.users = torch.from_numpy(r.row[order].astype(np.int64)).to(self.device)
        self.items = torch.from_numpy(r.col[order].astype(np.int64)).to(self.device)
        self.by_item = torch.from_numpy(np.lexsort((r.row[order], r.col[order])).astype(np.int64)).to(self.device)
        deg_u = torch.bincount(self.users, minlength=self.n_users).float() + 1e-7
        deg_i = torch.bincount(self.items, minlength=self.n_items).float() + 1e-7
        self.weights = deg_u[self.users].rsqrt() * deg_i[self.items].rsqrt()
        self._item_rank = None

    @property
    def n_edges(self) -> int:
        return len(self.users)

    def sample(self, keep: int, weighted: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        # Exp(1) keys as -log(1 - U): the same law as exponential_(), several times faster on CPU.
        keys = torch.rand(self.n_edges, device=self.device, generator=generator).neg_().add_(1.0).log_().neg_()
        if weighted:
            keys = keys / self.weights
        chosen = torch.topk(keys, keep, largest=False, sorted=False).indices
        return self.adjacency_of(chosen)

    def adjacency(self, mask: torch.Tensor) -> torch.Tensor:
        """Symmetric normalised adjacency of the edges flagged in ``mask`` (edge order of ``users``/``items``)."""
        return self.adjacency_of(torch.nonzero(mask).squeeze(1))

    def adjacency_of(self, kept: torch.Tensor) -> torch.Tensor:
        """``adjacency`` of the distinct edge ids ``kept`` (any order). Sizes come from ``len(kept)``,
        never from values, so a view is built on an accelerator without the host waiting for it."""
        if self._item_rank is None:  # position of each edge in item-major order
            self._item_rank = torch.empty_like(self.by_item)
            self._item_rank[self.by_item] = torch.arange(self.n_edges, device=self.device)
        kept = torch.sort(kept).values                                 # user-major, as a mask selects
        kept_by_item = self.by_item[torch.sort(self._item_rank[kept]).values]  # the same edges, item-major
        u, i = self.users[kept], self.items[kept]
        ones = torch.ones(len(kept), device=self.device)
        du = torch.zeros(self.n_users, device=self.device).index_add_(0, u, ones)  # exact integer counts
        di = torch.zeros(self.n_items, device=self.device).index_add_(0, i, ones)
        inv_u, inv_i = (du + 1e-7).rsqrt(), (di + 1e-7).rsqrt()
        iu, ii = self.users[kept_by_item], self.items[kept_by_item]
        counts = torch.cat([du, di]).long()
        crow = torch.zeros(len(counts) + 1, dtype=torch.int64, device=self.device)
        crow[1:] = torch.cumsum(counts, 0)
        cols = torch.cat([i + self.n_users, iu])
        vals = torch.cat([inv_u[u] * inv_i[i], inv_u[iu] * inv_i[ii]])
        n = self.n_users + self.n_items
        return torch.sparse_csr_tensor(crow, cols, vals, size=(n, n))
