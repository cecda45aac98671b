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

import numpy as np
import pandas as pd

from benchmarks.report.tables import (JOB_PROTOCOL, LEVEL_METRICS, Cell, Grid, _aggregate, _figure_links, _finite, _links, _num,
                     _ratio_caption, _slug, _write_csv, _write_grids, at_official_ratio, data_caption, dataset_order,
                     model_order, rank_styles, short_metric)
from benchmarks.report.axes import axes_short

GROUP_KEY = re.compile(r"^test_group_([a-z]+)$")
GROUP_ORDER = ("complete", "missing", "warm", "new", "popular", "unpopular")
GROUP_LABELS = {"complete": "all modalities", "missing": "missing ≥1", "warm": "warm", "new": "new",
                "popular": "top 20% popular", "unpopular": "bottom 20%"}
EXPOSURE_GROUPS = ("missing", "new", "unpopular")


def section(records: list[dict], protocols, out, written: list, fig_lib) -> list[str]:
    lines = []
    for jp in dict.fromkeys(JOB_PROTOCOL[p] for p in protocols):
        stats, counts, exposure, recs, ratios = group_stats(records, jp)
        if stats.empty:
            continue
        datasets = [d for d in dataset_order(recs) if d in set(stats["dataset"])]
        _write_grids([_group_grid(stats, counts, ds, recs, ratios) for ds in datasets], out / f"groups_{jp}", written)
        csv = stats.copy()
        csv["users"] = [counts.get((d, g), (None, None))[0] for d, g in zip(csv["dataset"], csv["item_group"])]
        csv["interactions"] = [counts.get((d, g), (None, None))[1] for d, g in zip(csv["dataset"], csv["item_group"])]
        _write_csv(csv, out / f"groups_{jp}.csv", written)
        lines.append(_links(out, f"groups_{jp}", ("md", "tex", "csv"), f"`{jp}`: test metrics per item group"))
        if not exposure.empty:
            _write_grids([_exposure_grid(exposure, ds, recs, ratios) for ds in datasets
                          if ds in set(exposure["dataset"])], out / f"exposure_{jp}", written)
            _write_csv(exposure, out / f"exposure_{jp}.csv", written)
            lines.append(_links(out, f"exposure_{jp}", ("md", "tex", "csv"),
                                f"`{jp}`: exposure (share of top-20 slots vs share of the catalogue)"))
        if fig_lib is not None:
            for ds in datasets:
                files = group_figure(stats[stats["dataset"] == ds], exposure[exposure["dataset"] == ds]
                                     if not exposure.empty else exposure,
                                     f"{ds} ({jp}): who pays for missing modalities\n(ratio {ratios[ds]:g}, "
                                     f"{axes_short([r for r in recs if r['dataset'] == ds])}, mean over seeds)",
                                     out / f"groups_{_slug(jp)}_{_slug(ds)}", fig_lib)
                written.extend(files)
                lines.append(_figure_links(files))
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
                if _finite(vals.get(m)):
                    rows.append({"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"],
                                 "item_group": g, "metric": m, "seed": r.get("seed"), "value": float(vals[m])})
            c = (r.get("extra_counts") or {}).get(key)
            if c is not None:
                counts.setdefault((r["dataset"], g), set()).add(tuple(int(x) for x in c))
        for g, e in (extra.get("exposure") or {}).items():
            share = next((v for k, v in e.items() if k.startswith("top")), None)
            cat = e.get("catalogue_share")
            if _finite(share) and _finite(cat) and cat > 0:
                exp_rows.append({"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"],
                                 "item_group": g, "metric": "top20_share", "seed": r.get("seed"), "value": float(share)})
                exp_rows.append({"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"],
                                 "item_group": g, "metric": "exposure_ratio", "seed": r.get("seed"),
                                 "value": float(share) / float(cat)})
                exp_rows.append({"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"],
                                 "item_group": g, "metric": "catalogue_share", "seed": r.get("seed"),
                                 "value": float(cat)})
    keys = ["model", "group", "dataset", "item_group", "metric"]
    stats = _aggregate(pd.DataFrame(rows), keys)
    exposure = _aggregate(pd.DataFrame(exp_rows), keys)
    flat = {k: (next(iter(v)) if len(v) == 1 else (None, None)) for k, v in counts.items()}
    return stats, flat, exposure, recs, ratios


def _groups_present(part: pd.DataFrame) -> list[str]:
    present = set(part["item_group"])
    return [g for g in GROUP_ORDER if g in present]


