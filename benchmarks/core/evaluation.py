"""Full-ranking evaluation: every item scored for every evaluated user, batched and vectorised.

Definitions (those of the reference evaluation), with ``hit_k`` the relevant items in the top k
and ``P_u`` the user's held-out items:

* Recall@k = hit_k / |P_u|; Precision@k = hit_k / k;
* NDCG@k = DCG / IDCG with binary gains 1/log2(rank+1) and IDCG over min(|P_u|, k) ranks;
* MAP@k = (1 / min(|P_u|, k)) · Σ_{r ≤ k, hit} Precision@r.

Only the user's *training* items are excluded from the ranking (set to -1e10, as the
reference); valid items are not masked at test time. Per-user vectors are kept for
significance tests; the reported value is their mean.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from models.task import EvalSet

METRICS = ("recall", "ndcg", "precision", "map")
EXCLUDED_SCORE = -1e10
EXPOSURE_K = 20  # exposure: the share of top-20 slots


class ScoringError(RuntimeError):
    pass


def csr_rows(indptr: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor, total: int | None = None):
    """(position in ``rows``, column) pairs of the CSR rows ``rows``, without a Python loop.

    ``total`` (the number of entries of those rows, when the caller knows it from a host copy
    of ``indptr``) spares the device a read of the row lengths."""
    starts, stops = indptr[rows], indptr[rows + 1]
    lengths = stops - starts
    if total is None:
        total = int(lengths.sum())
    pos = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths, output_size=total)
    offsets = torch.arange(total, device=rows.device) - \
        torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths, output_size=total)
    return pos, indices[torch.repeat_interleave(starts, lengths, output_size=total) + offsets]


def rank_metrics(hits: torch.Tensor, n_pos: torch.Tensor, topk: list[int], metrics=METRICS) -> dict[str, torch.Tensor]:
    """Per-user metrics from a (B, K) hit matrix of ranked lists and the ground-truth sizes."""
    hits = hits.to(torch.float64)
    n_pos = n_pos.to(torch.float64)
    k_max = hits.shape[1]
    ranks = torch.arange(1, k_max + 1, dtype=torch.float64, device=hits.device)
    discount = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = torch.cumsum(hits, dim=1)
    dcg = torch.cumsum(hits * discount, dim=1)
    idcg_table = torch.cumsum(discount, dim=0)
    prec_at_r = cum_hits / ranks
    ap_sum = torch.cumsum(hits * prec_at_r, dim=1)
    out = {}
    for k in topk:
        kk = min(k, k_max)
        h = cum_hits[:, kk - 1]
        denom_k = torch.clamp(n_pos, max=k)
        if "recall" in metrics:
            out[f"recall@{k}"] = h / n_pos
        if "precision" in metrics:
            out[f"precision@{k}"] = h / k
        if "ndcg" in metrics:
            idcg = idcg_table[(torch.clamp(n_pos, max=kk) - 1).long()]
            out[f"ndcg@{k}"] = dcg[:, kk - 1] / idcg
        if "map" in metrics:
            out[f"map@{k}"] = ap_sum[:, kk - 1] / denom_k
    return out


class Evaluator:
    """Scores users in batches and computes ranking metrics against an EvalSet.

    Everything after scoring runs on the model's device (exclusion of training items, top-k,
    hits and metrics); the index arrays go there once per device and evaluation set, and the
    per-user vectors come back to the host once per pass. Row counts come from host copies of
    the index pointers, so no batch waits for the device."""

    def __init__(self, task, topk=(10, 20, 50), metrics=("recall", "ndcg"), batch_size: int = 4096):
        self.task = task
        self.topk = sorted(int(k) for k in topk)
        self.metrics = tuple(m.lower() for m in metrics)
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")
        self.batch_size = int(batch_size)
        r = task.train_matrix()
        self.train_indptr_host = r.indptr.astype(np.int64)
        self.train_indptr = torch.from_numpy(self.train_indptr_host)
        self.train_indices = torch.from_numpy(r.indices.astype(np.int64))
        self._on_device: dict = {}  # (device, id of the eval set or None for train) -> (set, tensors there)

    def _tensors(self, device: torch.device, eval_set: EvalSet | None):
        key = (str(device), None if eval_set is None else id(eval_set))
        held = self._on_device.get(key)
        if held is None or held[0] is not eval_set:  # the set itself is kept: an id is reused only after it is gone
            if eval_set is None:
                tensors = (self.train_indptr.to(device), self.train_indices.to(device))
            else:
                tensors = tuple(torch.from_numpy(np.asarray(a, dtype=np.int64)).to(device)
                                for a in (eval_set.users, eval_set.indptr, eval_set.items))
            held = self._on_device[key] = (eval_set, tensors)
        return held[1]

    def evaluate(self, model, eval_set: EvalSet) -> tuple[dict[str, float], dict[str, np.ndarray], float]:
        """Mean metrics, per-user metric vectors (in ``eval_set.users`` order) and seconds taken."""
        means, vectors, seconds, _ = self.evaluate_groups(model, eval_set)
        return means, vectors, seconds

    def evaluate_groups(self, model, eval_set: EvalSet, groups: dict[str, np.ndarray] | None = None,
                        exposure_k: int = EXPOSURE_K):
        """``evaluate`` plus, in the same pass, the metrics of item groups and the exposure of each.

        ``groups``: name -> bool flags over items. A group's metrics restrict every user's ground
        truth to the group's items (users without one drop out) with the ranking unchanged, as
        ``EvalSet.restrict_items`` would. Exposure: the share of the top-``exposure_k`` slots of
        all evaluated users that go to the group's items, beside the group's catalogue share.
        Returns (means, vectors, seconds, GroupMetrics).
        """
        start = time.perf_counter()
        k_max = max(self.topk)
        n_items = self.task.n_items
        device = torch.device(model.device)
        train_indptr, train_indices = self._tensors(device, None)
        all_users, gt_indptr, gt_items = self._tensors(device, eval_set)
        users_host, gt_indptr_host = eval_set.users, eval_set.indptr
        train_counts_host = np.diff(self.train_indptr_host)
        groups = {k: torch.from_numpy(np.asarray(v, dtype=bool)).to(device) for k, v in (groups or {}).items()}
        k_exp = min(int(exposure_k), n_items)
        per_user: dict[str, list[torch.Tensor]] = {}
        g_vals: dict[str, dict[str, list[torch.Tensor]]] = {g: {} for g in groups}
        g_rows: dict[str, list[torch.Tensor]] = {g: [] for g in groups}  # per row: the group's test items
        slots = {g: torch.zeros((), dtype=torch.int64, device=device) for g in groups}  # read once, after
        n_slots = 0
        nan_seen = torch.zeros((), dtype=torch.bool, device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model.begin_scoring()
                for lo in range(0, len(eval_set.users), self.batch_size):
                    hi = min(len(eval_set.users), lo + self.batch_size)
                    users = all_users[lo:hi]
                    scores = model.full_sort_predict(users)
                    if scores.shape != (hi - lo, n_items):
                        raise ScoringError(f"{type(model).__name__}.full_sort_predict returned shape "
                                           f"{tuple(scores.shape)}, expected {(hi - lo, n_items)}")
                    if scores.device != device:
                        scores = scores.to(device)
                    scores = scores.detach().to(torch.float32, copy=True)  # masked in place below
                    nan_seen |= torch.isnan(scores).any()  # read once, after the pass
                    tp, ti = csr_rows(train_indptr, train_indices, users,
                                      total=int(train_counts_host[users_host[lo:hi]].sum()))
                    scores[tp, ti] = EXCLUDED_SCORE
                    top = torch.topk(scores, min(max(k_max, k_exp), n_items), dim=1).indices
                    gp, gi = csr_rows(gt_indptr, gt_items, torch.arange(lo, hi, device=device),
                                      total=int(gt_indptr_host[hi] - gt_indptr_host[lo]))
                    gt_keys = gp * n_items + gi
                    top_keys = torch.arange(hi - lo, device=device).unsqueeze(1) * n_items + top[:, :k_max]
                    hits = torch.isin(top_keys, gt_keys)
                    n_pos = gt_indptr[lo + 1:hi + 1] - gt_indptr[lo:hi]
                    for name, v in rank_metrics(hits, n_pos, self.topk, self.metrics).items():
                        per_user.setdefault(name, []).append(v)
                    n_slots += (hi - lo) * k_exp
                    for g, flags in groups.items():
                        # every row is scored and rows without a group item are dropped after the
                        # pass: selecting them here would size tensors by values (a host wait per batch)
                        slots[g] += flags[top[:, :k_exp]].sum()
                        g_pos = torch.zeros(hi - lo, dtype=torch.long, device=device).index_add_(0, gp, flags[gi].long())
                        g_hits = hits & flags[top[:, :k_max]]
                        for name, v in rank_metrics(g_hits, g_pos, self.topk, self.metrics).items():
                            g_vals[g].setdefault(name, []).append(v)
                        g_rows[g].append(g_pos)
                model.end_scoring()
        finally:
            model.train(was_training)
        if bool(nan_seen):
            raise ScoringError(f"{type(model).__name__} produced NaN scores")
        vectors = {k: torch.cat(v).cpu().numpy() for k, v in per_user.items()}
        means = {k: float(v.mean()) if len(v) else 0.0 for k, v in vectors.items()}
        result = GroupMetrics()
        for g, flags in groups.items():
            has_items = torch.cat(g_rows[g]).cpu().numpy() > 0 if g_rows[g] else np.zeros(0, bool)
            rows = np.flatnonzero(has_items)
            vec = {k: torch.cat(v).cpu().numpy()[has_items] for k, v in g_vals[g].items()}
            vec = {k: v for k, v in vec.items() if len(v)}  # a group no evaluated user has: no metrics
            result.vectors[g] = vec
            result.users[g] = eval_set.users[rows]
            result.means[g] = {k: float(v.mean()) for k, v in vec.items()}
            n_inter = int(flags[gt_items].sum()) if len(gt_items) else 0
            result.counts[g] = (int(len(rows)), n_inter)
            share = float(flags.float().mean()) if len(flags) else float("nan")
            result.exposure[g] = {f"top{k_exp}_share": int(slots[g]) / n_slots if n_slots else float("nan"),
                                  "catalogue_share": share}
        return means, vectors, time.perf_counter() - start, result


@dataclass
class GroupMetrics:
    """Per item group: mean metrics, per-user vectors and their users, (users, interactions), exposure."""

    means: dict = field(default_factory=dict)
    vectors: dict = field(default_factory=dict)
    users: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    exposure: dict = field(default_factory=dict)
