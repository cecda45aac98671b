"""Feature kNN item graphs and their cache.

Every graph here ranks all item pairs by cosine similarity. The n×n similarity matrix is never
held at once: it is computed in blocks of rows (at most ``KNN_CHUNK_BYTES`` of scores), each
block ranked before the next is formed, so memory stays O(n·k) beyond one block.
"""
from __future__ import annotations

import contextlib

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

# Bytes of similarity scores one block of rows may hold; bounds peak memory of graph building.
KNN_CHUNK_BYTES = 1 << 28


def rows_per_chunk(n: int, matrices: int = 1) -> int:
    """Rows per block when ``matrices`` similarity blocks of n float32 columns are alive together."""
    return max(1, min(n, KNN_CHUNK_BYTES // (4 * max(n, 1) * matrices)))


def _flags(flags, device) -> torch.Tensor | None:
    """Item flags as a bool tensor on ``device``; None when nothing is flagged."""
    if flags is None or not np.any(flags):
        return None
    return torch.as_tensor(flags, dtype=torch.bool, device=device)


def _ranked_neighbours(unit: torch.Tensor, k: int, hidden: torch.Tensor | None, chunk: int):
    """For every item, its ``k`` most similar items (itself included) and their cosines.

    ``unit`` holds L2-normalised rows. Items flagged in ``hidden`` score 0 in every row, so the
    others choose their neighbours among the rest; where fewer than k items score above 0, the
    hidden ones may still be picked, with weight 0. Returns (rows, cols, cosines), k per row, in
    row order.
    """
    n = unit.shape[0]
    rows, cols, sims = [], [], []
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            block = unit[start:stop] @ unit.T
            if hidden is not None:
                block[:, hidden] = 0.0
            top, idx = torch.topk(block, k, dim=1)
            rows.append(torch.arange(start, stop, device=unit.device).repeat_interleave(k))
            cols.append(idx.reshape(-1))
            sims.append(top.reshape(-1))
    return torch.cat(rows), torch.cat(cols), torch.cat(sims)


def _normalize_by_row_sums(g: sp.csr_matrix) -> sp.csr_matrix:
    """D^{-1/2} G D^{-1/2} with D the row sums of G on both sides (G may be directed). A row whose
    sum is not positive gets weight 0, and so do the entries pointing to it."""
    deg = np.asarray(g.sum(axis=1)).ravel()
    inv = np.where(deg > 0, np.power(np.clip(deg, 1e-7, None), -0.5), 0.0).astype(np.float32)
    scale = sp.diags(inv)
    return sp.csr_matrix(scale @ g @ scale)


def knn_graph(x: torch.Tensor | np.ndarray, k: int, *, isolate_before: np.ndarray | None = None,
              isolate_after: np.ndarray | None = None, normalize: bool = True,
              chunk_rows: int | None = None) -> sp.csr_matrix:
    """Top-k cosine-similarity item graph, optionally normalised D_r^{-1/2} K D_r^{-1/2}.

    Row i links item i to its ``k`` most similar items (itself included), weighted by their
    cosine; the graph is directed, and zero weights are left out. An isolated item has a single
    entry, a self-loop of weight 1, and no other item links to it. Items are isolated either
    *before* the ranking (``isolate_before``: the others rank without them and still keep k
    neighbours; MGCN's masked graph, DGMRec's new-item training graph) or *after* it
    (``isolate_after``: links to them are removed from the ranked lists, so others may keep fewer
    than k; LATTICE's and DGMRec's masked graphs). With ``normalize`` both sides are scaled by
    the row sums (an empty row stays empty).

    Ties between equal similarities go to the item ``torch.topk`` returns first.
    """
    if k < 1:
        raise ValueError(f"a kNN graph needs k >= 1, got {k}")
    x = torch.as_tensor(x, dtype=torch.float32)  # a tensor stays on its device: the products run there
    unit = F.normalize(x, dim=1)
    n = unit.shape[0]
    before, after = _flags(isolate_before, unit.device), _flags(isolate_after, unit.device)
    rows, cols, weights = _ranked_neighbours(unit, min(k, n), before, chunk_rows or rows_per_chunk(n))

    isolated = before if after is None else after if before is None else before | after
    keep = weights != 0
    if isolated is not None:
        keep &= ~isolated[rows]          # an isolated item's own ranking is replaced by its self-loop
    if after is not None:
        keep &= ~after[cols]             # nobody links to an item isolated after the ranking
    rows, cols, weights = rows[keep], cols[keep], weights[keep]
    if isolated is not None:
        loops = torch.nonzero(isolated).squeeze(1)
        rows, cols = torch.cat([rows, loops]), torch.cat([cols, loops])
        weights = torch.cat([weights, torch.ones(len(loops), device=weights.device)])

    g = sp.csr_matrix((weights.cpu().numpy(), (rows.cpu().numpy(), cols.cpu().numpy())), shape=(n, n))
    g.sum_duplicates()
    return _normalize_by_row_sums(g) if normalize else g


def drop_items(m: sp.spmatrix, flagged: np.ndarray) -> sp.csr_matrix:
    """``m`` with the rows and columns of flagged items zeroed and no self-loop put back.

    The reference's new-item training graphs: similarities of new items zeroed before the
    top-k, so a new item's row is empty. ``knn_graph(isolate_before=...)`` followed by this
    gives exactly that graph (the isolated self-loop is the only entry it removes).
    """
    m = sp.csr_matrix(m)
    flagged = np.asarray(flagged, dtype=bool)
    if not flagged.any():
        return m
    keep = sp.diags((~flagged).astype(m.dtype))
    out = sp.csr_matrix(keep @ m @ keep)
    out.eliminate_zeros()
    return out


def topk_cosine_edges(x: torch.Tensor, k: int, exclude: np.ndarray | None = None, chunk_rows: int | None = None):
    """The top-k cosine-similarity neighbours of every row of a trainable ``x`` (LATTICE's
    learned item graph).

    Similarities are computed densely but in row chunks without autograd (peak memory
    ``chunk_rows × n`` floats, bounded by ``KNN_CHUNK_BYTES``), only to select the neighbours;
    the selected values are then recomputed from ``x`` with autograd, which gives exactly the
    gradient of the reference's dense top-k (a top-k passes gradient to the kept entries only);
    propagate with ``weighted_propagate(x, cols, rows, values)``.
    ``exclude``: rows and columns zeroed before the top-k with no self-loop (the reference's
    new-item training graph); their entries carry zero weight and are left out.
    Returns ``(rows, cols, values)``, ``k`` entries per non-excluded row.
    """
    n = x.shape[0]
    k = min(k, n)
    xn = F.normalize(x, dim=1)
    xd = xn.detach()
    ex = _flags(exclude, x.device)
    chunk = chunk_rows or rows_per_chunk(n)
    cols = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            sim = xd[start:start + chunk] @ xd.T
            if ex is not None:
                sim[:, ex] = 0.0
                sim[ex[start:start + chunk]] = 0.0
            cols.append(torch.topk(sim, k, dim=1).indices)
    cols = torch.cat(cols).reshape(-1)
    rows = torch.arange(n, device=x.device).repeat_interleave(k)
    if ex is not None:
        keep = ~(ex[rows] | ex[cols])
        rows, cols = rows[keep], cols[keep]
    vals = (xn[rows] * xn[cols]).sum(1)
    return rows, cols, vals


def denoised_knn_graphs(xs: list, k: int, *, norm_eps: float = 0.0, isolate: list | None = None,
                        exclude: np.ndarray | None = None, chunk_rows: int | None = None) -> list:
    """DA-MRS's denoised binary kNN item graphs, one per feature matrix.

    S_m = cosine similarity (norms + ``norm_eps``). A pair (i, j) survives only where
    S_m[i, j] >= mean(S_m) for every m (means over all n² entries); the rest is zeroed in every
    S_m. Then, per modality, items flagged in ``isolate[m]`` and (all modalities) items flagged
    in ``exclude`` lose their rows and columns and keep a self-loop of 1. Row i keeps the
    top-min(c_i, k) columns by value, c_i = its number of non-zero entries. Returns binary
    (unnormalised) CSR matrices; normalise with ``binary_sym_normalize``. Built in row chunks,
    the means in closed form (mean S = ‖Σ_i x̂_i‖² / n²): no dense n×n matrix.
    """
    n = xs[0].shape[0]
    k = min(k, n)
    xn = []
    for x in xs:
        x = torch.as_tensor(x, dtype=torch.float32)  # a tensor stays on its device: the products run there
        norm = x.norm(dim=1, keepdim=True) + norm_eps
        xn.append(x / norm.clamp_min(1e-12))
    dev = xn[0].device
    means = [float((v.sum(0) @ v.sum(0)) / (n * n)) for v in xn]
    isolate = [_flags(a, dev) for a in (isolate or [None] * len(xs))]
    excl = _flags(exclude, dev)
    chunk = chunk_rows or rows_per_chunk(n, len(xs) + 1)
    parts = [([], []) for _ in xs]
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            sims = [v[start:stop] @ v.T for v in xn]
            keep = torch.ones_like(sims[0], dtype=torch.bool)
            for s, mu in zip(sims, means):
                keep &= s >= mu
            local = torch.arange(stop - start, device=dev)
            for m, s in enumerate(sims):
                s.mul_(keep)
                for flags in (isolate[m], excl):
                    if flags is None:
                        continue
                    s[:, flags] = 0.0
                    s[flags[start:stop]] = 0.0
                    sel = local[flags[start:stop]]
                    s[sel, sel + start] = 1.0
                count = (s != 0).sum(1)
                _, idx = torch.topk(s, k, dim=1)
                take = torch.arange(k, device=dev).unsqueeze(0) < count.unsqueeze(1)
                r = (local + start).unsqueeze(1).expand(-1, k)
                parts[m][0].append(r[take])
                parts[m][1].append(idx[take])
    out = []
    for rows, cols in parts:
        rows, cols = torch.cat(rows).cpu().numpy(), torch.cat(cols).cpu().numpy()
        out.append(sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n)))
    return out


