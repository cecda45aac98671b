"""The imputation protocol's tables and figures: is a model's advantage its architecture or its filling?

* ``imputation.*``: per dataset, models (those given imputed features) x imputation methods, test
  R@20 and N@20 (mean over seeds; best imputation of each model bold, second underlined), and
  the relative difference to ``mean`` (the paper's filling), 100·(M(method) − M(mean))/M(mean),
  per seed then averaged.
* ``imputation_feature_quality.*``: per dataset and modality, how close each method's filled rows
  are to the true features of the masked items (cosine, MSE per element), how many masked rows
  fell back to the mean, and the proposed model's generated rows beside the mean filling of the
  same rows.
* ``imputation_<dataset>.png/.pdf``: heat maps of the relative difference to ``mean``.

One missingness mechanism per dataset (uniform where it ran, else the one present), at the
dataset's official ratio (else the ratio run).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.core.imputation import IMPUTATIONS
from benchmarks.report.axes import DEFAULT_MECHANISM, imputation_of, mechanism_of, uses_features
from benchmarks.report.captions import data_caption, ratio_caption
from benchmarks.report.grid import Column, Grid, build_grid, fmt, number
from benchmarks.report.output import figure_links, links, slug, write_csv, write_grids
from benchmarks.report.presentation import LEVEL_METRICS, is_proposed, metric_label, model_order, short_metric
from benchmarks.report.selection import at_official_ratio, dataset_order
from benchmarks.report.stats import finite, sample_sd, seed_aggregate

REFERENCE = "mean"
LABELS = {"zero": "zero", "mean": "mean", "feature_knn": "feature kNN", "graph_mean": "graph mean",
          "multi_hop": "multi-hop", "ppr": "PPR", "heat": "heat", "generated": "DGMRec-generated"}
# Feature-quality rows beside the methods: "<model> generator" (the rows the proposed model
# generated) and the mean filling of those same rows.
GENERATOR = " generator"
MEAN_ON_GENERATED = "mean, on the generator's rows"
MODALITY_NAMES = {"v": "image", "t": "text", "a": "audio"}


def section(records: list[dict], out: Path, written: list[Path], draw: bool) -> list[str]:
    """Write the imputation tables (and heat maps); return the index lines."""
    values, rel, recs, ratios = imputation_stats(records)
    if values.empty:
        return ["No imputation results: no `missing` record of a model given imputed features.", ""]
    datasets = [d for d in dataset_order(recs) if d in set(values["dataset"])]
    grids = [g for ds in datasets for g in _imputation_grids(values, rel, ds, recs, ratios)]
    write_grids(grids, out / "imputation", written)
    csv = values.merge(rel[["model", "dataset", "imputation", "metric", "rel_pct", "rel_std"]],
                       on=["model", "dataset", "imputation", "metric"], how="left")
    write_csv(csv.rename(columns={"rel_pct": "rel_to_mean_pct", "rel_std": "rel_to_mean_std"}),
              out / "imputation.csv", written)
    lines = [links(out, "imputation", ("md", "tex", "csv"), "models × imputation methods (values, relative to mean)")]
    quality = quality_frame(recs)
    if not quality.empty:
        write_grids([_quality_grid(quality, ds, recs, ratios) for ds in datasets if ds in set(quality["dataset"])],
                    out / "imputation_feature_quality", written)
        write_csv(quality, out / "imputation_feature_quality.csv", written)
        lines.append(links(out, "imputation_feature_quality", ("md", "tex", "csv"),
                           "feature quality of the filled rows against the true features"))
    missing_ref = [ds for ds in datasets if REFERENCE not in set(values[values["dataset"] == ds]["imputation"])]
    if missing_ref:
        lines.append(f"- No relative difference for {', '.join(missing_ref)}: the mean imputation was not run.")
    if draw:
        for ds in datasets:
            part = rel[rel["dataset"] == ds]
            if part.empty:
                continue
            mech = mechanism_of(next(r for r in recs if r["dataset"] == ds))
            files = heatmap(part, f"{ds}: each imputation relative to mean (%)\nmechanism {mech}, ratio "
                                  f"{ratios[ds]:g}, mean over seeds", out / f"imputation_{slug(ds)}")
            written.extend(files)
            lines.append(figure_links(files))
    return lines + [""]


def imputation_stats(records: list[dict], metrics=LEVEL_METRICS):
    """(values: model, group, dataset, imputation, metric, mean, std, n, seeds; relative to mean;
    the records used; the ratio per dataset)."""
    recs, ratios = at_official_ratio(records, "missing")
    recs = [r for r in recs if uses_features(r)]
    chosen = {}
    for ds in {r["dataset"] for r in recs}:
        mechs = sorted({mechanism_of(r) for r in recs if r["dataset"] == ds}, key=lambda m: (m != DEFAULT_MECHANISM, m))
        chosen[ds] = mechs[0]
    recs = [r for r in recs if mechanism_of(r) == chosen[r["dataset"]]]
    rows = [{"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"], "imputation": imputation_of(r),
             "metric": m, "seed": r.get("seed"), "value": float(r["test"][m])}
            for r in recs for m in metrics if finite((r.get("test") or {}).get(m))]
    df = pd.DataFrame(rows)
    values = seed_aggregate(df, ["model", "group", "dataset", "imputation", "metric"])
    rel = []
    if not df.empty:
        for (model, group, ds, metric), part in df.groupby(["model", "group", "dataset", "metric"], sort=False):
            ref = dict(zip(part.loc[part["imputation"] == REFERENCE, "seed"],
                           part.loc[part["imputation"] == REFERENCE, "value"]))
            for imp, ip in part.groupby("imputation", sort=False):
                per_seed = [100.0 * (v - ref[s]) / ref[s] for s, v in zip(ip["seed"], ip["value"])
                            if s in ref and ref[s] > 0]
                if per_seed:
                    rel.append({"model": model, "group": group, "dataset": ds, "imputation": imp, "metric": metric,
                                "rel_pct": float(np.mean(per_seed)),
                                "rel_std": sample_sd(per_seed),
                                "n": len(per_seed)})
    rel_df = pd.DataFrame(rel, columns=["model", "group", "dataset", "imputation", "metric", "rel_pct", "rel_std", "n"])
    return values, rel_df, recs, {d: ratios[d] for d in chosen}


def method_order(imps) -> list[str]:
    """Imputation methods in the order of ``benchmarks.core.imputation.IMPUTATIONS``, then by name."""
    present = set(imps)
    return [m for m in IMPUTATIONS if m in present] + sorted(present - set(IMPUTATIONS))


def _imputation_grids(values, rel, ds, recs, ratios, metrics=LEVEL_METRICS) -> list[Grid]:
    part = values[values["dataset"] == ds]
    imps = method_order(part["imputation"])
    rows = [([model], model) for model, _ in model_order(zip(part["model"], part["group"]))]
    found = {(r.model, r.imputation, r.metric): r.mean for r in part.itertuples()}
    ds_recs = [r for r in recs if r["dataset"] == ds]
    method_txt = ("zero; mean of the observed rows (the paper's); feature kNN: mean of the most similar items in the "
                  "item's observed modalities; graph mean / multi-hop / PPR / heat: propagation of observed features "
                  "over the item-item co-interaction graph of the training data (Malitesta et al., CIKM 2024); "
                  "DGMRec-generated: the features a DGMRec job of the same data and seed generated (mean elsewhere)")
    cap = (f"{ds}: test metrics per imputation of the masked features ({method_txt}); mean over seeds; per model and "
           f"metric the best imputation bold, the second underlined. " + ratio_caption({ds: ratios[ds]}, ds_recs) + " "
           + data_caption(ds_recs))
    # bold/underline within each metric of a row: the best imputation for that model
    grids = [build_grid(f"Imputation methods, {ds}", cap, f"tab:imputation-{slug(ds)}", ["Model"], rows,
                        [Column((i, m), LABELS.get(i, i), short_metric(m)) for m in metrics for i in imps],
                        lambda model, col: number(found[(model,) + col]) if (model,) + col in found else None,
                        rank="span")]
    rpart = rel[rel["dataset"] == ds]
    if not rpart.empty:
        rimps = [i for i in imps if i != REFERENCE and i in set(rpart["imputation"])]
        relative = {(r.model, r.imputation, r.metric): r.rel_pct for r in rpart.itertuples()}
        cap = (f"{ds}: relative difference to the mean imputation, 100·(M(method) − M(mean))/M(mean) in %, per seed "
               f"and averaged over the seeds run with both (above 0: the method helps the model). "
               + ratio_caption({ds: ratios[ds]}, ds_recs) + " " + data_caption(ds_recs))
        grids.append(build_grid(
            f"Imputation relative to mean, {ds}", cap, f"tab:imputation-rel-{slug(ds)}", ["Model"], rows,
            [Column((i, m), LABELS.get(i, i), f"{short_metric(m)} vs mean (%)") for m in metrics for i in rimps],
            lambda model, col: f"{relative[(model,) + col]:+.1f}" if (model,) + col in relative else None))
    return grids


# ----------------------------------------------------------------------------- feature quality
def quality_frame(recs: list[dict]) -> pd.DataFrame:
    """Per (dataset, method, modality): cosine, MSE, rows, fallback rows (means over the records)."""
    rows = []
    for r in recs:
        fq = (r.get("extra") or {}).get("feature_quality") or {}
        fallback = ((r.get("missing_axes") or {}).get("filled_rows") or {})
        mods = sorted({k.split("_")[1] for k in fq if k.startswith("imputed_") and not k.startswith("imputed_on_")})
        for m in mods:
            rows.append({"dataset": r["dataset"], "method": imputation_of(r), "modality": m, "seed": r.get("seed"),
                         "model": r["model"], "cosine": fq.get(f"imputed_{m}_cosine"), "mse": fq.get(f"imputed_{m}_mse"),
                         "rows": fq.get(f"imputed_{m}_rows"), "fallback": (fallback.get(m) or {}).get("fallback")})
            if f"generated_{m}_cosine" in fq and is_proposed(r.get("group")) and imputation_of(r) == REFERENCE:
                rows.append({"dataset": r["dataset"], "method": r["model"] + GENERATOR, "modality": m,
                             "seed": r.get("seed"), "model": r["model"], "cosine": fq[f"generated_{m}_cosine"],
                             "mse": fq.get(f"generated_{m}_mse"), "rows": fq.get(f"generated_{m}_rows"),
                             "fallback": None})
                rows.append({"dataset": r["dataset"], "method": MEAN_ON_GENERATED, "modality": m,
                             "seed": r.get("seed"), "model": r["model"],
                             "cosine": fq.get(f"imputed_on_generated_{m}_cosine"),
                             "mse": fq.get(f"imputed_on_generated_{m}_mse"), "rows": fq.get(f"generated_{m}_rows"),
                             "fallback": None})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    for c in ("cosine", "mse", "rows", "fallback"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.groupby(["dataset", "method", "modality"], sort=False).agg(
        cosine=("cosine", "mean"), mse=("mse", "mean"), rows=("rows", "max"), fallback=("fallback", "max"),
        n_records=("seed", "count")).reset_index()


def _quality_grid(q: pd.DataFrame, ds, recs, ratios) -> Grid:
    part = q[q["dataset"] == ds]
    mods = sorted(set(part["modality"]), key=lambda m: "vta".find(m) if m in "vta" else 9)
    present = list(dict.fromkeys(part["method"]))
    extra = [x for x in present if x.endswith(GENERATOR)] + [x for x in present if x == MEAN_ON_GENERATED]
    methods = method_order([x for x in part["method"] if x not in extra]) + extra
    found = {(r.method, r.modality): r for r in part.itertuples()}

    def cell(meth, col):
        m, field = col
        r = found.get((meth, m))
        if r is None:
            return None
        if field == "cosine":  # the methods' cosines are ranked, the generator's rows shown beside them
            return number(r.cosine, digits=3) if meth not in extra else fmt(r.cosine, digits=3)
        if field == "mse":
            return f"{r.mse:.3g}"
        v = getattr(r, field)
        return str(int(v)) if finite(v) else None

    ds_recs = [r for r in recs if r["dataset"] == ds]
    cap = (f"{ds}: quality of the filled rows against the true features of the masked items (used only inside this "
           f"analysis; no model sees them): mean cosine similarity (a zero row counts 0) and mean squared error per "
           f"element over the masked rows; fallback = masked rows the method could not reach and filled with the "
           f"mean. DGMRec generator: the rows DGMRec generated at its best validation epoch (by default the items "
           f"missing exactly that modality), beside the mean filling of the same rows. Best cosine of the methods "
           f"bold. " + ratio_caption({ds: ratios[ds]}, ds_recs) + " " + data_caption(ds_recs))
    return build_grid(f"Feature quality of the imputations, {ds}", cap, f"tab:imputation-quality-{slug(ds)}",
                      ["method"], [([LABELS.get(meth, meth)], meth) for meth in methods],
                      [Column((m, f), h, MODALITY_NAMES.get(m, m)) for m in mods
                       for f, h in (("cosine", "cosine"), ("mse", "MSE"), ("rows", "rows"), ("fallback", "fallback"))],
                      cell, rank="column")


# ----------------------------------------------------------------------------- figure
def heatmap(rel: pd.DataFrame, title: str, stem, metrics=LEVEL_METRICS) -> list[Path]:
    """Models x imputations, colour = relative difference to mean (%), one panel per metric."""
    from matplotlib.colors import TwoSlopeNorm

    from benchmarks.report import figures  # matplotlib only when figures are drawn

    plt = figures.plt
    models = model_order(zip(rel["model"], rel["group"]))
    imps = [i for i in method_order(rel["imputation"]) if i != REFERENCE]
    cell = {(r.model, r.imputation, r.metric): r.rel_pct for r in rel.itertuples()}
    mats = {m: np.array([[cell.get((mm, i, m), np.nan) for i in imps] for mm, _ in models]) for m in metrics}
    shown = np.concatenate([v[np.isfinite(v)] for v in mats.values()]) if mats else np.zeros(0)
    lim = float(np.nanmax(np.abs(shown))) if shown.size else 1.0
    lim = max(lim, 1e-6)
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.0 + 0.75 * len(imps) * len(metrics),
                                                       max(3.0, 1.6 + 0.38 * len(models))), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#e0e0e0")
    im = None
    for ax, m in zip(axes[0], metrics):
        mat = mats[m]
        im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim),
                       aspect="auto")
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                ok = np.isfinite(mat[i, j])
                ax.text(j, i, f"{round(float(mat[i, j])):+d}" if ok else "–", ha="center", va="center", fontsize=7,
                        color="white" if ok and abs(mat[i, j]) > 0.6 * lim else "black")
        ax.set_xticks(range(len(imps)))
        ax.set_xticklabels([LABELS.get(i, i) for i in imps], rotation=40, ha="right", fontsize=8)
        figures.model_ticks(ax, models, axis="y")
        ax.set_title(f"test {metric_label(m)} vs mean (%)", fontsize=10)
    fig.suptitle(title, fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), shrink=0.9, label="vs mean (%), blue: better")
    return figures.save(fig, stem)
