"""The cost table: seconds per epoch, epochs to the best validation, epochs run, training and
evaluation seconds, peak memory and R@20 per model and dataset; an accuracy-vs-training-time
scatter per protocol."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report.captions import data_caption, data_label
from benchmarks.report.grid import Column, Grid, build_grid, fmt
from benchmarks.report.output import figure_links, links, slug, write_csv, write_grids
from benchmarks.report.presentation import model_order
from benchmarks.report.selection import JOB_PROTOCOL, at_official_ratio, dataset_order

COST_FIELDS = ("s_per_epoch", "epochs_to_best", "epochs_run", "train_seconds", "eval_seconds", "peak_memory_mb",
               "recall@20")


def cost_frame(records: list[dict]) -> pd.DataFrame:
    """Per (protocol, dataset, model): means over seeds of the timing and memory fields, in row order."""
    rows = []
    for r in records:
        spe = r.get("train_seconds_per_epoch")
        best = r.get("best_epoch")
        run = r.get("epochs_run", (best + 1) if best is not None else None)
        rows.append({"protocol": r.get("protocol"), "dataset": r["dataset"], "model": r["model"],
                     "group": r.get("group", "?"), "seed": r.get("seed"),
                     "s_per_epoch": spe, "epochs_to_best": (best + 1) if best is not None else None,
                     "epochs_run": run, "train_seconds": spe * run if spe is not None and run is not None else None,
                     "eval_seconds": r.get("eval_seconds"), "peak_memory_mb": r.get("peak_memory_mb"),
                     "recall@20": (r.get("test") or {}).get("recall@20")})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    num = list(COST_FIELDS)
    df[num] = df[num].apply(pd.to_numeric, errors="coerce")
    out = df.groupby(["protocol", "dataset", "model", "group"], sort=False)[num].mean().reset_index()
    out["n"] = df.groupby(["protocol", "dataset", "model", "group"], sort=False)["seed"].count().to_numpy()
    order = {mg: i for i, mg in enumerate(model_order(zip(out["model"], out["group"])))}
    dorder = {d: i for i, d in enumerate(dataset_order(records))}
    out["_k"] = [(p, dorder.get(d, 99), order[(m, g)]) for p, d, m, g in zip(out["protocol"], out["dataset"],
                                                                            out["model"], out["group"])]
    return out.sort_values("_k").drop(columns="_k").reset_index(drop=True)


def _g3(x) -> str:
    """Three significant digits; thousands with separators."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _cost_grid(cost: pd.DataFrame, recs: list[dict]) -> Grid:
    columns = [Column(k, h) for k, h in zip(COST_FIELDS, ("s/epoch", "epochs to best", "epochs run", "train s",
                                                          "eval s", "peak MB", "R@20"))]
    cap = ("Cost per model and dataset, mean over seeds of the selected (best-validation) setting: wall-clock seconds "
           "per training epoch, epochs to the best validation (best_epoch + 1), epochs run (early stopping), "
           "training seconds (s/epoch × epochs run), seconds per test evaluation, peak resident memory of the worker "
           "(MB), test R@20. " + data_caption(recs))
    rows = cost.to_dict("records")
    return build_grid("Training and evaluation cost", cap, "tab:cost", ["protocol", "dataset", "Model"],
                      [([r["protocol"], r["dataset"], r["model"]], r) for r in rows], columns,
                      lambda r, k: fmt(r[k]) if k == "recall@20" else _g3(r[k]))


def section(records: list[dict], protocols, out: Path, written: list[Path], draw: bool) -> list[str]:
    """Write the cost table over the records behind the requested tables; return the index lines."""
    recs = []
    for jp in sorted({JOB_PROTOCOL[p] for p in protocols}):
        recs.extend(at_official_ratio(records, jp)[0])
    cost = cost_frame(recs)
    if cost.empty:
        return []
    write_grids([_cost_grid(cost, recs)], out / "cost", written)
    write_csv(cost, out / "cost.csv", written)
    lines = [links(out, "cost", ("md", "tex", "csv"))]
    if draw:
        from benchmarks.report import figures  # matplotlib only when figures are drawn
        for jp, part in cost.groupby("protocol", sort=False):
            if part["train_seconds"].notna().any() and part["recall@20"].notna().any():
                files = figures.cost_scatter(part, f"Test R@20 vs training time ({jp} protocol; "
                                                   f"{data_label(recs)})", out / f"cost_{slug(jp)}")
                written.extend(files)
                lines.append(figure_links(files))
    return lines
