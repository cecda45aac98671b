"""How the masked rows of a feature table are filled before any model sees them.

Every method reads only what a deployed system would have: the observed rows of each modality
(never a masked row: those are zeroed before anything is computed) and the training
interactions. Rows a method cannot reach fall back to ``mean`` and are counted.

* ``zero``: masked rows become 0.
* ``mean`` (the paper's and the release's): the mean of the observed rows.
* ``feature_knn``: neighbour mean in feature space. For an item missing modality m, the items
  observed in m and in every modality the item has are ranked by cosine similarity over those
  modalities (L2-normalised rows concatenated, so the cosine is the mean over modalities); the
  item gets the mean m-feature of the ``imputation_k`` most similar. Items missing every
  modality fall back.
* Propagation over the item-item co-interaction graph of the training data (Malitesta et al.,
  CIKM 2024): items i, j are linked when a training user interacted with both; every item keeps
  its ``imputation_k`` strongest links (most common users, ties by item id), the graph is made
  symmetric and binary (``A``).

  - ``graph_mean``: the mean over the item's observed neighbours (1 hop).
  - ``multi_hop``: feature propagation (Rossi et al., 2022): X ← D^-1/2 A D^-1/2 X for
    ``imputation_hops`` steps from X = observed rows (0 elsewhere), resetting the observed rows
    after every step. Items with no observed item within that many hops fall back.
  - ``ppr`` and ``heat``: a diffusion-weighted mean of the observed rows,
    x̂_i = (K X₀)_i / (K o)_i with o the observed indicator and K a diffusion of
    H = D̃^-1/2 (A + I) D̃^-1/2: personalised PageRank K = α Σ_t ((1 − α) H)^t
    (``imputation_alpha``) or the heat kernel K = e^{-τ} Σ_t (τ H)^t / t!
    (``imputation_heat_t``), both summed over ``SERIES_TERMS`` terms. Normalising by K o makes
    every filled row a convex combination of observed rows (the raw diffusion shrinks rows far
    from observed items towards 0). Items in components without an observed item fall back.
* ``generated``: the raw features a trained DGMRec generated for the masked rows it generates
  (by default the items missing exactly that modality); other masked rows fall back. The
  generator only ever saw masked data, so nothing true reaches the filled rows.

Rows flagged in ``exclude`` (new items under the new-item protocol) are never sources: they are
left out of the mean as the reference does, are no kNN candidates, and have no training
interaction and hence no graph link.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

IMPUTATIONS = ("zero", "mean", "feature_knn", "graph_mean", "multi_hop", "ppr", "heat", "generated")
GRAPH_METHODS = ("graph_mean", "multi_hop", "ppr", "heat")
SERIES_TERMS = 30  # terms of the PPR / heat series: 0.9**30 < 5% of the PPR mass left out at alpha 0.1
CHUNK = 1024


@dataclass(frozen=True)
class ImputationParams:
    """The knobs of the methods; ``None`` in the configuration means these defaults."""

    k: int = 20  # kNN neighbours (feature_knn) and links kept per item (graph methods)
    hops: int = 3  # feature-propagation steps of multi_hop
    alpha: float = 0.1  # PPR teleport probability
    heat_t: float = 5.0  # heat-kernel time

    @classmethod
    def from_config(cls, config: dict) -> "ImputationParams":
        vals = {"k": config.get("imputation_k"), "hops": config.get("imputation_hops"),
                "alpha": config.get("imputation_alpha"), "heat_t": config.get("imputation_heat_t")}
        out = {}
        for name, key in (("k", "imputation_k"), ("hops", "imputation_hops")):
            v = vals[name]
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
            out[name] = v
        for name, key, lo, hi in (("alpha", "imputation_alpha", 0.0, 1.0), ("heat_t", "imputation_heat_t", 0.0, None)):
            v = vals[name]
            if v is None:
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be a number, got {v!r}") from None
            if not (f > lo and (hi is None or f < hi)):
                raise ValueError(f"{key} must lie in ({lo:g}, {'inf' if hi is None else f'{hi:g}'}), got {v!r}")
            out[name] = f
        return cls(**out)


@dataclass
class Filled:
    """The filled table of one modality and how many masked rows fell back to the mean."""

    x: np.ndarray
    n_filled: int
    n_fallback: int


# --------------------------------------------------------------------------- graphs

def co_interaction_graph(train_users: np.ndarray, train_items: np.ndarray, n_users: int, n_items: int,
                         k: int) -> sp.csr_matrix:
    """Binary symmetric item-item graph: each item's ``k`` most co-interacted items (ties by id)."""
    r = sp.csr_matrix((np.ones(len(train_users), np.float32), (train_users, train_items)), shape=(n_users, n_items))
    r.sum_duplicates()
    r.data[:] = 1.0
    c = (r.T @ r).tocoo()
    off = c.row != c.col
    rows, cols, vals = c.row[off], c.col[off], c.data[off]
    order = np.lexsort((cols, -vals, rows))  # by row, then most common users first, then item id
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(n_items))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < k
    a = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])), shape=(n_items, n_items))
    a = a.maximum(a.T).tocsr()
    a.data[:] = 1.0
    return a


