"""Table 1 (``missing``) and Table 2 (``new_items``) in the paper's layout.

Models in row order, per dataset R@20, R@50, N@20, N@50, mean over seeds, best bold and second
underlined per column, a † on values below the non-personalised floor, and an ``Improv.`` row: the
proposed model over the strongest baseline with the significance of a two-sided paired t-test on
per-user vectors averaged over seeds. Beside it: ``<protocol>_std`` (mean ± std),
``<protocol>_improv.csv`` and, for datasets run on real data at the official ratio,
``<protocol>_vs_paper`` (ours, published, relative difference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report.captions import data_caption, ratio_caption
from benchmarks.report.grid import Cell, Column, Grid, build_grid, fmt, number, rank_styles
from benchmarks.report.output import links, write_csv, write_grids
from benchmarks.report.published import load_paper_table, relative_difference
from benchmarks.report.per_user import UserMismatchError, memo_store, paired_test
from benchmarks.report.presentation import (FLOOR_GROUP, TABLE_METRICS, is_baseline, model_order, proposed_model,
                                            short_metric, source_text)
from benchmarks.report.selection import JOB_PROTOCOL, at_official_ratio, dataset_kind, dataset_order, \
    official_ratio, same_ratio
from benchmarks.report.stats import finite, seed_aggregate
from benchmarks.run.store import ResultStore
from data_prep.errors import DataError

TITLES = {"missing": "Table 1 (missing modalities)", "new_items": "Table 2 (missing modalities + new items)"}


@dataclass
class MainTable:
    protocol: str
    datasets: list[str]
    metrics: tuple[str, ...]
    models: list[tuple[str, str]]  # (model, group) in row order
    stats: pd.DataFrame  # model, group, dataset, metric, mean, std, n, seeds
    ratios: dict[str, float]
    records: list[dict]
    improv: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per column: see ``improvement``
    notes: list[str] = field(default_factory=list)
    proposed: str | None = field(init=False)
    _cells: dict = field(init=False, repr=False)
    _styles: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.proposed = proposed_model(self.models)
        s = self.stats
        self._cells = {(m, d, k): (float(a), float(b), int(n)) for m, d, k, a, b, n in
                       zip(s["model"], s["dataset"], s["metric"], s["mean"], s["std"], s["n"])}
        self._styles = {(d, k): rank_styles(dict(zip(part["model"], part["mean"])))
                        for (d, k), part in s.groupby(["dataset", "metric"], sort=False)}

    def cell(self, model: str, dataset: str, metric: str) -> tuple[float, float, int]:
        """(mean, std, n seeds) of one cell; (nan, nan, 0) when it was not run."""
        return self._cells.get((model, dataset, metric), (float("nan"), float("nan"), 0))

    def styles(self, dataset: str, metric: str) -> dict:
        """model -> "best" / "second" / "" within one column."""
        return self._styles.get((dataset, metric), {})

    def source(self, dataset: str) -> str:
        src = {r.get("data_source", "?") for r in self.records if r["dataset"] == dataset}
        return src.pop() if len(src) == 1 else "mixed"


def main_table(records: list[dict], protocol: str, store: ResultStore | None = None,
               metrics=TABLE_METRICS) -> MainTable | None:
    """Table 1 (``missing``) or Table 2 (``new_items``) from the records; None when nothing ran."""
    recs, ratios = at_official_ratio(records, JOB_PROTOCOL[protocol])
    rows = [{"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"], "metric": m,
             "seed": r.get("seed"), "value": float(r["test"][m])}
            for r in recs for m in metrics if finite((r.get("test") or {}).get(m))]
    if not rows:
        return None
    stats = seed_aggregate(pd.DataFrame(rows), ["model", "group", "dataset", "metric"])
    table = MainTable(protocol, dataset_order(recs), tuple(metrics), model_order(zip(stats["model"], stats["group"])),
                      stats, ratios, recs)
    table.improv = improvement(table, store)
    return table


def improvement(table: MainTable, store: ResultStore | None) -> pd.DataFrame:
    """Per dataset and metric: the proposed model against the baseline with the highest mean
    (improv_pct, and t, p, mark of the paired test when the store has per-user vectors)."""
    rows = []
    notes: dict[str, str] = {}
    store = None if store is None else memo_store(store)
    for ds in table.datasets:
        for metric in table.metrics:
            s = table.stats[(table.stats["dataset"] == ds) & (table.stats["metric"] == metric)]
            prop = s[s["model"] == table.proposed]
            base = s[[is_baseline(g) for g in s["group"]]]
            if prop.empty or base.empty:
                continue
            best = base.loc[base["mean"].idxmax()]
            pm, bm = float(prop["mean"].iloc[0]), float(best["mean"])
            row = {"protocol": table.protocol, "dataset": ds, "metric": metric, "proposed": table.proposed,
                   "proposed_mean": pm, "best_baseline": best["model"], "baseline_mean": bm,
                   "improv_pct": 100.0 * (pm - bm) / bm if bm > 0 else float("nan"),
                   "t": float("nan"), "p": float("nan"), "mark": "", "n_users": 0, "note": ""}
            if store is None:
                row["note"] = "no results store: significance not computed"
                notes.setdefault("nostore", "Significance not computed: no results store with per-user vectors.")
            else:
                a = [r for r in table.records if r["model"] == table.proposed and r["dataset"] == ds]
                b = [r for r in table.records if r["model"] == best["model"] and r["dataset"] == ds]
                try:
                    row.update(paired_test(store, a, b, metric))
                except UserMismatchError as exc:
                    row["note"] = f"significance not computed: {exc}"
                    row["mark"] = "n/a"
                    notes.setdefault("mismatch " + str(exc), f"Significance not computed ({ds}): {exc}.")
                except (FileNotFoundError, KeyError, OSError, DataError) as exc:  # DataError: a foreign file
                    row["note"] = f"significance not computed: per-user vectors unavailable ({exc})"
                    notes.setdefault("unavailable", f"Significance not computed where per-user vectors are "
                                                    f"unavailable (e.g. {exc}).")
            rows.append(row)
    table.notes.extend(notes.values())
    return pd.DataFrame(rows)


def main_grid(t: MainTable, with_std: bool) -> Grid:
    """The table (bold/underline, †, Improv.), or with ``with_std`` the mean ± std table."""
    floor_models = [model for model, group in t.models if group == FLOOR_GROUP]
    floors = {(ds, m): max((t.cell(f, ds, m)[0] for f in floor_models if t.cell(f, ds, m)[2]), default=None)
              for ds in t.datasets for m in t.metrics}

    def cell(key, col):
        (model, group), (ds, m) = key, col
        mean, std, n = t.cell(model, ds, m)
        if n == 0:
            return None
        floor = floors[(ds, m)]
        below = group != FLOOR_GROUP and floor is not None and mean < floor
        return Cell(fmt(mean, std), below_floor=below) if with_std else number(mean, below_floor=below)

    grid = build_grid(TITLES.get(t.protocol, t.protocol) + (", mean ± std over seeds" if with_std else ""),
                      _main_caption(t, with_std), f"tab:{t.protocol}{'-std' if with_std else ''}", ["Model"],
                      [([model], (model, group)) for model, group in t.models],
                      [Column((ds, m), short_metric(m), ds) for ds in t.datasets for m in t.metrics], cell,
                      rank=None if with_std else "column", groups=[group for _, group in t.models])
    if not t.improv.empty and not with_std:
        imp = {(r.dataset, r.metric): r for r in t.improv.itertuples()}
        cells = [Cell("Improv.")]
        for ds in t.datasets:
            for m in t.metrics:
                r = imp.get((ds, m))
                ok = r is not None and np.isfinite(r.improv_pct)
                cells.append(Cell(f"{r.improv_pct:+.2f}%", mark=r.mark) if ok else Cell("–"))
        grid.add_row(cells, rule=True)
    return grid


def _main_caption(t: MainTable, with_std: bool) -> str:
    what = ("Test metrics at the best validation epoch, mean ± sample std (ddof=1) over seeds." if with_std else
            "Test metrics at the best validation epoch, mean over seeds; best in bold, second underlined per column.")
    parts = [what, ratio_caption(t.ratios, t.records), data_caption(t.records)]
    floor_models = [m for m, g in t.models if g == FLOOR_GROUP]
    if floor_models:
        parts.append(f"† below {', '.join(floor_models)} (most popular items in training, the non-personalised "
                     f"floor; not a baseline of Improv.).")
    if not with_std and not t.improv.empty:
        parts.append(f"Improv.: ({t.proposed} − strongest baseline) / strongest baseline, per column; significance of "
                     f"a two-sided paired t-test on per-user vectors averaged over seeds, {t.proposed} vs the "
                     f"baseline with the highest seed-mean (** p<0.01, * p<0.05, n.s. otherwise; "
                     f"per-column baselines and p-values in {t.protocol}_improv.csv). "
                     + _baseline_summary(t.improv))
        parts.extend(t.notes)
    elif not with_std:
        parts.append("No Improv. row: " + ("no model of group proposed was run." if t.proposed is None
                                           else "no baseline was run."))
    return " ".join(p for p in parts if p)


def _baseline_summary(improv: pd.DataFrame) -> str:
    out = []
    for ds, part in improv.groupby("dataset", sort=False):
        names = list(dict.fromkeys(part["best_baseline"]))
        if len(names) == 1:
            out.append(f"{ds} {names[0]}")
        else:
            per = {b: "/".join(short_metric(m) for m in part[part["best_baseline"] == b]["metric"]) for b in names}
            out.append(f"{ds} " + ", ".join(f"{b} ({cols})" for b, cols in per.items()))
    return "Strongest baselines: " + "; ".join(out) + "."


def main_csv(t: MainTable) -> pd.DataFrame:
    """The table's data: one row per model, dataset and metric, with its bold/underline mark."""
    df = t.stats.copy()
    df["rank_mark"] = [t.styles(r.dataset, r.metric).get(r.model, "") for r in df.itertuples()]
    kinds = {r["dataset"]: dataset_kind(r) for r in t.records}
    df.insert(0, "protocol", t.protocol)
    df.insert(4, "dataset_kind", df["dataset"].map(kinds))
    df.insert(5, "data_source", df["dataset"].map(t.source))
    df.insert(6, "missing_ratio", df["dataset"].map(t.ratios))
    return df


