"""Graph building blocks shared by every model, each written once.

* ``ui_adjacency``: the symmetric normalised user-item adjacency (spec block G1).
* ``knn_graph``: the feature kNN item graph (block G8), built in row chunks so memory stays
  O(n·k) and no dense n×n matrix ever exists; isolation of masked or new items before or
  after the top-k selection, as the reference models do.
* ``lightgcn``: LightGCN propagation (mean of layer outputs, layer 0 included).
* ``spmm`` / ``to_torch_sparse``: sparse products in torch's CSR layout, which on CPU runs
  forward and backward several times faster than COO (measured 3x / 7x on a 20k-node graph).
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

# Bytes of similarity scores one kNN chunk may hold; bounds peak memory of graph building.
KNN_CHUNK_BYTES = 1 << 28


def to_torch_sparse(m: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A scipy sparse matrix as a float32 torch CSR tensor."""
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    return torch.sparse_csr_tensor(
        torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
        torch.from_numpy(m.data), size=m.shape, device=device)


def spmm(adj: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(adj, dense)


def sym_normalize(m: sp.spmatrix, eps: float = 1e-7) -> sp.csr_matrix:
    """D^{-1/2} M D^{-1/2} with D the row sums plus ``eps`` (the reference's UI-sym rule)."""
    m = sp.csr_matrix(m, dtype=np.float32)
    deg = np.asarray(m.sum(axis=1)).ravel() + eps
    d = sp.diags(np.power(deg, -0.5).astype(np.float32))
    return sp.csr_matrix(d @ m @ d)


def bipartite(n_users: int, n_items: int, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    """The (U+I)×(U+I) binary adjacency [[0, R], [Rᵀ, 0]] of the training interactions."""
    r = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    r.sum_duplicates()
    r.data[:] = 1.0
    return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)


def ui_adjacency(task, device=None) -> torch.Tensor:
    """Normalised user-item adjacency of a task's training interactions, cached by content."""

    def build():
        a = bipartite(task.n_users, task.n_items, task.train_users, task.train_items)
        return sym_normalize(a)

    m = task.cached("ui_sym", {"eps": 1e-7}, ("train",), build)
    return to_torch_sparse(m, device or task.device)


def lightgcn(adj: torch.Tensor, emb0: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Mean of E0, ÂE0, ..., Â^L E0."""
    layers = [emb0]
    e = emb0
    for _ in range(n_layers):
        e = spmm(adj, e)
        layers.append(e)
    return torch.stack(layers, dim=0).mean(dim=0)


def knn_graph(x: torch.Tensor | np.ndarray, k: int, *, isolate_before: np.ndarray | None = None,
              isolate_after: np.ndarray | None = None, normalize: bool = True,
              chunk_rows: int | None = None) -> sp.csr_matrix:
    """Top-k cosine-similarity item graph, optionally normalised D_r^{-1/2} K D_r^{-1/2}.

    Row i keeps its ``k`` most similar items (itself included) with their similarities as
    weights; the graph is directed. Items flagged in ``isolate_before`` have their row and
    column of the similarity matrix zeroed and a self-loop of 1 *before* the top-k, so other
    items re-select neighbours among the rest (MGCN's mask, DGMRec's new-item training graph).
    Items flagged in ``isolate_after`` lose their row and column *after* the top-k and keep a
    self-loop of 1, so other items may keep fewer than k neighbours (LATTICE's and DGMRec's
    mask). Normalisation uses row sums on both sides, as the reference does; an empty row
    stays empty.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    n = x.shape[0]
    k = min(k, n)
    xn = F.normalize(x, dim=1)
    before = torch.as_tensor(isolate_before, dtype=torch.bool) if isolate_before is not None else None
    after = torch.as_tensor(isolate_after, dtype=torch.bool) if isolate_after is not None else None
    chunk = chunk_rows or max(1, min(n, KNN_CHUNK_BYTES // (4 * max(n, 1))))
    rows, cols, vals = [], [], []
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            sim = xn[start:stop] @ xn.T
            if before is not None and before.any():
                sim[:, before] = 0.0
                sim[before[start:stop]] = 0.0
                local = torch.nonzero(before[start:stop]).squeeze(1)
                sim[local, local + start] = 1.0
            v, idx = torch.topk(sim, k, dim=1)
            r = torch.arange(start, stop).unsqueeze(1).expand(-1, k)
            rows.append(r.reshape(-1))
            cols.append(idx.reshape(-1))
            vals.append(v.reshape(-1))
    rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    if after is not None and after.any():
        keep = ~(after[rows] | after[cols])
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        iso = torch.nonzero(after).squeeze(1)
        rows, cols = torch.cat([rows, iso]), torch.cat([cols, iso])
        vals = torch.cat([vals, torch.ones(len(iso))])
    keep = vals != 0  # zero weights (masked columns picked by top-k) carry nothing
    g = sp.csr_matrix((vals[keep].numpy(), (rows[keep].numpy(), cols[keep].numpy())), shape=(n, n))
    g.sum_duplicates()
    if not normalize:
        return g
    deg = np.asarray(g.sum(axis=1)).ravel()
    inv = np.where(deg > 0, np.power(np.clip(deg, 1e-7, None), -0.5), 0.0).astype(np.float32)
    d = sp.diags(inv)
    return sp.csr_matrix(d @ g @ d)
