"""Figures of a run (matplotlib, Agg backend): PNG (150 dpi) and PDF of each.

Every figure uses the same colour for the same model: a fixed colour per name of the
registry's ``PAPER_ORDER`` (DGMRec always red, drawn on top and thicker), and for any other
name a colour from a second palette chosen by a stable hash of the name (md5, so it is the
same in every process). The marker says the model's group: square collaborative, circle
multi-modal, triangle missing-modality-aware, star proposed.

The functions take tidy ``pandas`` frames built by ``benchmarks.report.tables`` and return the
paths they wrote.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from benchmarks.report.presentation import PAPER_ORDER  # noqa: E402

from benchmarks.report.tables import model_order  # noqa: E402  (one ordering for tables and figures)

PROPOSED_COLOR = "#d62728"
# One colour per PAPER_ORDER position (the proposed model is coloured separately): collaborative
# models in greys/browns, multi-modal models in the tab10 hues (light and dark of each),
# missing-modality-aware models in dark tones. Red is reserved for DGMRec.
_PAPER_PALETTE = (
    "#7f7f7f", "#4d4d4d", "#8c564b", "#c49c94", "#bcbd22",  # MFBPR NGCF LightGCN SGL SimGCL
    "#1f77b4", "#7fb2e0", "#ff7f0e", "#f5b041", "#2ca02c",  # VBPR MMGCN GRCN SLMRec BM3
    "#82c96f", "#9467bd", "#c3a3e0", "#17becf", "#e377c2",  # LATTICE MGCN LGMRec DAMRS GUME
    "#393b79", "#637939", "#843c39",                        # CI2MG MILK SIBRAR
)
_FALLBACK_PALETTE = ("#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194", "#6b6ecf", "#b5cf6b",
                     "#e7ba52", "#d6616b", "#ce6dbd", "#3182bd", "#e6550d", "#31a354", "#756bb1")
GROUP_MARKERS = {"collaborative": "s", "multi-modal": "o", "missing-modality-aware": "^", "proposed": "*"}
GROUP_LABELS = {"collaborative": "collaborative", "multi-modal": "multi-modal",
                "missing-modality-aware": "missing-aware", "proposed": "proposed"}
METRIC_LABELS = {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision", "map": "MAP"}
PROPOSED_MODEL = "DGMRec"


def model_color(name: str) -> str:
    """The colour of a model in every figure."""
    if name == PROPOSED_MODEL:
        return PROPOSED_COLOR
    others = [n for n in PAPER_ORDER if n != PROPOSED_MODEL]
    if name in others:
        return _PAPER_PALETTE[others.index(name) % len(_PAPER_PALETTE)]
    digest = int(hashlib.md5(name.encode()).hexdigest(), 16)
    return _FALLBACK_PALETTE[digest % len(_FALLBACK_PALETTE)]


def group_marker(group: str) -> str:
    return GROUP_MARKERS.get(group, "D")


def metric_label(metric: str) -> str:
    name, _, k = metric.partition("@")
    return f"{METRIC_LABELS.get(name, name)}@{k}" if k else METRIC_LABELS.get(name, name)


def _style(model: str, group: str) -> dict:
    proposed = model == PROPOSED_MODEL
    return dict(color=model_color(model), marker=group_marker(group), markersize=11 if proposed else 6,
                linewidth=2.6 if proposed else 1.3, zorder=5 if proposed else 2,
                markeredgecolor="black" if proposed else model_color(model), markeredgewidth=0.6)


def _legend_handles(models: list[tuple[str, str]], lines: bool = True) -> tuple[list[Line2D], set[int]]:
    """Model handles under a header entry per group; returns the handles and the header positions."""
    hs, headers, prev = [], set(), None
    for m, g in models:
        if g != prev:
            headers.add(len(hs))
            hs.append(Line2D([], [], linestyle="none", label=GROUP_LABELS.get(g, g)))
            prev = g
        st = _style(m, g)
        hs.append(Line2D([0], [0], color=st["color"], marker=st["marker"], markersize=min(st["markersize"], 9),
                         linewidth=st["linewidth"] if lines else 0, linestyle="-" if lines else "none",
                         markeredgecolor="black" if not lines else st["markeredgecolor"],
                         markeredgewidth=st["markeredgewidth"], label=m))
    return hs, headers


def _side_legend(fig, models: list[tuple[str, str]], lines: bool = True, max_rows: int = 26) -> None:
    handles, headers = _legend_handles(models, lines)
    ncol = 1 if len(handles) <= max_rows else 2
    leg = fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9,
                     ncol=ncol, handlelength=2.2 if lines else 1.2)
    for i, text in enumerate(leg.get_texts()):
        if i in headers:
            text.set_fontstyle("italic")
            text.set_color("#555555")
            text.set_x(-20)  # group headers start at the handle column


def _label_points(ax, points: list[tuple[float, float, str]], fontsize: float = 7) -> None:
    """Name each point beside it, trying four positions and skipping a label that would overlap."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    marks = []  # the markers themselves (about 7 points across, in pixels)
    r = 4.5 * fig.dpi / 72
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        marks.append(Bbox.from_extents(px - r, py - r, px + r, py + r))
    taken = []
    for i, (x, y, name) in sorted(enumerate(points), key=lambda p: -p[1][1]):
        placed = None
        blockers = taken + [m for j, m in enumerate(marks) if j != i]
        for dx, dy, ha, va in ((5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"),
                               (-5, -3, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top")):
            t = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=fontsize, color="#222222", zorder=6)
            bb = t.get_window_extent(renderer).expanded(1.05, 1.1)
            clash = any(bb.overlaps(o) for o in blockers) or bb.x0 < inside.x0 or bb.x1 > inside.x1 \
                or bb.y0 < inside.y0 or bb.y1 > inside.y1
            if clash:
                t.remove()
                continue
            placed = bb
            break
        if placed is not None:
            taken.append(placed)


def save(fig, stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf``; close the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, kw in (("png", {"dpi": 150}), ("pdf", {})):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, bbox_inches="tight", **kw)
        out.append(p)
    plt.close(fig)
    return out


def level_bars(stats: pd.DataFrame, level_labels: dict[int, str], title: str, stem: str | Path,
               metrics=("recall@20", "ndcg@20")) -> list[Path]:
    """Grouped bars: one group of bars per model (paper order), one bar per missing level.

    ``stats``: columns model, group, level, metric, mean, std (std may be NaN).
    """
    models = model_order(zip(stats["model"], stats["group"]))
    levels = sorted(level_labels)
    cmap = plt.get_cmap("YlGnBu")
    level_colors = {lv: cmap(0.3 + 0.65 * i / max(1, len(levels) - 1)) for i, lv in enumerate(levels)}
    width = 0.8 / len(levels)
    x = np.arange(len(models))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(7.0, 0.62 * len(models) + 2.5), 3.0 * len(metrics)),
                             sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        part = stats[stats["metric"] == metric]
        cell = {(r.model, int(r.level)): (r.mean, r.std) for r in part.itertuples()}
        for i, lv in enumerate(levels):
            vals = np.array([cell.get((m, lv), (np.nan, np.nan))[0] for m, _ in models], dtype=float)
            errs = np.array([cell.get((m, lv), (np.nan, np.nan))[1] for m, _ in models], dtype=float)
            errs = np.where(np.isfinite(errs), errs, 0.0)
            ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(vals), width, color=level_colors[lv],
                   edgecolor="black", linewidth=0.4, label=level_labels[lv],
                   yerr=errs if errs.any() else None, error_kw=dict(elinewidth=0.7, capsize=1.5, ecolor="#333333"))
        ax.set_ylabel(f"test {metric_label(metric)}")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        _group_separators(ax, models)
        ax.margins(x=0.01)
        top = ax.get_ylim()[1]
        ax.set_ylim(0, top * 1.12)  # room for the group names
    axes[0, 0].legend(title="test items (interactions)", ncol=len(levels) if len(models) >= 8 else 2, fontsize=8,
                      title_fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.02), frameon=False,
                      alignment="left")
    axes[-1, 0].set_xticks(x)
    axes[-1, 0].set_xticklabels([m for m, _ in models], rotation=40, ha="right")
    for lab, (m, _) in zip(axes[-1, 0].get_xticklabels(), models):
        if m == PROPOSED_MODEL:
            lab.set_fontweight("bold")
    if stats["std"].notna().any():
        title += "\nerror bars: ±1 sample std over seeds"
    fig.suptitle(title, fontsize=11, y=1.0)
    fig.tight_layout()
    return save(fig, stem)