# ----------------------------------------------------------------------------- paper comparison
def paper_comparison(t: MainTable) -> pd.DataFrame:
    """Ours vs published per (model, dataset, metric) for datasets that ran on real data at the
    official ratio."""
    paper = load_paper_table(t.protocol)
    kinds = {r["dataset"]: dataset_kind(r) for r in t.records}
    real = [ds for ds in t.datasets if t.source(ds) == "real"
            and same_ratio(t.ratios[ds], official_ratio(kinds.get(ds, ds)))]
    s = t.stats[t.stats["dataset"].isin(real)].copy()
    if s.empty:
        return pd.DataFrame()
    s["dataset_kind"] = s["dataset"].map(kinds)
    m = s.merge(paper, on=["model", "dataset_kind", "metric"], how="inner")
    if m.empty:
        return m
    m["rel_diff_pct"] = [relative_difference(o, p) for o, p in zip(m["mean"], m["paper"])]
    m = m.rename(columns={"mean": "ours", "std": "ours_std", "n": "n_seeds"})
    return m[["model", "group", "dataset", "dataset_kind", "metric", "ours", "ours_std", "n_seeds", "paper",
              "rel_diff_pct"]]


def _paper_grid(t: MainTable, cmp: pd.DataFrame) -> Grid:
    metrics = [m for m in t.metrics if m in set(cmp["metric"])]
    found = {(r.model, r.dataset, r.metric): r for r in cmp.itertuples()}
    pairs = model_order(zip(cmp["model"], cmp["group"]))
    rows = [([model, ds], (model, ds)) for ds in t.datasets if ds in set(cmp["dataset"]) for model, _ in pairs
            if any((model, ds, m) in found for m in metrics)]
    columns = [Column((m, part), part, short_metric(m)) for m in metrics for part in ("ours", "paper", "Δ%")]

    def cell(key, col):
        r = found.get(key + (col[0],))
        if r is None:
            return None
        return {"ours": fmt(r.ours), "paper": fmt(r.paper), "Δ%": f"{r.rel_diff_pct:+.1f}%"}[col[1]]

    caption = ("Ours (mean over seeds) against the published numbers for the cells this run covers on real data; "
               "Δ% = 100·(ours − paper)/paper. "
               + data_caption([r for r in t.records if t.source(r["dataset"]) == "real"]))
    return build_grid(f"{TITLES.get(t.protocol, t.protocol)}: ours vs the paper", caption, f"tab:{t.protocol}-paper",
                      ["Model", "dataset"], rows, columns, cell)


