"""The cross-modal retrieval table (``retrieval``): Hit@K of the features a model generated for
items missing one or two modalities, beside a nearest-neighbour baseline, and the comparison with
the paper's Baby numbers where real Baby ran."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from benchmarks.report.captions import data_caption
from benchmarks.report.grid import Column, Grid, build_grid, fmt
from benchmarks.report.output import links, slug, write_csv, write_grids
from benchmarks.report.published import load_paper_table, relative_difference
from benchmarks.report.presentation import is_proposed, model_order, source_text
from benchmarks.report.selection import at_official_ratio, dataset_kind, dataset_order, official_ratio, same_ratio
from benchmarks.report.stats import finite, seed_aggregate

# extra["retrieval"] keys: <missing1|missing2>_<method>_hit@<K>[_<direction>]
RETRIEVAL_KEY = re.compile(r"^(missing\d+)_([A-Za-z0-9]+)_hit@(\d+)(?:_([a-z]+2[a-z]+))?$")


def retrieval_stats(records: list[dict]) -> tuple[pd.DataFrame, dict, list[dict]]:
    """Cross-modal Hit@K mean/std over seeds per dataset and model; columns are
    ``<missing1|missing2>_<method>``. Returns (stats, queries per dataset, the records used)."""
    recs, _ = at_official_ratio(records, "missing")
    recs = [r for r in recs if isinstance((r.get("extra") or {}).get("retrieval"), dict)]
    rows, queries = [], {}
    for r in recs:
        for key, v in r["extra"]["retrieval"].items():
            mt = RETRIEVAL_KEY.match(key)
            if mt and finite(v):
                grp, method, k, direction = mt.groups()
                rows.append({"dataset": r["dataset"], "model": r["model"], "group": r.get("group", "?"),
                             "column": f"{grp}_{method.lower()}",
                             "metric": f"hit@{k}" + (f" ({direction})" if direction else ""),
                             "k": int(k), "direction": direction or "", "seed": r.get("seed"), "value": float(v)})
            elif key.startswith("n_queries_") and finite(v):
                queries.setdefault(r["dataset"], {}).setdefault(key[len("n_queries_"):], set()).add(int(v))
    stats = seed_aggregate(pd.DataFrame(rows), ["dataset", "model", "group", "column", "metric", "k", "direction"])
    return stats, queries, recs


def column_order(cols) -> list[str]:
    """Per query group: the nearest-neighbour baseline, the model's generator, then others."""
    def key(c):
        grp, _, method = c.partition("_")
        return (grp, 0 if method == "nn" else 1 if method == "dgmrec" else 2, method)
    return sorted(set(cols), key=key)


def _metric_order(metric: str):
    """hit@K without a direction first, then per direction; by K."""
    return ("(" in metric, metric.split(" (")[1] if "(" in metric else "", int(metric.split("@")[1].split(" ")[0]))


def _retrieval_grids(stats: pd.DataFrame, queries: dict, recs: list[dict]) -> list[Grid]:
    grids = []
    for ds in dataset_order(recs):
        for model, group in model_order(zip(stats["model"], stats["group"])):
            part = stats[(stats["dataset"] == ds) & (stats["model"] == model)]
            if part.empty:
                continue
            found = {(r.column, r.metric): r.mean for r in part.itertuples()}
            ds_recs = [r for r in recs if r["dataset"] == ds and r["model"] == model]
            q = queries.get(ds, {})
            q_txt = ", ".join(f"{k} {'/'.join(map(str, sorted(v)))}" for k, v in sorted(q.items()))
            cap = (f"{ds}, {model}: cross-modal retrieval of generated features. Queries: items missing one "
                   f"(missing1) or two (missing2) modalities; the generated feature is ranked by cosine against the "
                   f"true features of all items; Hit@K = true feature in the top K; nn = nearest-neighbour baseline "
                   f"(true feature of the most similar fully observed item in the observed modalities; none for "
                   f"items missing every observed modality). Mean over seeds."
                   + (f" Queries per group and modality: {q_txt}." if q_txt else "") + " " + data_caption(ds_recs))
            grids.append(build_grid(
                f"Cross-modal retrieval, {ds}" + ("" if is_proposed(group) else f" ({model})"), cap,
                f"tab:retrieval-{slug(ds)}", ["metric"],
                [([m], m) for m in sorted(set(part["metric"]), key=_metric_order)],
                [Column(c, c) for c in column_order(part["column"])],
                lambda metric, col: fmt(found[(col, metric)]) if (col, metric) in found else None))
    return grids