def _group_separators(ax, models: list[tuple[str, str]]) -> None:
    groups = [g for _, g in models]
    start = 0
    for i in range(1, len(groups) + 1):
        if i == len(groups) or groups[i] != groups[start]:
            if i < len(groups):
                ax.axvline(i - 0.5, color="#999999", linewidth=0.8, linestyle="--")
            ax.text((start + i - 1) / 2, 0.98, GROUP_LABELS.get(groups[start], groups[start]),
                    transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8, color="#555555")
            start = i


def ratio_lines(values: pd.DataFrame, drops: pd.DataFrame | None, title: str, stem: str | Path,
                metrics=("recall@20", "ndcg@20")) -> list[Path]:
    """Metric against the missing ratio (top row) and the relative drop vs ratio 0 (bottom row).

    ``values``: model, group, ratio, metric, mean. ``drops``: model, group, ratio, metric, drop
    (percent; ratio 0 is drawn at 0).
    """
    models = model_order(zip(values["model"], values["group"]))
    has_drop = drops is not None and not drops.empty
    nrows = 2 if has_drop else 1
    fig, axes = plt.subplots(nrows, len(metrics), figsize=(5.2 * len(metrics), 3.4 * nrows), squeeze=False)
    ratios = sorted(values["ratio"].unique())
    for j, metric in enumerate(metrics):
        ax = axes[0, j]
        part = values[values["metric"] == metric]
        for m, g in models:
            d = part[part["model"] == m].sort_values("ratio")
            if not d.empty:
                ax.plot(d["ratio"], d["mean"], **_style(m, g))
        ax.set_xlabel("missing ratio")
        ax.set_ylabel(f"test {metric_label(metric)}")
        ax.set_title(metric_label(metric), fontsize=10)
        ax.set_xticks(ratios)
        ax.set_xticklabels(_ratio_labels(ratios))
        ax.grid(alpha=0.3)
        if has_drop:
            ax = axes[1, j]
            part = drops[drops["metric"] == metric]
            for m, g in models:
                d = part[part["model"] == m].sort_values("ratio")
                if not d.empty:
                    xs = np.concatenate([[0.0], d["ratio"].to_numpy(float)])
                    ys = np.concatenate([[0.0], d["drop"].to_numpy(float)])
                    ax.plot(xs, ys, **_style(m, g))
            ax.axhline(0, color="black", linewidth=0.7)
            ax.set_xlabel("missing ratio")
            ax.set_ylabel("drop vs ratio 0 (%)")
            ax.set_title(f"relative drop of {metric_label(metric)} (above 0: worse than ratio 0)", fontsize=10)
            ax.set_xticks(ratios)
            ax.set_xticklabels(_ratio_labels(ratios))
            ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _side_legend(fig, models)
    return save(fig, stem)


