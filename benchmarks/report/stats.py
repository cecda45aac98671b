"""Statistics of the reports: means over seeds, paired tests and their marks, Holm's correction,
bootstrap intervals, effect sizes.

* ``seed_aggregate``: mean, sample standard deviation (ddof=1; NaN for one seed), count and the
  seeds of a tidy frame's values per key.
* ``paired_t``: two-sided paired t-test (``scipy.stats.ttest_rel``) of per-user vectors;
  ``significance_mark`` its mark (** p<0.01, * p<0.05, n.s. otherwise).
* ``holm``: Holm's step-down adjustment of a family of p-values (the proposed model against
  every baseline is one family per dataset and metric): sort ascending, multiply the i-th
  smallest (1-based) by ``m - i + 1``, keep the running maximum, cap at 1. Rejecting where the
  adjusted value is below the level controls the family-wise error rate. NaN p-values are no
  test: they stay NaN and do not count in ``m``.
* ``bootstrap_means`` / ``bootstrap_ci``: percentile intervals of the mean over users,
  resampling users with replacement. Every column of a matrix is resampled with the same draws
  (one shared set per dataset), so the intervals of models evaluated on the same users are
  drawn alike. A resample is a multinomial count vector; the resampled means are one matrix
  product per chunk of resamples.
* ``cohens_dz``: the paired effect size mean(a - b) / sd(a - b) (ddof=1).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

N_BOOTSTRAP = 1000
CI_LEVEL = 0.95
BOOTSTRAP_SEED = 2025
_CHUNK = 250
SIG_LEVELS = ((0.01, "**"), (0.05, "*"))


def finite(x) -> bool:
    """Whether ``x`` is a finite number (None, text and NaN are not)."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def sample_sd(values) -> float:
    """Sample standard deviation (ddof=1); NaN for fewer than two values."""
    v = np.asarray(list(values), dtype=float)
    return float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


def seed_aggregate(df: pd.DataFrame, keys: list[str], value: str = "value") -> pd.DataFrame:
    """mean, sample std, n and the seeds (space-separated, sorted) of ``value`` per ``keys``."""
    if df.empty:
        return pd.DataFrame(columns=keys + ["mean", "std", "n", "seeds"])
    g = df.groupby(keys, sort=False)
    out = g[value].agg(mean="mean", std=sample_sd, n="count").reset_index()
    seeds = g["seed"].agg(lambda s: " ".join(str(x) for x in sorted(s))).reset_index(drop=True)
    out["seeds"] = seeds.to_numpy()
    return out


def paired_t(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of a paired t-test; NaN when there is nothing to test."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or np.allclose(a, b):
        return float("nan"), float("nan")
    res = sps.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue)


def significance_mark(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n.s."
    for level, mark in SIG_LEVELS:
        if p < level:
            return mark
    return "n.s."


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values in the input order (NaN in, NaN out)."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def cohens_dz(a: np.ndarray, b: np.ndarray) -> float:
    """Paired effect size: mean difference over the sample std of the differences."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) < 2:
        return float("nan")
    sd = float(np.std(d, ddof=1))
    return float(np.mean(d)) / sd if sd > 0 else float("nan")


def bootstrap_means(values: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(n_boot, columns) means of ``values`` (users x columns) over users resampled with replacement."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    n = len(v)
    if n == 0:
        return np.full((n_boot, v.shape[1]), np.nan)
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, v.shape[1]))
    for lo in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - lo)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        out[lo:lo + b] = counts @ v / n
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = N_BOOTSTRAP, level: float = CI_LEVEL,
                 seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(columns, 2) percentile intervals [lo, hi] of the mean (a 1-D input gives shape (1, 2))."""
    means = bootstrap_means(values, n_boot, seed)
    tail = 100.0 * (1.0 - level) / 2.0
    return np.stack([np.percentile(means, tail, axis=0), np.percentile(means, 100.0 - tail, axis=0)], axis=1)
