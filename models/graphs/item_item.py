"""Item-item graphs that do not come from features: from the training interactions
(co-occurrence, DA-MRS's behaviour graph) and from two other graphs (shared neighbours, GUME's
item-item edges)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _rowwise_topk_csr(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of every row; ties go to the smaller column id."""
    m = sp.csr_matrix(m)
    m.sort_indices()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - m.indptr[rows[order]]
    keep = rank < k
    return sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)


def cooccurrence_graph(n_items: int, users: np.ndarray, items: np.ndarray, min_common: int = 2,
                       topk: int | None = None, n_users: int | None = None,
                       block_pairs: int = 50_000_000) -> sp.csr_matrix:
    """Item-item behaviour graph from interactions (as DA-MRS's ``build_iib_graph`` builds it).

    Weight of (i, j), i ≠ j = number of distinct users who interacted with both; pairs with
    fewer than ``min_common`` common users are dropped; each row keeps its ``topk`` largest
    weights (ties to the smaller item id; all of them when ``topk`` is None). Directed: row i
    lists i's neighbours. Pass *training* interactions only.

    Rows are counted in blocks of at most about ``block_pairs`` (item, user, item) paths, each
    block filtered and cut to its top-k before the next: the full count matrix of a catalogue
    (DRAGON's user-user counts on Electronics, billions of pairs) never exists at once. Every
    row is computed alone, so the result does not depend on the block size.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    nu = int(n_users if n_users is not None else (users.max() + 1 if len(users) else 0))
    r = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(nu, n_items))
    r.sum_duplicates()
    r.data[:] = 1.0
    rt = sp.csr_matrix(r.T)
    # paths through each item i: its users' total number of items, an upper bound on row i's work
    user_degree = np.diff(r.indptr)
    work = rt @ user_degree.astype(np.float64)
    cumulative = np.cumsum(work)
    cuts = np.searchsorted(cumulative, np.arange(block_pairs, cumulative[-1] if n_items else 0, block_pairs))
    bounds = np.unique(np.concatenate([[0], cuts, [n_items]])).tolist()  # a heavy row alone is its own block
    blocks = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        c = sp.coo_matrix(rt[start:end] @ r)
        keep = (c.row + start != c.col) & (c.data >= min_common)  # no self-pairs, enough common users
        c = sp.csr_matrix((c.data[keep], (c.row[keep], c.col[keep])), shape=(end - start, n_items))
        blocks.append(_rowwise_topk_csr(c, int(topk)) if topk is not None else c)
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((n_items, n_items), dtype=np.float32)


def shared_neighbours(a: sp.spmatrix, b: sp.spmatrix) -> sp.csr_matrix:
    """Binary directed edges i→j where j is a neighbour of i in both graphs, j ≠ i (GUME ii-edges)."""
    pa = sp.csr_matrix(a, dtype=np.float32, copy=True)
    pb = sp.csr_matrix(b, dtype=np.float32, copy=True)
    for p in (pa, pb):
        p.eliminate_zeros()
        p.data[:] = 1.0
    both = sp.csr_matrix(pa.multiply(pb))
    both.setdiag(0)
    both.eliminate_zeros()
    return both
