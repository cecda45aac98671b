"""Tables of statistics beside Table 1 / Table 2 (``missing``, ``new_items``).

* ``<protocol>_significance.*``: the proposed model against *every* baseline, per dataset and
  metric: Improv. (%), the two-sided paired t-test on per-user vectors averaged over seeds, its
  p-value Holm-adjusted over all baselines of that column (the family the "Improv." row
  implicitly searches), and the paired effect size d_z. Marks ** / * / n.s. use the adjusted
  p-value.
* ``<protocol>_ci.*``: every cell's mean with a 95% bootstrap interval over users (the
  seed-averaged per-user vector resampled 1000 times; one set of draws per dataset).
* ``<protocol>_selection.*``: what picking by test would report. Ours: the grid setting with
  the best validation metric, its test metric at its best validation epoch. Official rule: the
  grid setting with the best *test* metric. Epoch by test: the best test metric over every
  evaluated epoch of every setting (the curve's 4-decimal values). Per seed, then the mean.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import stats
from benchmarks.report.axes import primary_records
from benchmarks.report.captions import data_caption, ratio_caption
from benchmarks.report.grid import Cell, Column, Grid, build_grid, fmt
from benchmarks.report.output import links, slug, write_csv, write_grids
from benchmarks.report.per_user import UserMismatchError, memo_store, per_user_mean
from benchmarks.report.presentation import (TABLE_METRICS, is_baseline, model_order, proposed_model,
                                            short_metric)
from benchmarks.report.selection import JOB_PROTOCOL, at_official_ratio, dataset_order, same_ratio, unique_jobs
from benchmarks.report.stats import finite, significance_mark

SELECTION_METRICS = ("recall@20", "ndcg@20")  # the metrics the training curve records per epoch


def section(records: list[dict], protocol: str, out: Path, store, written: list[Path]) -> list[str]:
    """Write the significance, interval and selection tables of one protocol; return the index lines."""
    recs, ratios = at_official_ratio(records, JOB_PROTOCOL[protocol])
    lines = []
    if store is not None and recs:
        store = memo_store(store)
        sig, notes = significance_frame(recs, store)
        if not sig.empty:
            write_grids(_significance_grids(sig, recs, ratios, protocol), out / f"{protocol}_significance", written)
            write_csv(sig, out / f"{protocol}_significance.csv", written)
            proposed = proposed_model((r["model"], r.get("group", "?")) for r in recs)
            lines.append(links(out, f"{protocol}_significance", ("md", "tex", "csv"),
                               f"{proposed} vs every baseline (Holm-adjusted p, effect size)"))
        ci = ci_frame(recs, store)
        if not ci.empty:
            write_grids(_ci_grids(ci, recs, ratios, protocol), out / f"{protocol}_ci", written)
            write_csv(ci, out / f"{protocol}_ci.csv", written)
            lines.append(links(out, f"{protocol}_ci", ("md", "tex", "csv"), "95% bootstrap intervals of every cell"))
        lines.extend(f"- {n}" for n in notes)
    sel = selection_frame(records, JOB_PROTOCOL[protocol], ratios)
    if not sel.empty:
        write_grids([_selection_grid(sel, recs, protocol)], out / f"{protocol}_selection", written)
        write_csv(sel, out / f"{protocol}_selection.csv", written)
        lines.append(links(out, f"{protocol}_selection", ("md", "tex", "csv"),
                           "selection optimism: picking by test vs by validation"))
    return lines


# ----------------------------------------------------------------------------- significance
def significance_frame(recs: list[dict], store, metrics=TABLE_METRICS) -> tuple[pd.DataFrame, list[str]]:
    """Per dataset, metric and baseline: the proposed model's paired test, Holm-adjusted per column,
    and its effect size; notes on what could not be compared."""
    rows, notes = [], []
    for ds in dataset_order(recs):
        part = [r for r in recs if r["dataset"] == ds]
        pairs = model_order((r["model"], r.get("group", "?")) for r in part)
        proposed = proposed_model(pairs)
        prop = [r for r in part if r["model"] == proposed]
        models = [(m, g) for m, g in pairs if is_baseline(g)]
        if not prop or not models:
            continue
        for metric in metrics:
            block = []
            try:
                ua, a = per_user_mean(store, prop, metric)
            except (FileNotFoundError, KeyError, OSError, UserMismatchError) as exc:
                notes.append(f"{ds} {short_metric(metric)}: significance not computed ({exc})")
                continue
            for model, group in models:
                b_recs = [r for r in part if r["model"] == model]
                try:
                    ub, b = per_user_mean(store, b_recs, metric)
                except (FileNotFoundError, KeyError, OSError, UserMismatchError) as exc:
                    notes.append(f"{ds} {model} {short_metric(metric)}: not compared ({exc})")
                    continue
                if not np.array_equal(ua, ub):
                    notes.append(f"{ds} {model}: evaluated on other users than {proposed}; not compared")
                    continue
                t, p = stats.paired_t(a, b)
                bm = float(b.mean())
                block.append({"dataset": ds, "metric": metric, "baseline": model, "group": group,
                              "proposed_mean": float(a.mean()), "baseline_mean": bm,
                              "improv_pct": 100.0 * (float(a.mean()) - bm) / bm if bm > 0 else float("nan"),
                              "t": t, "p": p, "d_z": stats.cohens_dz(a, b), "n_users": int(len(a))})
            adjusted = stats.holm([r["p"] for r in block])
            for r, ph in zip(block, adjusted):
                r.update(p_holm=float(ph), n_compared=len(block), mark=significance_mark(ph))
            rows.extend(block)
    return pd.DataFrame(rows), list(dict.fromkeys(notes))


def _p(p: float) -> str:
    if not finite(p):
        return "–"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def _significance_grids(sig: pd.DataFrame, recs, ratios, protocol) -> list[Grid]:
    grids = []
    for ds in [d for d in dataset_order(recs) if d in set(sig["dataset"])]:
        part = sig[sig["dataset"] == ds]
        found = {(r.baseline, r.metric): r for r in part.itertuples()}

        def cell(model, col):
            r = found.get((model, col[0]))
            if r is None:
                return None
            if col[1] == "improv":
                return Cell(f"{r.improv_pct:+.2f}%" if finite(r.improv_pct) else "–", mark=r.mark)
            if col[1] == "p":
                return _p(r.p_holm)
            return f"{r.d_z:+.3f}" if finite(r.d_z) else None

        ds_recs = [r for r in recs if r["dataset"] == ds]
        proposed = proposed_model((r["model"], r.get("group", "?")) for r in ds_recs)
        n = int(part["n_compared"].max())
        cap = (f"{ds}: {proposed} against every baseline. Improv. = ({proposed} − baseline)/baseline of "
               f"the seed-averaged per-user means; two-sided paired t-test on per-user vectors averaged over seeds, "
               f"p-values Holm-adjusted over the {n} baselines of each column (family-wise error; ** p<0.01, "
               f"* p<0.05, n.s. otherwise, after adjustment); d_z = mean / std of the per-user differences "
               f"(|d_z| 0.2 small, 0.5 medium). Users: {int(part['n_users'].max())}. "
               + ratio_caption({ds: ratios[ds]}, ds_recs) + " " + data_caption(ds_recs))
        grids.append(build_grid(
            f"Significance against every baseline, {ds}", cap, f"tab:{protocol}-significance-{slug(ds)}", ["Baseline"],
            [([model], model) for model, _ in model_order(zip(part["baseline"], part["group"]))],
            [Column((m, k), h, short_metric(m)) for m in TABLE_METRICS if m in set(part["metric"])
             for k, h in (("improv", "Improv."), ("p", "p (Holm)"), ("d_z", "d_z"))], cell))
    return grids


# ----------------------------------------------------------------------------- bootstrap intervals
def ci_frame(recs: list[dict], store, metrics=TABLE_METRICS, n_boot: int = stats.N_BOOTSTRAP) -> pd.DataFrame:
    """Every model's mean per dataset and metric with a percentile bootstrap interval over users."""
    rows = []
    for ds in dataset_order(recs):
        part = [r for r in recs if r["dataset"] == ds]
        cols, users = [], {}
        for model, group in model_order((r["model"], r.get("group", "?")) for r in part):
            m_recs = [r for r in part if r["model"] == model]
            for metric in metrics:
                try:
                    u, v = per_user_mean(store, m_recs, metric)
                except (FileNotFoundError, KeyError, OSError, UserMismatchError):
                    continue
                cols.append((model, group, metric, v))
                users[(model, metric)] = u
        # models evaluated on the same users share one set of resamples
        by_users: dict[bytes, list] = {}
        for c in cols:
            by_users.setdefault(users[(c[0], c[2])].tobytes(), []).append(c)
        for same in by_users.values():
            ci = stats.bootstrap_ci(np.stack([c[3] for c in same], axis=1), n_boot=n_boot)
            for (model, group, metric, v), (lo, hi) in zip(same, ci):
                rows.append({"dataset": ds, "model": model, "group": group, "metric": metric, "mean": float(v.mean()),
                             "ci_low": float(lo), "ci_high": float(hi), "n_users": int(len(v)), "n_boot": n_boot})
    return pd.DataFrame(rows)