def retrieval_paper_comparison(stats: pd.DataFrame, recs: list[dict]) -> pd.DataFrame:
    """The proposed model's Hit@K on real Baby at the official ratio against the published numbers."""
    paper = load_paper_table("retrieval")
    real = {r["dataset"] for r in recs if r.get("data_source") == "real" and dataset_kind(r) == "baby"
            and is_proposed(r.get("group")) and same_ratio(r.get("missing_ratio", 0.0), official_ratio("baby"))}
    s = stats[stats["dataset"].isin(real) & stats["group"].map(is_proposed) & (stats["direction"] == "")]
    if s.empty:
        return pd.DataFrame()
    m = s.merge(paper, on=["column", "metric"], how="inner")
    m["rel_diff_pct"] = [relative_difference(o, p) for o, p in zip(m["mean"], m["paper"])]
    return m.rename(columns={"mean": "ours", "std": "ours_std", "n": "n_seeds"})[
        ["dataset", "model", "column", "metric", "ours", "ours_std", "n_seeds", "paper", "rel_diff_pct"]]


def _paper_grid(cmp: pd.DataFrame, recs: list[dict]) -> Grid:
    found = {(r.dataset, r.metric, r.column): r for r in cmp.itertuples()}
    rows = [([ds, m], (ds, m)) for ds in dict.fromkeys(cmp["dataset"])
            for m in sorted(set(cmp["metric"]), key=lambda m: int(m.split("@")[1]))]
    columns = [Column((c, part), part, c) for c in column_order(cmp["column"]) for part in ("ours", "paper", "Δ%")]

    def cell(key, col):
        r = found.get(key + (col[0],))
        if r is None:
            return None
        return {"ours": fmt(r.ours), "paper": fmt(r.paper), "Δ%": f"{r.rel_diff_pct:+.1f}%"}[col[1]]

    used = [r for r in recs if r["dataset"] in set(cmp["dataset"]) and is_proposed(r.get("group"))]
    return build_grid("Cross-modal retrieval: ours vs the paper (Baby)",
                      "Ours (mean over seeds) against the published Hit@K; Δ% = 100·(ours − paper)/paper. "
                      + data_caption(used), "tab:retrieval-paper", ["dataset", "metric"], rows, columns, cell)


def section(records: list[dict], out: Path, written: list[Path]) -> list[str]:
    """Write the retrieval tables (and the paper comparison); return the index lines."""
    stats, queries, recs = retrieval_stats(records)
    if stats.empty:
        return ["No retrieval results: no selected `missing` record carries `extra.retrieval` "
                "(it needs a model with generated features, such as DGMRec).", ""]
    write_grids(_retrieval_grids(stats, queries, recs), out / "retrieval", written)
    write_csv(stats, out / "retrieval.csv", written)
    lines = [links(out, "retrieval", ("md", "tex", "csv"), "tables")]
    cmp = retrieval_paper_comparison(stats, recs)
    if not cmp.empty:
        write_grids([_paper_grid(cmp, recs)], out / "retrieval_vs_paper", written)
        write_csv(cmp, out / "retrieval_vs_paper.csv", written)
        lines.append(links(out, "retrieval_vs_paper", ("md", "tex", "csv"), "ours vs the paper"))
    compared = set(cmp["dataset"]) if not cmp.empty else set()
    src = {r["dataset"]: (dataset_kind(r), r.get("data_source")) for r in recs if r["dataset"] not in compared}
    if src:
        why = "; ".join(f"{ds} is {k} on {source_text(s)}" for ds, (k, s) in src.items())
        lines.append(f"- No paper comparison for {', '.join(src)}: the paper reports retrieval for the real Baby "
                     f"dataset only ({why}).")
    return lines + [""]
