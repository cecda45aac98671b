"""Per-user metric vectors of the results store, averaged over seeds, and the paired test of two
models on them (the significance of Table 1/2's Improv. row)."""
from __future__ import annotations

import numpy as np

from benchmarks.report.stats import paired_t, significance_mark
from benchmarks.run.store import ResultStore


class UserMismatchError(ValueError):
    """Per-user vectors that do not cover the same users cannot be paired."""


def per_user_mean(store: ResultStore, recs: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Users sorted by id and the per-user ``metric`` averaged over the records (seeds)."""
    users, vecs = None, []
    for r in sorted(recs, key=lambda r: str(r.get("seed"))):
        d = store.load_per_user(r["job_id"])
        if metric not in d:
            raise KeyError(f"per-user file of job {r['job_id']} has no {metric!r}")
        u = np.asarray(d["users"])
        order = np.argsort(u, kind="stable")
        u, v = u[order], np.asarray(d[metric], dtype=float)[order]
        if users is None:
            users = u
        elif not np.array_equal(u, users):
            raise UserMismatchError(f"{r['model']} on {r['dataset']}: the seeds' per-user vectors cover different "
                                    f"users ({len(u)} vs {len(users)})")
        vecs.append(v)
    if users is None:
        raise KeyError("no records")
    return users, np.mean(vecs, axis=0)


def paired_test(store: ResultStore, a_recs: list[dict], b_recs: list[dict], metric: str) -> dict:
    """Two-sided paired t-test of seed-averaged per-user vectors, a vs b: t, p, users, mark."""
    ua, a = per_user_mean(store, a_recs, metric)
    ub, b = per_user_mean(store, b_recs, metric)
    if not np.array_equal(ua, ub):
        common = len(np.intersect1d(ua, ub))
        raise UserMismatchError(f"{a_recs[0]['model']} and {b_recs[0]['model']} on {a_recs[0]['dataset']} were "
                                f"evaluated on different users ({len(ua)} and {len(ub)}, {common} in common)")
    t, p = paired_t(a, b)
    return {"t": t, "p": p, "n_users": int(len(a)), "mark": significance_mark(p)}


class MemoStore:
    """A store whose per-user files are read once per report."""

    def __init__(self, store: ResultStore):
        self.store, self.cache = store, {}

    def load_per_user(self, job_id: str) -> dict:
        if job_id not in self.cache:
            self.cache[job_id] = self.store.load_per_user(job_id)
        return self.cache[job_id]


def memo_store(store):
    return store if isinstance(store, MemoStore) else MemoStore(store)