# ----------------------------------------------------------------------------- the section
def section(records: list[dict], protocol: str, out: Path, store: ResultStore | None, written: list[Path],
            notes: list[str]) -> list[str]:
    """Write Table 1 or 2 with its companions; return the index lines (and add to ``notes``)."""
    t = main_table(records, protocol, store)
    if t is None:
        return []
    write_grids([main_grid(t, with_std=False)], out / protocol, written)
    write_csv(main_csv(t), out / f"{protocol}.csv", written)
    write_grids([main_grid(t, with_std=True)], out / f"{protocol}_std", written)
    write_csv(t.stats[["model", "group", "dataset", "metric", "mean", "std", "n", "seeds"]],
              out / f"{protocol}_std.csv", written)
    lines = [links(out, protocol, ("md", "tex", "csv"), "table (mean over seeds, bold/underline, Improv.)"),
             links(out, f"{protocol}_std", ("md", "tex", "csv"), "mean ± std over seeds")]
    if not t.improv.empty:
        write_csv(t.improv, out / f"{protocol}_improv.csv", written)
        lines.append(links(out, f"{protocol}_improv", ("csv",), "improvement and significance per column"))
    for n in t.notes:
        notes.append(f"{protocol}: {n}")
    cmp = paper_comparison(t)
    not_real = {ds: t.source(ds) for ds in t.datasets if t.source(ds) != "real"}
    if not cmp.empty:
        write_grids([_paper_grid(t, cmp)], out / f"{protocol}_vs_paper", written)
        write_csv(cmp, out / f"{protocol}_vs_paper.csv", written)
        lines.append(links(out, f"{protocol}_vs_paper", ("md", "tex", "csv"), "ours vs the paper"))
    elif not not_real:
        lines.append("- No paper comparison: no model/dataset/metric of this run is among the published cells.")
    if not_real:
        why = "; ".join(f"{ds} ran on {source_text(s)}" for ds, s in not_real.items())
        lines.append(f"- No paper comparison for {', '.join(not_real)}: {why}. The published numbers were measured on "
                     f"the real datasets; reference data (surrogate features) and synthetic replicas give numbers "
                     f"that are not comparable to them.")
    return lines + [""]