def _ci_grids(ci: pd.DataFrame, recs, ratios, protocol) -> list[Grid]:
    grids = []
    for ds in [d for d in dataset_order(recs) if d in set(ci["dataset"])]:
        part = ci[ci["dataset"] == ds]
        found = {(r.model, r.metric): r for r in part.itertuples()}

        def cell(model, metric):
            r = found.get((model, metric))
            return None if r is None else f"{fmt(r.mean)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]"

        ds_recs = [r for r in recs if r["dataset"] == ds]
        cap = (f"{ds}: test metrics (mean over users of the per-user vectors averaged over seeds) with 95% percentile "
               f"bootstrap intervals over users ({int(part['n_boot'].max())} resamples of "
               f"{int(part['n_users'].max())} users, the same draws for every model). The interval covers the "
               f"sampling of users, not of seeds. " + ratio_caption({ds: ratios[ds]}, ds_recs) + " "
               + data_caption(ds_recs))
        grids.append(build_grid(
            f"95% bootstrap intervals, {ds}", cap, f"tab:{protocol}-ci-{slug(ds)}", ["Model"],
            [([model], model) for model, _ in model_order(zip(part["model"], part["group"]))],
            [Column(m, short_metric(m)) for m in TABLE_METRICS if m in set(part["metric"])], cell))
    return grids


