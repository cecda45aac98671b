"""Per-group results and exposure: who pays for missing modalities.

Every job's test pass also scores item groups (``test_group_<name>`` in ``extra``): items with
every modality vs items missing one or more, new vs warm items (new-item protocol), the 20%
most vs least trained items; each user's ground truth is restricted to the group's items and
the ranking is unchanged. ``exposure`` holds, per group, the share of the top-20 slots of all
test users that go to the group's items and the group's share of the catalogue; their ratio is
1 when the group is recommended in proportion to its size.

Writes ``groups_<protocol>.*`` (R@20 and N@20 per group), ``exposure_<protocol>.*`` and a
figure per dataset ``groups_<protocol>_<dataset>.png/.pdf``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report.axes import axes_short
from benchmarks.report.captions import data_caption, ratio_caption
from benchmarks.report.grid import Column, Grid, build_grid, number
from benchmarks.report.output import figure_links, links, slug, write_csv, write_grids
from benchmarks.report.presentation import LEVEL_METRICS, model_order, short_metric
from benchmarks.report.selection import JOB_PROTOCOL, at_official_ratio, dataset_order
from benchmarks.report.stats import finite, seed_aggregate

GROUP_KEY = re.compile(r"^test_group_([a-z]+)$")
ITEM_GROUPS = ("complete", "missing", "warm", "new", "popular", "unpopular")
ITEM_GROUP_LABELS = {"complete": "all modalities", "missing": "missing ≥1", "warm": "warm", "new": "new",
                     "popular": "top 20% popular", "unpopular": "bottom 20%"}
EXPOSURE_GROUPS = ("missing", "new", "unpopular")


def section(records: list[dict], protocols, out: Path, written: list[Path], draw: bool) -> list[str]:
    """Write the per-group and exposure tables (and figures) of each job protocol; return the index lines."""
    lines = []
    for jp in dict.fromkeys(JOB_PROTOCOL[p] for p in protocols):
        stats, counts, exposure, recs, ratios = group_stats(records, jp)
        if stats.empty:
            continue
        datasets = [d for d in dataset_order(recs) if d in set(stats["dataset"])]
        write_grids([_group_grid(stats, counts, ds, recs, ratios) for ds in datasets], out / f"groups_{jp}", written)
        csv = stats.copy()
        csv["users"] = [counts.get((d, g), (None, None))[0] for d, g in zip(csv["dataset"], csv["item_group"])]
        csv["interactions"] = [counts.get((d, g), (None, None))[1] for d, g in zip(csv["dataset"], csv["item_group"])]
        write_csv(csv, out / f"groups_{jp}.csv", written)
        lines.append(links(out, f"groups_{jp}", ("md", "tex", "csv"), f"`{jp}`: test metrics per item group"))
        if not exposure.empty:
            write_grids([_exposure_grid(exposure, ds, recs, ratios) for ds in datasets
                         if ds in set(exposure["dataset"])], out / f"exposure_{jp}", written)
            write_csv(exposure, out / f"exposure_{jp}.csv", written)
            lines.append(links(out, f"exposure_{jp}", ("md", "tex", "csv"),
                               f"`{jp}`: exposure (share of top-20 slots vs share of the catalogue)"))
        if draw:
            for ds in datasets:
                files = group_figure(stats[stats["dataset"] == ds], exposure[exposure["dataset"] == ds]
                                     if not exposure.empty else exposure,
                                     f"{ds} ({jp}): who pays for missing modalities\n(ratio {ratios[ds]:g}, "
                                     f"{axes_short([r for r in recs if r['dataset'] == ds])}, mean over seeds)",
                                     out / f"groups_{slug(jp)}_{slug(ds)}")
                written.extend(files)
                lines.append(figure_links(files))
    return lines + ([""] if lines else [])


def group_stats(records: list[dict], job_protocol: str, metrics=LEVEL_METRICS):
    """(metric stats per model/dataset/group, counts (dataset, group) -> (users, interactions),
    exposure stats, the records used, the ratios)."""
    recs, ratios = at_official_ratio(records, job_protocol)
    recs = [r for r in recs if any(GROUP_KEY.match(k) for k in (r.get("extra") or {}))]
    rows, exp_rows, counts = [], [], {}
    for r in recs:
        extra = r.get("extra") or {}
        for key, vals in extra.items():
            mt = GROUP_KEY.match(key)
            if not mt or not isinstance(vals, dict):
                continue
            g = mt.group(1)
            for m in metrics:
                if finite(vals.get(m)):
                    rows.append({"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"],
                                 "item_group": g, "metric": m, "seed": r.get("seed"), "value": float(vals[m])})
            c = (r.get("extra_counts") or {}).get(key)
            if c is not None:
                counts.setdefault((r["dataset"], g), set()).add(tuple(int(x) for x in c))
        for g, e in (extra.get("exposure") or {}).items():
            share = next((v for k, v in e.items() if k.startswith("top")), None)
            cat = e.get("catalogue_share")
            if finite(share) and finite(cat) and cat > 0:
                for metric, value in (("top20_share", float(share)), ("exposure_ratio", float(share) / float(cat)),
                                      ("catalogue_share", float(cat))):
                    exp_rows.append({"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"],
                                     "item_group": g, "metric": metric, "seed": r.get("seed"), "value": value})
    keys = ["model", "group", "dataset", "item_group", "metric"]
    stats = seed_aggregate(pd.DataFrame(rows), keys)
    exposure = seed_aggregate(pd.DataFrame(exp_rows), keys)
    flat = {k: (next(iter(v)) if len(v) == 1 else (None, None)) for k, v in counts.items()}
    return stats, flat, exposure, recs, ratios


def _group_grid(stats, counts, ds, recs, ratios, metrics=LEVEL_METRICS) -> Grid:
    part = stats[stats["dataset"] == ds]
    groups = [g for g in ITEM_GROUPS if g in set(part["item_group"])]
    found = {(r.model, r.item_group, r.metric): r.mean for r in part.itertuples()}
    cnt = ", ".join(f"{ITEM_GROUP_LABELS[g]} {counts[(ds, g)][1]} interactions / {counts[(ds, g)][0]} users"
                    for g in groups if counts.get((ds, g), (None,))[0] is not None)
    ds_recs = [r for r in recs if r["dataset"] == ds]
    cap = (f"{ds}: test metrics per item group, each user's ground truth restricted to the group's items, ranking "
           f"unchanged; best bold, second underlined per column; mean over seeds. Groups: items with all modalities vs "
           f"missing at least one (test-time mask), new vs warm items (new-item protocol), the 20% most / least "
           f"trained items. Test interactions per group: {cnt or 'n/a'}. "
           + ratio_caption({ds: ratios[ds]}, ds_recs) + " " + data_caption(ds_recs))
    return build_grid(f"Per-group results, {ds}", cap, f"tab:groups-{slug(ds)}", ["Model"],
                      [([model], model) for model, _ in model_order(zip(part["model"], part["group"]))],
                      [Column((g, m), short_metric(m), ITEM_GROUP_LABELS[g]) for g in groups for m in metrics],
                      lambda model, col: number(found[(model,) + col]) if (model,) + col in found else None,
                      rank="column")


def _exposure_grid(exposure, ds, recs, ratios) -> Grid:
    part = exposure[exposure["dataset"] == ds]
    groups = [g for g in EXPOSURE_GROUPS if g in set(part["item_group"])]
    found = {(r.model, r.item_group, r.metric): r.mean for r in part.itertuples()}
    columns = []
    for g in groups:
        share = next((v for (m, gg, k), v in found.items() if gg == g and k == "catalogue_share"), float("nan"))
        span = f"{ITEM_GROUP_LABELS[g]} ({100 * share:.1f}% of items)"
        columns += [Column((g, "top20_share"), "top-20 share", span),
                    Column((g, "exposure_ratio"), "÷ catalogue share", span)]

    def cell(model, col):
        v = found.get((model,) + col)
        if v is None:
            return None
        return f"{100 * v:.1f}%" if col[1] == "top20_share" else f"{v:.2f}"

    ds_recs = [r for r in recs if r["dataset"] == ds]
    cap = (f"{ds}: exposure. top-20 share: the share of all top-20 slots of the test users that go to the group's "
           f"items; ÷ catalogue share: that share over the group's share of the catalogue (1 = exposed in proportion "
           f"to its size, below 1 = under-exposed). Mean over seeds. " + ratio_caption({ds: ratios[ds]}, ds_recs)
           + " " + data_caption(ds_recs))
    return build_grid(f"Exposure of item groups, {ds}", cap, f"tab:exposure-{slug(ds)}", ["Model"],
                      [([model], model) for model, _ in model_order(zip(part["model"], part["group"]))], columns, cell)


def group_figure(stats: pd.DataFrame, exposure: pd.DataFrame, title: str, stem) -> list[Path]:
    """Top: R@20 within each item group per model; bottom: exposure ratio of the disadvantaged groups."""
    from benchmarks.report import figures  # matplotlib only when figures are drawn

    plt = figures.plt
    models = model_order(zip(stats["model"], stats["group"]))
    pairs = [p for p in (("complete", "missing"), ("warm", "new"), ("popular", "unpopular"))
             if set(p) <= set(stats["item_group"])]
    cell = {(r.model, r.item_group): r.mean for r in stats[stats["metric"] == "recall@20"].itertuples()}
    has_exp = not exposure.empty
    fig, axes = plt.subplots(2 if has_exp else 1, 1, figsize=(max(7.0, 0.55 * len(models) + 2.5),
                                                              3.2 * (2 if has_exp else 1) + 0.6),
                             sharex=True, squeeze=False)
    x = np.arange(len(models))
    shades = {"complete": "#4c72b0", "missing": "#dd8452", "warm": "#55a868", "new": "#c44e52",
              "popular": "#8172b3", "unpopular": "#937860"}

    def bars(ax, groups, values):
        width = 0.8 / max(1, len(groups))
        for i, g in enumerate(groups):
            vals = [values.get((m, g), np.nan) for m, _ in models]
            ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(vals), width, color=shades[g], edgecolor="black",
                   linewidth=0.4, label=ITEM_GROUP_LABELS[g])
        ax.legend(fontsize=8, frameon=False, ncol=len(groups), loc="lower left", bbox_to_anchor=(0.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(x=0.01)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room for the model-group names
        figures.group_separators(ax, models)

    bars(axes[0, 0], [g for p in pairs for g in p], cell)
    axes[0, 0].set_ylabel("test Recall@20\nwithin the group")
    if has_exp:
        ratio = exposure[exposure["metric"] == "exposure_ratio"]
        rc = {(r.model, r.item_group): r.mean for r in ratio.itertuples()}
        ax = axes[1, 0]
        bars(ax, [g for g in EXPOSURE_GROUPS if g in set(ratio["item_group"])], rc)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.text(-0.45, 1.0, "in proportion to its size", va="bottom", ha="left", fontsize=7, color="#333333")
        ax.set_ylabel("exposure: top-20 share\n÷ catalogue share")
    figures.model_ticks(axes[-1, 0], models)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return figures.save(fig, stem)