def _ratio_labels(ratios) -> list[str]:
    """Tick labels of the ratio axis; a ratio close to the previous one (0.6 and the official
    0.666) goes one line lower so that the two labels do not overlap."""
    labels, prev, low = [], None, False
    for r in ratios:
        low = prev is not None and r - prev < 0.1 and not low
        labels.append(("\n" if low else "") + f"{r:g}")
        prev = r
    return labels


def cost_scatter(cost: pd.DataFrame, title: str, stem: str | Path, metric: str = "recall@20") -> list[Path]:
    """Test accuracy against total training time (log x), one panel per dataset.

    ``cost``: dataset, model, group, train_seconds (s/epoch x epochs run), and ``metric``.
    """
    datasets = list(dict.fromkeys(cost["dataset"]))
    models = model_order(zip(cost["model"], cost["group"]))
    ncol = 2 if len(datasets) in (2, 4) else min(len(datasets), 3)
    nrow = int(np.ceil(len(datasets) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.0 * ncol, 3.8 * nrow), squeeze=False)
    for ax, ds in zip(axes.flat, datasets):
        part = cost[(cost["dataset"] == ds) & cost["train_seconds"].notna() & cost[metric].notna()]
        for m, g in models:
            d = part[part["model"] == m]
            if d.empty:
                continue
            st = _style(m, g)
            ax.scatter(d["train_seconds"], d[metric], color=st["color"], marker=st["marker"],
                       s=(st["markersize"] * 1.6) ** 2 if m == PROPOSED_MODEL else 55, edgecolors="black",
                       linewidths=0.5, zorder=st["zorder"])
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10))
        ax.xaxis.set_major_formatter(FuncFormatter(_seconds_label))
        ax.xaxis.set_minor_formatter(NullFormatter())
        lo, hi = part["train_seconds"].min(), part["train_seconds"].max()
        if lo > 0 and hi / lo < 30:  # fewer than two decades: label 1-2-5 steps too
            ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(FuncFormatter(_seconds_label))
            ax.tick_params(axis="x", which="minor", labelsize=8)
        ax.margins(x=0.12, y=0.1)
        ax.set_xlabel("training time (s) = s/epoch × epochs run, log scale")
        ax.set_ylabel(f"test {metric_label(metric)}")
        ax.set_title(ds, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    for ax, ds in zip(axes.flat, datasets):
        part = cost[(cost["dataset"] == ds) & cost["train_seconds"].notna() & cost[metric].notna()]
        _label_points(ax, list(zip(part["train_seconds"], part[metric], part["model"])))
    _side_legend(fig, models, lines=False, max_rows=26 if nrow > 1 else 14)
    return save(fig, stem)


def _seconds_label(x: float, _pos=None) -> str:
    if x <= 0:
        return ""
    if x >= 1000:
        return f"{x / 1000:g}k"
    return f"{x:g}"