def _group_grid(stats, counts, ds, recs, ratios, metrics=LEVEL_METRICS) -> Grid:
    part = stats[stats["dataset"] == ds]
    groups = _groups_present(part)
    headers, spans = ["Model"], []
    for g in groups:
        spans.append((GROUP_LABELS[g], len(metrics)))
        headers += [short_metric(m) for m in metrics]
    cell = {(r.model, r.item_group, r.metric): r.mean for r in part.itertuples()}
    models = model_order(zip(part["model"], part["group"]))
    styles = {(g, m): rank_styles({mm: cell[(mm, g, m)] for mm, _ in models if (mm, g, m) in cell})
              for g in groups for m in metrics}
    rows = []
    for model, _ in models:
        row = [Cell(model)]
        for g in groups:
            for m in metrics:
                v = cell.get((model, g, m))
                row.append(Cell("–") if v is None else Cell(_num(v), styles[(g, m)].get(model, "")))
        rows.append(row)
    cnt = ", ".join(f"{GROUP_LABELS[g]} {counts[(ds, g)][1]} interactions / {counts[(ds, g)][0]} users"
                    for g in groups if counts.get((ds, g), (None,))[0] is not None)
    ds_recs = [r for r in recs if r["dataset"] == ds]
    cap = (f"{ds}: test metrics per item group, each user's ground truth restricted to the group's items, ranking "
           f"unchanged; best bold, second underlined per column; mean over seeds. Groups: items with all modalities vs "
           f"missing at least one (test-time mask), new vs warm items (new-item protocol), the 20% most / least "
           f"trained items. Test interactions per group: {cnt or 'n/a'}. "
           + _ratio_caption({ds: ratios[ds]}, ds_recs) + " " + data_caption(ds_recs))
    return Grid(f"Per-group results, {ds}", cap, headers, rows, 1, spans, label=f"tab:groups-{_slug(ds)}")


def _exposure_grid(exposure, ds, recs, ratios) -> Grid:
    part = exposure[exposure["dataset"] == ds]
    groups = [g for g in EXPOSURE_GROUPS if g in set(part["item_group"])]
    cell = {(r.model, r.item_group, r.metric): r.mean for r in part.itertuples()}
    headers, spans = ["Model"], []
    for g in groups:
        share = next((v for (m, gg, k), v in cell.items() if gg == g and k == "catalogue_share"), float("nan"))
        spans.append((f"{GROUP_LABELS[g]} ({100 * share:.1f}% of items)", 2))
        headers += ["top-20 share", "÷ catalogue share"]
    rows = []
    for model, _ in model_order(zip(part["model"], part["group"])):
        row = [Cell(model)]
        for g in groups:
            s, q = cell.get((model, g, "top20_share")), cell.get((model, g, "exposure_ratio"))
            row += [Cell("–") if s is None else Cell(f"{100 * s:.1f}%"), Cell("–") if q is None else Cell(f"{q:.2f}")]
        rows.append(row)
    ds_recs = [r for r in recs if r["dataset"] == ds]
    cap = (f"{ds}: exposure. top-20 share: the share of all top-20 slots of the test users that go to the group's "
           f"items; ÷ catalogue share: that share over the group's share of the catalogue (1 = exposed in proportion "
           f"to its size, below 1 = under-exposed). Mean over seeds. " + _ratio_caption({ds: ratios[ds]}, ds_recs)
           + " " + data_caption(ds_recs))
    return Grid(f"Exposure of item groups, {ds}", cap, headers, rows, 1, spans, label=f"tab:exposure-{_slug(ds)}")


def group_figure(stats: pd.DataFrame, exposure: pd.DataFrame, title: str, stem, fig_lib) -> list:
    """Top: R@20 within each item group per model; bottom: exposure ratio of the disadvantaged groups."""
    import matplotlib.pyplot as plt

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
                   linewidth=0.4, label=GROUP_LABELS[g])
        ax.legend(fontsize=8, frameon=False, ncol=len(groups), loc="lower left", bbox_to_anchor=(0.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(x=0.01)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room for the model-group names
        fig_lib._group_separators(ax, models)

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
    last = axes[-1, 0]
    last.set_xticks(x)
    last.set_xticklabels([m for m, _ in models], rotation=40, ha="right")
    for lab, (m, _) in zip(last.get_xticklabels(), models):
        if m == "DGMRec":
            lab.set_fontweight("bold")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig_lib.save(fig, stem)