# ----------------------------------------------------------------------------- selection optimism
def selection_frame(records: list[dict], job_protocol: str, ratios: dict, metrics=SELECTION_METRICS) -> pd.DataFrame:
    """Per (dataset, model, metric): ours vs picking the grid setting by test vs picking the epoch by test."""
    recs = [r for r in unique_jobs(records) if r.get("protocol") == job_protocol and r.get("status") == "ok"
            and r["dataset"] in ratios and same_ratio(r.get("missing_ratio", 0.0), ratios[r["dataset"]])]
    recs, _ = primary_records(recs)
    groups: dict[str, list[dict]] = {}
    for r in recs:
        groups.setdefault(r["grid_group"], []).append(r)
    per_seed = []
    for settings in groups.values():
        first = settings[0]
        vmetric = str(first.get("config", {}).get("valid_metric", "recall@20")).lower()
        ours = max(settings, key=lambda r: r.get("valid", {}).get(vmetric, float("-inf")))
        for m in metrics:
            if not finite((ours.get("test") or {}).get(m)):
                continue
            by_test = max(float(r["test"][m]) for r in settings if finite((r.get("test") or {}).get(m)))
            curve = [float(p[f"test_{m}"]) for r in settings for p in r.get("curve") or () if finite(p.get(f"test_{m}"))]
            per_seed.append({"dataset": first["dataset"], "model": first["model"], "group": first.get("group", "?"),
                             "metric": m, "seed": first.get("seed"), "ours": float(ours["test"][m]),
                             "grid_by_test": by_test, "epoch_by_test": max(curve + [by_test]),
                             "grid_size": len(settings)})
    if not per_seed:
        return pd.DataFrame()
    df = pd.DataFrame(per_seed)
    out = df.groupby(["dataset", "model", "group", "metric"], sort=False).agg(
        ours=("ours", "mean"), grid_by_test=("grid_by_test", "mean"), epoch_by_test=("epoch_by_test", "mean"),
        grid_size=("grid_size", "max"), n_seeds=("seed", "count")).reset_index()
    out["grid_optimism_pct"] = 100.0 * (out["grid_by_test"] - out["ours"]) / out["ours"].where(out["ours"] > 0)
    out["epoch_optimism_pct"] = 100.0 * (out["epoch_by_test"] - out["ours"]) / out["ours"].where(out["ours"] > 0)
    return out


def _selection_grid(sel: pd.DataFrame, recs, protocol) -> Grid:
    found = {(r.dataset, r.model, r.metric): r for r in sel.itertuples()}
    rows = []
    for ds in [d for d in dataset_order(recs) if d in set(sel["dataset"])]:
        part = sel[sel["dataset"] == ds]
        for model, _ in model_order(zip(part["model"], part["group"])):
            size = int(part[part["model"] == model]["grid_size"].max())
            rows.append(([ds, model, str(size)], (ds, model)))

    def cell(key, col):
        r = found.get(key + (col[0],))
        if r is None:
            return None
        if col[1] == "ours":
            return fmt(r.ours)
        if col[1] == "grid":
            return f"{fmt(r.grid_by_test)} ({r.grid_optimism_pct:+.1f}%)"
        return f"{fmt(r.epoch_by_test)} ({r.epoch_optimism_pct:+.1f}%)"

    cap = ("Selection optimism. ours (valid): the grid setting with the best validation metric, test metric at its best "
           "validation epoch (what every table reports). setting by test: the official rule, the grid setting with "
           "the best test metric (a leak). epoch by test: the best test metric over every evaluated epoch of every "
           "setting (training curve, 4 decimals). In parentheses: the optimism over ours. Per seed, then the mean "
           "over seeds; a grid of size 1 has no setting to pick. " + data_caption(recs))
    return build_grid("Selection optimism: picking by test vs by validation", cap, f"tab:{protocol}-selection",
                      ["dataset", "Model", "grid size"], rows,
                      [Column((m, k), h, short_metric(m)) for m in SELECTION_METRICS if m in set(sel["metric"])
                       for k, h in (("ours", "ours (valid)"), ("grid", "setting by test"), ("epoch", "epoch by test"))],
                      cell)
