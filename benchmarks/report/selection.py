"""Which records a table shows: the best-validation setting of each grid, the newest run of each
cell, and each dataset's official missing ratio.

A grid is reduced to its best-validation setting (never by test). The ``missing``-family tables
use each dataset's official ratio (Amazon 0.666, TikTok 0.6) when it ran, else the ratio present
closest to it.
"""
from __future__ import annotations

from benchmarks.report.presentation import DATASET_ORDER

PROTOCOL_NAMES = ("missing", "new_items", "missing_level", "missing_ratio", "retrieval", "imputation")
# The job protocol whose records a report protocol reads: the analyses reuse the ``missing`` jobs.
JOB_PROTOCOL = {"missing": "missing", "new_items": "new_items", "missing_level": "missing",
                "missing_ratio": "missing", "retrieval": "missing", "imputation": "missing"}
OFFICIAL_RATIOS = {"tiktok": 0.6}  # every Amazon kind: 0.666 (= 2/3)
DEFAULT_OFFICIAL_RATIO = 0.666
RATIO_TOLERANCE = 2e-3  # 0.666 and 2/3 are the same setting


def unique_jobs(records: list[dict]) -> list[dict]:
    """One record per job id (the last one: a retried job supersedes its failure)."""
    return list({r.get("job_id", id(r)): r for r in records}.values())


def select_grid(records: list[dict]) -> list[dict]:
    """The best-validation setting of every grid group among the ``ok`` records."""
    best: dict[str, tuple] = {}
    for rec in records:
        if rec.get("status") != "ok":
            continue
        metric = str(rec.get("config", {}).get("valid_metric", "recall@20")).lower()
        score = rec.get("valid", {}).get(metric, float("-inf"))
        cur = best.get(rec["grid_group"])
        if cur is None or score > cur[0]:
            best[rec["grid_group"]] = (score, rec)
    return [r for _, r in best.values()]


def latest_settings(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, superseded): for each cell (model, dataset, protocol, ratio, seed, missing-data axes)
    the records of the grid run that reached the store last.

    A results folder collects every run made into it, so a table is the union of those runs;
    where two runs trained the same cell under different settings, the newer one is shown and the
    older one is named in the index instead of being averaged in.
    """
    def cell(r):  # the missing-data axes are part of a cell: an imputation sweep holds several per seed
        cfg = r.get("config") or {}
        axes = tuple(str(cfg.get(k)) for k in ("missing_imputation", "missing_mechanism", "missing_ratio_per_modality"))
        return (r.get("model"), r.get("dataset"), r.get("protocol"), r.get("missing_ratio"), r.get("seed")) + axes

    newest = {}
    for r in records:  # store order: later lines are newer
        newest[cell(r)] = r.get("grid_group", r.get("job_id"))
    kept = [r for r in records if r.get("grid_group", r.get("job_id")) == newest[cell(r)]]
    superseded = [r for r in records if r.get("grid_group", r.get("job_id")) != newest[cell(r)]]
    return kept, superseded


def dataset_kind(rec: dict) -> str:
    """The paper dataset a record's data stands for (``synthetic:baby`` -> ``baby``)."""
    return str(rec.get("dataset_kind") or str(rec.get("dataset", "")).split(":")[-1]).lower()


def dataset_order(records: list[dict]) -> list[str]:
    """The datasets of the records in the paper's order, then by name."""
    kinds = {}
    for r in records:
        kinds.setdefault(r["dataset"], dataset_kind(r))
    rank = {k: i for i, k in enumerate(DATASET_ORDER)}
    return sorted(kinds, key=lambda d: (rank.get(kinds[d], len(rank)), d))


def official_ratio(kind: str) -> float:
    return OFFICIAL_RATIOS.get(str(kind).lower(), DEFAULT_OFFICIAL_RATIO)


def same_ratio(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= RATIO_TOLERANCE


def choose_ratio(ratios, kind: str) -> float:
    """The dataset's official ratio when it ran, else the (non-zero) ratio closest to it."""
    ratios = sorted({float(r) for r in ratios})
    target = official_ratio(kind)
    for r in ratios:
        if same_ratio(r, target):
            return r
    pool = [r for r in ratios if r > 0] or ratios
    return min(pool, key=lambda r: (abs(r - target), r))


def selected(records: list[dict], job_protocol: str) -> list[dict]:
    """Grid-selected ``ok`` records of one job protocol."""
    return select_grid([r for r in unique_jobs(records) if r.get("protocol") == job_protocol])


def at_official_ratio(records: list[dict], job_protocol: str) -> tuple[list[dict], dict[str, float]]:
    """Grid-selected records of ``job_protocol`` at each dataset's official (or present) ratio,
    and that ratio per dataset."""
    by_ds: dict[str, list[dict]] = {}
    for r in selected(records, job_protocol):
        by_ds.setdefault(r["dataset"], []).append(r)
    out, ratios = [], {}
    for ds, recs in by_ds.items():
        ratio = choose_ratio([r.get("missing_ratio", 0.0) for r in recs], dataset_kind(recs[0]))
        ratios[ds] = ratio
        out.extend(r for r in recs if same_ratio(r.get("missing_ratio", 0.0), ratio))
    return out, ratios