def sym_normalised(a: sp.csr_matrix, self_loops: bool = False) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 (with A + I when ``self_loops``); isolated items have an empty row."""
    if self_loops:
        a = (a + sp.identity(a.shape[0], dtype=np.float32, format="csr")).tocsr()
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    d = sp.diags(inv.astype(np.float32))
    return (d @ a @ d).tocsr().astype(np.float32)


def series_coefficients(method: str, params: ImputationParams, terms: int = SERIES_TERMS) -> np.ndarray:
    """c_t of K = Σ_t c_t H^t: PPR α(1-α)^t, heat e^{-τ} τ^t / t!."""
    t = np.arange(terms, dtype=np.float64)
    if method == "ppr":
        return params.alpha * (1.0 - params.alpha) ** t
    if method == "heat":
        from scipy.special import gammaln
        return np.exp(-params.heat_t + t * np.log(params.heat_t) - gammaln(t + 1.0))
    raise ValueError(f"no diffusion series for {method!r}")


def _diffuse(h: sp.csr_matrix, x: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    out = coeffs[0] * x.astype(np.float64)
    cur = x.astype(np.float64)
    for c in coeffs[1:]:
        cur = h @ cur
        out += c * cur
    return out


# --------------------------------------------------------------------------- methods

def _mean_fill(x: np.ndarray, source: np.ndarray) -> np.ndarray:
    return x[source].mean(axis=0) if source.any() else np.zeros(x.shape[1], np.float32)


def fill_modality(x: np.ndarray, missing: np.ndarray, method: str, *, source: np.ndarray,
                  graph: sp.csr_matrix | None = None, others: dict | None = None,
                  params: ImputationParams = ImputationParams(),
                  generated: tuple[np.ndarray, np.ndarray] | None = None) -> Filled:
    """Fill the ``missing`` rows of one modality's table ``x`` by ``method``.

    ``source``: rows whose values may be used (observed and not excluded). ``graph``: the
    co-interaction graph (graph methods). ``others``: ``{modality: (table, missing flags)}`` of
    the other modalities (``feature_knn``). ``generated``: ``(item ids, rows)`` (``generated``).
    The masked rows of ``x`` are zeroed first, so no method can read them.
    """
    x = np.array(x, dtype=np.float32, copy=True)
    missing = np.asarray(missing, dtype=bool)
    x[missing] = 0.0
    source = np.asarray(source, dtype=bool) & ~missing
    n_missing = int(missing.sum())
    if n_missing == 0:
        return Filled(x, 0, 0)
    fill_mean = _mean_fill(x, source)
    if method == "zero":
        return Filled(x, n_missing, 0)
    if method == "mean":
        x[missing] = fill_mean
        return Filled(x, n_missing, 0)
    values = np.zeros((n_missing, x.shape[1]), np.float32)
    ok = np.zeros(n_missing, dtype=bool)
    rows = np.flatnonzero(missing)
    if method == "feature_knn":
        values, ok = _feature_knn(x, rows, source, others or {}, params.k)
    elif method in GRAPH_METHODS:
        if graph is None:
            raise ValueError(f"imputation {method!r} needs the co-interaction graph")
        values, ok = _graph_fill(x, rows, source, graph, method, params)
    elif method == "generated":
        if generated is None:
            raise ValueError("imputation 'generated' needs the generated features of a trained DGMRec")
        ids, feats = np.asarray(generated[0], dtype=np.int64), np.asarray(generated[1], dtype=np.float32)
        if feats.shape != (len(ids), x.shape[1]):
            raise ValueError(f"generated features have shape {feats.shape}, expected ({len(ids)}, {x.shape[1]})")
        if len(ids) and not missing[ids].all():
            bad = int(ids[~missing[ids]][0])
            raise ValueError(f"generated features cover item {bad}, which is observed in this modality")
        if not np.isfinite(feats).all():
            raise ValueError("generated features hold non-finite values")
        pos = np.searchsorted(rows, ids)
        values[pos] = feats
        ok[pos] = True
    else:
        raise ValueError(f"unknown imputation {method!r}; known: {', '.join(IMPUTATIONS)}")
    values[~ok] = fill_mean
    x[rows] = values
    return Filled(x, n_missing, int((~ok).sum()))


def _feature_knn(x: np.ndarray, rows: np.ndarray, source: np.ndarray, others: dict, k: int):
    """Mean m-feature of the k most similar items in the query's observed other modalities."""
    values = np.zeros((len(rows), x.shape[1]), np.float32)
    ok = np.zeros(len(rows), dtype=bool)
    names = sorted(others)
    if not names:
        return values, ok
    normed = {o: _l2(others[o][0]) for o in names}
    code = np.zeros(len(rows), dtype=np.int64)
    for j, o in enumerate(names):
        code |= (~np.asarray(others[o][1], bool)[rows]).astype(np.int64) << j
    for c in np.unique(code):
        if c == 0:  # the item has no other modality: nothing to compare
            continue
        seen = [o for j, o in enumerate(names) if c >> j & 1]
        positions = np.flatnonzero(code == c)
        cand = source.copy()
        for o in seen:
            cand &= ~np.asarray(others[o][1], bool)
        cand_ids = np.flatnonzero(cand)
        if len(cand_ids) == 0:
            continue
        g = np.concatenate([normed[o][cand_ids] for o in seen], axis=1)
        kk = min(k, len(cand_ids))
        for lo in range(0, len(positions), CHUNK):
            pos = positions[lo:lo + CHUNK]
            q = np.concatenate([normed[o][rows[pos]] for o in seen], axis=1)
            sim = q @ g.T
            top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            values[pos] = x[cand_ids[top]].mean(axis=1)
            ok[pos] = True
    return values, ok


