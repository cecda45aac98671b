"""The missing-ratio analysis (``missing_ratio``): per dataset, models × ratios (R@20, N@20) and
the relative drop against ratio 0; a line figure per dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report.captions import data_caption, data_label
from benchmarks.report.grid import Column, Grid, build_grid, number
from benchmarks.report.output import figure_links, links, slug, write_csv, write_grids
from benchmarks.report.presentation import LEVEL_METRICS, model_order, short_metric
from benchmarks.report.selection import dataset_kind, dataset_order, official_ratio, selected
from benchmarks.report.stats import finite, sample_sd, seed_aggregate


def ratio_stats(records: list[dict], metrics=LEVEL_METRICS) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Values per ratio (mean/std over seeds) and relative drops vs ratio 0.

    Drop(r) = 100·(M(0) − M(r))/M(0) computed per seed (seeds run at both ratios) and then
    averaged over those seeds.
    """
    recs = selected(records, "missing")
    rows = [{"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"],
             "ratio": float(r.get("missing_ratio", 0.0)), "metric": m, "seed": r.get("seed"),
             "value": float(r["test"][m])}
            for r in recs for m in metrics if finite((r.get("test") or {}).get(m))]
    df = pd.DataFrame(rows)
    values = seed_aggregate(df, ["model", "group", "dataset", "ratio", "metric"])
    drops = []
    if not df.empty:
        for (model, group, ds, metric), part in df.groupby(["model", "group", "dataset", "metric"], sort=False):
            base = dict(zip(part.loc[part["ratio"] == 0, "seed"], part.loc[part["ratio"] == 0, "value"]))
            if not base:
                continue
            for ratio, rp in part[part["ratio"] != 0].groupby("ratio"):
                per_seed = [100.0 * (base[s] - v) / base[s] for s, v in zip(rp["seed"], rp["value"])
                            if s in base and base[s] > 0]
                if per_seed:
                    drops.append({"model": model, "group": group, "dataset": ds, "ratio": float(ratio),
                                  "metric": metric, "drop": float(np.mean(per_seed)), "drop_std": sample_sd(per_seed),
                                  "n": len(per_seed)})
    drops_df = pd.DataFrame(drops, columns=["model", "group", "dataset", "ratio", "metric", "drop", "drop_std", "n"])
    return values, drops_df, recs


def _ratio_grids(values: pd.DataFrame, drops: pd.DataFrame, ds: str, recs: list[dict],
                 metrics=LEVEL_METRICS) -> list[Grid]:
    part = values[values["dataset"] == ds]
    ratios = sorted(part["ratio"].unique())
    rows = [([model], model) for model, _ in model_order(zip(part["model"], part["group"]))]
    found = {(r.model, r.ratio, r.metric): r.mean for r in part.itertuples()}
    ds_recs = [r for r in recs if r["dataset"] == ds]
    kind = dataset_kind(ds_recs[0]) if ds_recs else ds
    cap = (f"{ds}: test metrics per missing ratio r (r=0: no masking; official ratio {official_ratio(kind):g}), "
           f"mean over seeds, best bold, second underlined per column. " + data_caption(ds_recs))
    grids = [build_grid(f"Missing-ratio analysis, {ds}", cap, f"tab:ratio-{slug(ds)}", ["Model"], rows,
                        [Column((r, m), f"r={r:g}", short_metric(m)) for m in metrics for r in ratios],
                        lambda model, col: number(found[(model,) + col]) if (model,) + col in found else None,
                        rank="column")]
    dpart = drops[drops["dataset"] == ds]
    if not dpart.empty:
        dropped = {(r.model, r.ratio, r.metric): r.drop for r in dpart.itertuples()}
        cap = (f"{ds}: relative drop vs r=0, 100·(M(0) − M(r))/M(0) in %, computed per seed and averaged over the "
               f"seeds run at both ratios (lower is more robust). " + data_caption(ds_recs))
        grids.append(build_grid(
            f"Relative drop vs ratio 0, {ds}", cap, f"tab:ratio-drop-{slug(ds)}", ["Model"], rows,
            [Column((r, m), f"r={r:g}", f"drop of {short_metric(m)} (%)")
             for m in metrics for r in sorted(dpart["ratio"].unique())],
            lambda model, col: f"{dropped[(model,) + col]:.2f}" if (model,) + col in dropped else None))
    return grids


def section(records: list[dict], out: Path, written: list[Path], draw: bool) -> list[str]:
    """Write the per-ratio tables (and figures); return the index lines."""
    values, drops, recs = ratio_stats(records)
    if values.empty:
        return []
    datasets = [d for d in dataset_order(recs) if d in set(values["dataset"])]
    write_grids([g for ds in datasets for g in _ratio_grids(values, drops, ds, recs)], out / "missing_ratio", written)
    csv = values.merge(drops[["model", "dataset", "ratio", "metric", "drop", "drop_std"]],
                       on=["model", "dataset", "ratio", "metric"], how="left")
    csv = csv.rename(columns={"drop": "drop_pct_vs_r0", "drop_std": "drop_pct_std"})
    write_csv(csv, out / "missing_ratio.csv", written)
    lines = [links(out, "missing_ratio", ("md", "tex", "csv"), "tables (values and relative drops per dataset)")]
    no_zero = [ds for ds in datasets if not (values[values["dataset"] == ds]["ratio"] == 0).any()]
    if no_zero:
        lines.append(f"- No relative drop for {', '.join(no_zero)}: ratio 0 (no masking) was not run.")
    if draw:
        from benchmarks.report import figures  # matplotlib only when figures are drawn
        for ds in datasets:
            v = values[values["dataset"] == ds]
            if v["ratio"].nunique() < 2:
                lines.append(f"- No ratio figure for {ds}: only one ratio was run.")
                continue
            files = figures.ratio_lines(v, drops[drops["dataset"] == ds],
                                        f"{ds} ({data_label(recs, ds)}): accuracy vs missing ratio (mean over seeds)",
                                        out / f"missing_ratio_{slug(ds)}")
            written.extend(files)
            lines.append(figure_links(files))
    return lines + [""]