# --------------------------------------------------------------------------- the cache

KNN_MASKS = ("none", "before", "after", "new_items")


_KEYS_BY_DEVICE = [True]


def built_on(x: torch.Tensor) -> dict:
    """Cache-key parameters for a graph built from ``x`` where ``x`` lives: an accelerator's
    products round differently from the CPU's, which can flip a near-tie of the top-k, so graphs
    built there are kept apart from (and never replace) the CPU-built ones."""
    return {} if x.device.type == "cpu" or not _KEYS_BY_DEVICE[0] else {"built_on": x.device.type}


@contextlib.contextmanager
def device_built_graphs_keyed_as_cpu():
    """Within: graphs built off the CPU take the CPU's cache keys, so that a CPU and a device task
    sharing one cache get the same graphs (``benchmarks.experiments.device_compare``: the same inputs on both
    sides; the device-built graphs are compared on their own)."""
    _KEYS_BY_DEVICE[0] = False
    try:
        yield
    finally:
        _KEYS_BY_DEVICE[0] = True


def cached_knn_graph(task, modality: str, k: int, mask: str = "none") -> sp.csr_matrix:
    """The normalised feature kNN graph of ``task.features[modality]``, cached by content.

    ``mask``: ``none``; ``before`` / ``after`` — the modality's missing items isolated before /
    after the top-k (``knn_graph``'s isolate_before / isolate_after); ``new_items`` — the
    reference's new-item training graph: rows and columns of new items zeroed before the top-k
    with no self-loop (so their rows stay empty), missing items not masked.
    The cache key names every input the graph depends on.
    """
    if mask not in KNN_MASKS:
        raise ValueError(f"unknown kNN mask {mask!r}; one of {KNN_MASKS}")
    inputs = (f"features:{modality}",) + {"none": (), "before": ("missing",), "after": ("missing",),
                                          "new_items": ("new_items",)}[mask]

    x = task.features[modality].detach()  # built on the task's device: a GPU ranks all pairs in a fraction of the time

    def build():
        if mask == "before":
            return knn_graph(x, k, isolate_before=task.missing[modality])
        if mask == "after":
            return knn_graph(x, k, isolate_after=task.missing[modality])
        if mask == "new_items":
            return drop_items(knn_graph(x, k, isolate_before=task.new_items), task.new_items)
        return knn_graph(x, k)

    return task.cached("knn_graph", {"modality": modality, "k": int(k), "mask": mask, **built_on(x)}, inputs, build)