def _l2(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(n, 1e-12)


def _graph_fill(x: np.ndarray, rows: np.ndarray, source: np.ndarray, a: sp.csr_matrix, method: str,
                params: ImputationParams):
    o = source.astype(np.float64)
    x0 = np.where(source[:, None], x, 0.0).astype(np.float64)
    if method == "graph_mean":
        num, den = a @ x0, a @ o
        ok = den[rows] > 0
        vals = num[rows] / np.maximum(den[rows], 1e-300)[:, None]
    elif method == "multi_hop":
        ahat = sym_normalised(a)
        cur, reach = x0, source.copy()
        for _ in range(params.hops):
            cur = ahat @ cur
            cur[source] = x0[source]
            reach = reach | ((a @ reach.astype(np.float64)) > 0)
        ok = reach[rows]
        vals = cur[rows]
    else:
        h = sym_normalised(a, self_loops=True)
        coeffs = series_coefficients(method, params)
        num = _diffuse(h, x0, coeffs)
        den = _diffuse(h, o[:, None], coeffs)[:, 0]
        ok = den[rows] > 1e-12
        vals = num[rows] / np.maximum(den[rows], 1e-300)[:, None]
    vals = np.where(ok[:, None], vals, 0.0).astype(np.float32)
    return vals, ok


def fill_all(features: dict[str, np.ndarray], missing: dict[str, np.ndarray], method: str, *,
             exclude: np.ndarray | None = None, train: tuple | None = None,
             params: ImputationParams = ImputationParams(), generated: dict | None = None) -> dict[str, Filled]:
    """Fill every modality. ``train``: (users, items, n_users, n_items) of the training data,
    needed by the graph methods; ``generated``: ``{modality: (item ids, rows)}``."""
    n_items = len(next(iter(features.values()))) if features else 0
    keep = np.ones(n_items, dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    graph = None
    if method in GRAPH_METHODS and any(missing[m].any() for m in features):
        if train is None:
            raise ValueError(f"imputation {method!r} needs the training interactions")
        graph = co_interaction_graph(*train, k=params.k)
    masked = {m: np.where(missing[m][:, None], np.float32(0), np.asarray(x, np.float32)) for m, x in features.items()}
    out = {}
    for m, x in masked.items():
        others = {o: (masked[o], missing[o]) for o in masked if o != m} if method == "feature_knn" else None
        gen = None
        if method == "generated":
            gen = (generated or {}).get(m, (np.zeros(0, np.int64), np.zeros((0, x.shape[1]), np.float32)))
        out[m] = fill_modality(x, missing[m], method, source=keep & ~missing[m], graph=graph, others=others,
                               params=params, generated=gen)
    return out
