"""Tables of what a run produced: markdown (tabulate), LaTeX (booktabs) and CSV.

Grid settings are reduced to the one with the best validation metric per grid group (never
by test). Each cell is the mean over seeds of that selection, with the sample standard
deviation (ddof=1) beside it; every table carries a caption naming the data it ran on, the
seeds and whether reference defects were fixed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

TABLE_METRICS = ("recall@20", "recall@50", "ndcg@20", "ndcg@50")
SHORT = {"recall": "R", "ndcg": "N", "precision": "P", "map": "MAP"}


def select_grid(records: list[dict]) -> list[dict]:
    """The best-validation setting of every grid group among the ``ok`` records."""
    best: dict[str, dict] = {}
    for rec in records:
        if rec.get("status") != "ok":
            continue
        metric = str(rec.get("config", {}).get("valid_metric", "recall@20")).lower()
        score = rec.get("valid", {}).get(metric, float("-inf"))
        cur = best.get(rec["grid_group"])
        if cur is None or score > cur[0]:
            best[rec["grid_group"]] = (score, rec)
    return [r for _, r in best.values()]


def summary_frame(records: list[dict], metrics=TABLE_METRICS) -> pd.DataFrame:
    """One row per (protocol, dataset, ratio, model, metric) with mean, std and seed count."""
    rows = []
    for rec in select_grid(records):
        for m in metrics:
            if m in rec.get("test", {}):
                rows.append({"protocol": rec["protocol"], "dataset": rec["dataset"], "ratio": rec["missing_ratio"],
                             "model": rec["model"], "group": rec["group"], "metric": m, "seed": rec["seed"],
                             "value": rec["test"][m], "source": rec.get("data_source", "?"),
                             "fixed": bool(rec.get("config", {}).get("fix_reference_defects"))})
    if not rows:
        return pd.DataFrame(columns=["protocol", "dataset", "ratio", "model", "group", "metric", "mean", "std", "n"])
    df = pd.DataFrame(rows)
    agg = df.groupby(["protocol", "dataset", "ratio", "model", "group", "metric"], sort=False)["value"]
    out = agg.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
                  n="count").reset_index()
    return out


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.4f}" if np.isnan(std) else f"{mean:.4f}±{std:.4f}"


def caption(records: list[dict], protocol: str) -> str:
    sel = [r for r in records if r.get("protocol") == protocol]
    sources = sorted({f"{r['dataset']} ({r.get('data_source', '?')})" for r in sel})
    seeds = sorted({r["seed"] for r in sel})
    fixed = sorted({bool(r.get("config", {}).get("fix_reference_defects")) for r in sel})
    fixed_txt = {(False,): "reference defects reproduced", (True,): "reference defects fixed"}.get(
        tuple(fixed), "mixed defect settings")
    synthetic = any(r.get("data_source") == "synthetic" for r in sel)
    warn = " SYNTHETIC REPLICA DATA: not comparable to the paper." if synthetic else ""
    return (f"Protocol {protocol}: test metrics at the best validation Recall@20, mean±std over seeds "
            f"{', '.join(map(str, seeds))}. Data: {', '.join(sources)}; {fixed_txt}.{warn}")


def write_tables(records: list[dict], out_dir: str | Path, protocols=None) -> list[Path]:
    """Write ``<protocol>.md``, ``.tex`` and ``.csv`` for each protocol; return the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_frame(records)
    written = []
    for protocol in protocols or sorted(summary["protocol"].unique()):
        part = summary[summary["protocol"] == protocol]
        if part.empty:
            continue
        part = part.copy()
        part["col"] = part.apply(lambda r: (f"{r['dataset']}" + (f" r={r['ratio']}" if protocol == "missing_ratio"
                                                                  else ""), r["metric"]), axis=1)
        part["cell"] = [_fmt(m, s) for m, s in zip(part["mean"], part["std"])]
        models = list(dict.fromkeys(part["model"]))
        cols = list(dict.fromkeys(part["col"]))
        cells = {(r.model, r.col): r.cell for r in part.itertuples()}
        headers = ["model"] + [f"{c[0]} {SHORT.get(c[1].split('@')[0], c[1])}@{c[1].split('@')[1]}" for c in cols]
        body = [[m] + [cells.get((m, c), "–") for c in cols] for m in models]
        cap = caption(records, protocol)
        md = f"**{cap}**\n\n" + tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"
        tex = ("\\begin{table}[t]\n\\centering\n\\caption{" + _tex_escape(cap) + "}\n"
               + tabulate(body, headers=headers, tablefmt="latex_booktabs", disable_numparse=True).replace("±", "$\\pm$") + "\\end{table}\n")
        for ext, text in (("md", md), ("tex", tex)):
            p = out_dir / f"{protocol}.{ext}"
            p.write_text(text)
            written.append(p)
        csv = out_dir / f"{protocol}.csv"
        part.drop(columns=["col", "cell"]).to_csv(csv, index=False)
        written.append(csv)
    cost = cost_table(records)
    if cost:
        p = out_dir / "cost.md"
        p.write_text(cost)
        written.append(p)
    index = out_dir / "index.md"
    index.write_text("# Results of the last run\n\n" + "\n".join(f"- [{p.name}]({p.name})" for p in written) + "\n")
    written.append(index)
    return written


def cost_table(records: list[dict]) -> str:
    rows = []
    for rec in select_grid(records):
        rows.append({"protocol": rec["protocol"], "dataset": rec["dataset"], "model": rec["model"],
                     "s/epoch": rec.get("train_seconds_per_epoch"), "best epoch": rec.get("best_epoch"),
                     "eval s": rec.get("eval_seconds"), "peak MB": rec.get("peak_memory_mb")})
    if not rows:
        return ""
    df = pd.DataFrame(rows).groupby(["protocol", "dataset", "model"], sort=False).mean(numeric_only=True).reset_index()
    return "**Cost: mean over seeds of seconds per training epoch, epoch of the best validation, seconds per " \
           "test evaluation and peak resident memory.**\n\n" + tabulate(df, headers="keys", tablefmt="github",
                                                                       showindex=False, floatfmt=".3g") + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"), ("±", "$\\pm$")):
        text = text.replace(a, b)
    return text
