"""The missing-level analysis (``missing_level``): per dataset, models × levels (full, missing 1,
2[, 3]) × R@20, N@20, from the per-level test sets every ``missing`` job evaluates at its best
validation epoch; a grouped-bar figure per dataset."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from benchmarks.report.captions import data_caption, data_label, ratio_caption
from benchmarks.report.grid import Column, Grid, build_grid, number
from benchmarks.report.output import figure_links, links, slug, write_csv, write_grids
from benchmarks.report.presentation import LEVEL_METRICS, model_order, short_metric
from benchmarks.report.selection import at_official_ratio, dataset_order
from benchmarks.report.stats import finite, seed_aggregate

LEVEL_KEY = re.compile(r"^test_level(\d+)$")  # extra["test_level<k>"]: items missing k modalities


def has_levels(rec: dict) -> bool:
    return any(LEVEL_KEY.match(k) for k in (rec.get("extra") or {}))


def level_label(level: int) -> str:
    return "full" if level == 0 else f"missing {level}"


def level_stats(records: list[dict], metrics=LEVEL_METRICS) -> tuple[pd.DataFrame, dict, dict, list[dict]]:
    """Per-level test metrics (mean/std over seeds) at each dataset's official ratio.

    Returns (stats: model, group, dataset, level, metric, mean, std, n, seeds;
    counts: dataset -> level -> (users, interactions) or None when they differ between runs;
    ratios; the records used).
    """
    recs, ratios = at_official_ratio(records, "missing")
    recs = [r for r in recs if has_levels(r)]
    rows, counts = [], {}
    for r in recs:
        for key, vals in (r.get("extra") or {}).items():
            mt = LEVEL_KEY.match(key)
            if not mt or not isinstance(vals, dict):
                continue
            lv = int(mt.group(1))
            for m in metrics:
                if finite(vals.get(m)):
                    rows.append({"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"],
                                 "level": lv, "metric": m, "seed": r.get("seed"), "value": float(vals[m])})
            c = (r.get("extra_counts") or {}).get(key)
            if c is not None:
                counts.setdefault(r["dataset"], {}).setdefault(lv, set()).add(tuple(int(x) for x in c))
    stats = seed_aggregate(pd.DataFrame(rows), ["model", "group", "dataset", "level", "metric"])
    flat = {ds: {lv: (next(iter(v)) if len(v) == 1 else None) for lv, v in d.items()} for ds, d in counts.items()}
    return stats, flat, {d: ratios[d] for d in {r["dataset"] for r in recs}}, recs


def _level_grid(stats: pd.DataFrame, ds: str, counts: dict, ratios: dict, recs: list[dict],
                metrics=LEVEL_METRICS) -> Grid:
    part = stats[stats["dataset"] == ds]
    levels = sorted(int(x) for x in part["level"].unique())
    models = model_order(zip(part["model"], part["group"]))
    found = {(r.model, int(r.level), r.metric): r.mean for r in part.itertuples()}
    cnt = counts.get(ds, {})
    cnt_txt = ", ".join(f"{level_label(lv)} {cnt[lv][1]} interactions / {cnt[lv][0]} users" if cnt.get(lv)
                        else f"{level_label(lv)} (counts differ between runs)" for lv in levels if lv in cnt)
    ds_recs = [r for r in recs if r["dataset"] == ds]
    caption = (f"{ds}: test interactions grouped by the number of missing modalities of their item (full = "
               f"all modalities observed); each user's ground truth restricted to that level, ranking unchanged; "
               f"mean over seeds, best bold, second underlined. Test interactions per level: {cnt_txt or 'n/a'}. "
               + ratio_caption({ds: ratios[ds]}, ds_recs) + " " + data_caption(ds_recs))
    return build_grid(f"Missing-level analysis, {ds}", caption, f"tab:level-{slug(ds)}", ["Model"],
                      [([model], model) for model, _ in models],
                      [Column((lv, m), short_metric(m), level_label(lv)) for lv in levels for m in metrics],
                      lambda model, col: number(found[(model,) + col]) if (model,) + col in found else None,
                      rank="column")


def section(records: list[dict], out: Path, written: list[Path], draw: bool) -> list[str]:
    """Write the per-level tables (and figures); return the index lines."""
    stats, counts, ratios, recs = level_stats(records)
    if stats.empty:
        return ["No per-level results: the `missing` records carry no `extra.test_level*` metrics.", ""]
    datasets = [d for d in dataset_order(recs) if d in set(stats["dataset"])]
    write_grids([_level_grid(stats, ds, counts, ratios, recs) for ds in datasets], out / "missing_level", written)
    csv = stats.copy()
    csv["level_label"] = csv["level"].map(level_label)
    pairs = [counts.get(d, {}).get(lv) or (None, None) for d, lv in zip(csv["dataset"], csv["level"])]
    csv["users"] = [u for u, _ in pairs]
    csv["interactions"] = [n for _, n in pairs]
    write_csv(csv, out / "missing_level.csv", written)
    lines = [links(out, "missing_level", ("md", "tex", "csv"), "tables (one per dataset)")]
    if draw:
        from benchmarks.report import figures  # matplotlib only when figures are drawn
        for ds in datasets:
            part = stats[stats["dataset"] == ds]
            cnt = counts.get(ds, {})
            labels = {int(lv): level_label(int(lv)) + (f" ({cnt[int(lv)][1]})" if cnt.get(int(lv)) else "")
                      for lv in part["level"].unique()}
            files = figures.level_bars(part, labels, f"{ds} ({data_label(recs, ds)}): test metrics by missing level "
                                                     f"of the test item (ratio {ratios[ds]:g}, mean over seeds)",
                                       out / f"missing_level_{slug(ds)}")
            written.extend(files)
            lines.append(figure_links(files))
    return lines + [""]
