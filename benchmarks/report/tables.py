"""The reporting layer: tables (markdown via tabulate, LaTeX booktabs, CSV), figures and an index.

``write_report(records, results_dir, protocols, store)`` writes, for each requested protocol:

* ``missing`` / ``new_items``: the paper's Table 1 / Table 2 layout (``missing.md`` ...):
  models grouped in the paper's order, per dataset R@20, R@50, N@20, N@50, best **bold**
  and second underlined per column, and an ``Improv.`` row of DGMRec over the strongest
  baseline with the significance of a two-sided paired t-test on per-user vectors averaged
  over seeds (spec 7). Also ``<protocol>_std`` (mean ± std), ``<protocol>_improv.csv`` and,
  for datasets that ran on real data, ``<protocol>_vs_paper`` (ours, published, relative
  difference).
* ``missing_level``: per dataset, models × levels (full, missing 1, 2[, 3]) × R@20, N@20;
  grouped-bar figure ``missing_level_<dataset>.png/.pdf``.
* ``missing_ratio``: per dataset, models × ratios (R@20, N@20) and the relative drop vs
  ratio 0; line figure ``missing_ratio_<dataset>.png/.pdf``.
* ``retrieval``: DGMRec's cross-modal Hit@K in the paper's layout (+ paper comparison).
* always: ``cost`` (s/epoch, epochs to the best validation, evaluation seconds, peak memory)
  with an accuracy-vs-training-time scatter, and ``index.md`` linking everything.

Conventions: a grid is reduced to its best-validation setting (``select_grid``, never by
test); every cell is the mean over seeds of that selection; standard deviations are sample
standard deviations (ddof=1); ``missing``-family tables use each dataset's official ratio
(Amazon 0.666, TikTok 0.6) when it was run, else the ratio present (closest to the official
one). Bold/underline rank the values as printed (4 decimals), so equal printed values get the
same mark. Every table carries a caption naming the data (real, reference = surrogate
features, synthetic replica), the seeds and whether reference defects were fixed.
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps
from tabulate import tabulate

from data_prep.errors import DataError
from models.registry import GROUPS
from benchmarks.report.presentation import PAPER_ORDER

from benchmarks.report import axes as report_axes
from benchmarks.run.store import ResultStore

PROTOCOL_NAMES = ("missing", "new_items", "missing_level", "missing_ratio", "retrieval", "imputation")
JOB_PROTOCOL = {"missing": "missing", "new_items": "new_items", "missing_level": "missing",
                "missing_ratio": "missing", "retrieval": "missing", "imputation": "missing"}
TABLE_METRICS = ("recall@20", "recall@50", "ndcg@20", "ndcg@50")
LEVEL_METRICS = ("recall@20", "ndcg@20")
SHORT = {"recall": "R", "ndcg": "N", "precision": "P", "map": "MAP"}
AMAZON_KINDS = ("baby", "sports", "clothing", "elec")
DATASET_ORDER = ("baby", "sports", "clothing", "tiktok", "elec")
OFFICIAL_RATIOS = {"tiktok": 0.6}  # every Amazon kind: 0.666 (= 2/3)
DEFAULT_OFFICIAL_RATIO = 0.666
RATIO_TOLERANCE = 2e-3  # 0.666 and 2/3 are the same setting
PROPOSED_MODEL = "DGMRec"
PAPER_DIR = Path(__file__).resolve().parent / "paper"
PAPER_FILES = {"missing": "table1_missing.csv", "new_items": "table2_new_items.csv",
               "retrieval": "table_retrieval_baby.csv"}
TITLES = {"missing": "Table 1 (missing modalities)", "new_items": "Table 2 (missing modalities + new items)"}
SOURCE_TEXT = {"real": "real data", "reference": "reference data (surrogate features)",
               "synthetic": "SYNTHETIC replica"}
SIG_LEVELS = ((0.01, "**"), (0.05, "*"))


# ----------------------------------------------------------------------------- selection
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


def _unique_jobs(records: list[dict]) -> list[dict]:
    """One record per job id (the last one: a retried job supersedes its failure)."""
    return list({r.get("job_id", id(r)): r for r in records}.values())


def latest_settings(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, superseded): for each (model, dataset, protocol, ratio, seed, missing-data axes) the records of the grid
    run that reached the store last. A results folder collects every run made into it, so a table
    is the union of those runs; where two runs trained the same cell under different settings,
    the newer one is shown and the older one is named in the index instead of being averaged in."""
    def cell(r):  # the missing-data axes are part of a cell: an imputation sweep holds several per seed
        cfg = r.get("config") or {}
        axes = tuple(str(cfg.get(k)) for k in ("missing_imputation", "missing_mechanism", "missing_ratio_per_modality"))
        return (r.get("model"), r.get("dataset"), r.get("protocol"), r.get("missing_ratio"), r.get("seed")) + axes

    newest = {}
    for r in records:  # store order: later lines are newer
        newest[cell(r)] = r.get("grid_group", r.get("job_id"))
    kept = [r for r in records if r.get("grid_group", r.get("job_id")) == newest[cell(r)]]
    superseded = [r for r in records if r.get("grid_group", r.get("job_id")) != newest[cell(r)]]
    return kept, superseded


def official_ratio(kind: str) -> float:
    return OFFICIAL_RATIOS.get(str(kind).lower(), DEFAULT_OFFICIAL_RATIO)


def same_ratio(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= RATIO_TOLERANCE


def choose_ratio(ratios, kind: str) -> float:
    """The dataset's official ratio when it ran, else the (non-zero) ratio closest to it."""
    ratios = sorted({float(r) for r in ratios})
    target = official_ratio(kind)
    for r in ratios:
        if same_ratio(r, target):
            return r
    pool = [r for r in ratios if r > 0] or ratios
    return min(pool, key=lambda r: (abs(r - target), r))


def selected(records: list[dict], job_protocol: str) -> list[dict]:
    """Grid-selected ``ok`` records of one job protocol."""
    return select_grid([r for r in _unique_jobs(records) if r.get("protocol") == job_protocol])


def at_official_ratio(records: list[dict], job_protocol: str) -> tuple[list[dict], dict[str, float]]:
    """Grid-selected records of ``job_protocol`` at each dataset's official (or present) ratio."""
    sel = selected(records, job_protocol)
    by_ds: dict[str, list[dict]] = {}
    for r in sel:
        by_ds.setdefault(r["dataset"], []).append(r)
    out, ratios = [], {}
    for ds, recs in by_ds.items():
        ratio = choose_ratio([r.get("missing_ratio", 0.0) for r in recs], _kind(recs[0]))
        ratios[ds] = ratio
        out.extend(r for r in recs if same_ratio(r.get("missing_ratio", 0.0), ratio))
    return out, ratios


def _kind(rec: dict) -> str:
    return str(rec.get("dataset_kind") or str(rec.get("dataset", "")).split(":")[-1]).lower()


def dataset_order(records: list[dict]) -> list[str]:
    kinds = {}
    for r in records:
        kinds.setdefault(r["dataset"], _kind(r))
    rank = {k: i for i, k in enumerate(DATASET_ORDER)}
    return sorted(kinds, key=lambda d: (rank.get(kinds[d], len(rank)), d))


def model_order(pairs) -> list[tuple[str, str]]:
    """(model, group) in the paper's order: group (GROUPS), PAPER_ORDER, then name."""
    rank = {n: i for i, n in enumerate(PAPER_ORDER)}
    gidx = {g: i for i, g in enumerate(GROUPS)}
    uniq = dict.fromkeys((str(m), str(g)) for m, g in pairs)
    return sorted(uniq, key=lambda mg: (gidx.get(mg[1], len(gidx)), rank.get(mg[0], len(rank)), mg[0].lower()))


def short_metric(metric: str) -> str:
    name, _, k = metric.partition("@")
    return f"{SHORT.get(name, name)}@{k}" if k else metric


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _sd(values) -> float:
    v = np.asarray(list(values), dtype=float)
    return float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


def _aggregate(df: pd.DataFrame, keys: list[str], value: str = "value") -> pd.DataFrame:
    """mean, sample std (ddof=1; NaN for one seed), n and the seeds per ``keys``."""
    if df.empty:
        return pd.DataFrame(columns=keys + ["mean", "std", "n", "seeds"])
    g = df.groupby(keys, sort=False)
    out = g[value].agg(mean="mean", std=_sd, n="count").reset_index()
    seeds = g["seed"].agg(lambda s: " ".join(str(x) for x in sorted(s))).reset_index(drop=True)
    out["seeds"] = seeds.to_numpy()
    return out


# ----------------------------------------------------------------------------- captions
def data_label(records: list[dict], dataset: str | None = None) -> str:
    """What a figure's data is, for its title: "SYNTHETIC replica", "reference data (surrogate
    features)", "real data", or several of them joined."""
    sources = sorted({r.get("data_source", "?") for r in records if dataset is None or r["dataset"] == dataset})
    return " + ".join(SOURCE_TEXT.get(x, f"{x} data") for x in sources)


def data_caption(records: list[dict]) -> str:
    """Which data (per dataset), seeds, defect setting and the selection rule."""
    if not records:
        return "No records."
    parts = []
    for ds in dataset_order(records):
        recs = [r for r in records if r["dataset"] == ds]
        sources = sorted({r.get("data_source", "?") for r in recs})
        text = " + ".join(SOURCE_TEXT.get(s, f"{s} data") for s in sources)
        scales = sorted({(r.get("dataset_ref") or {}).get("scale") for r in recs if r.get("data_source") == "synthetic"}
                        - {None})
        if scales:
            text += f" at scale {', '.join(f'{s:g}' for s in scales)}"
        parts.append(f"{ds}: {text}")
    seeds = sorted({r.get("seed") for r in records}, key=lambda s: (str(type(s)), s))
    n_seeds = {}
    for r in records:
        key = (r["model"], r["dataset"], r.get("protocol"), r.get("missing_ratio"))
        n_seeds.setdefault(key, set()).add(r.get("seed"))
    counts = sorted({len(v) for v in n_seeds.values()})
    n_txt = (f"{counts[0]} per cell; mean over seeds" if len(counts) == 1 else
             f"{counts[0]}–{counts[-1]} per cell; mean over seeds")
    if counts == [1]:
        n_txt = "one seed per cell: no standard deviation"
    fixed = sorted({bool((r.get("config") or {}).get("fix_reference_defects")) for r in records})
    fixed_txt = {(False,): "reference defects reproduced (fix_reference_defects off)",
                 (True,): "reference defects fixed (fix_reference_defects on)"}.get(tuple(fixed),
                                                                                   "mixed reference-defect settings")
    vmetrics = sorted({short_metric(str((r.get("config") or {}).get("valid_metric", "recall@20")).lower())
                       for r in records})
    epochs = sorted({int((r.get("config") or {})["epochs"]) for r in records
                     if _finite((r.get("config") or {}).get("epochs"))})
    sched = ""
    if epochs:
        sched = f" Schedule: at most {epochs[0]} epochs" if len(epochs) == 1 else \
            f" Schedule: at most {epochs[0]}–{epochs[-1]} epochs"
        sched += " (early stopping on validation)"
        patience = sorted({(int(r["config"]["eval_step"]), int(r["config"]["stopping_step"])) for r in records
                           if _finite((r.get("config") or {}).get("eval_step"))
                           and _finite((r.get("config") or {}).get("stopping_step"))})
        if len(patience) == 1:
            step, stop = patience[0]
            sched += (f", evaluated every {'epoch' if step == 1 else f'{step} epochs'}, stopping after more than "
                      f"{stop} evaluations without improvement")
        reasons = [r.get("stop_reason") for r in records if r.get("stop_reason") in ("early_stopping", "epoch_budget")]
        if reasons:
            budget = reasons.count("epoch_budget")
            sched += (f"; {reasons.count('early_stopping')} of {len(reasons)} trained runs stopped early"
                      + (f", {budget} reached the epoch budget" if budget else ""))
        if any((r.get("config") or {}).get("grid_limit") for r in records):
            sched += "; first setting of each grid only"
        sched += "."
    text = (f"Data: {'; '.join(parts)}. Seeds: {', '.join(map(str, seeds))} ({n_txt}). "
            f"{fixed_txt[0].upper() + fixed_txt[1:]}. {report_axes.axes_caption(records)} "
            f"Grid settings chosen by validation {'/'.join(vmetrics)}; "
            f"test metrics at the best validation epoch.{sched}")
    if any(r.get("data_source") == "synthetic" for r in records):
        text += " SYNTHETIC REPLICA DATA: not comparable to the paper."
    elif any(r.get("data_source") == "reference" for r in records):
        text += " Reference data uses surrogate features: not comparable to the paper."
    return text


def _ratio_caption(ratios: dict[str, float], records: list[dict]) -> str:
    if not ratios:
        return ""
    kinds = {r["dataset"]: _kind(r) for r in records}
    parts = []
    for ds, r in ratios.items():
        tag = "official" if same_ratio(r, official_ratio(kinds.get(ds, ds))) else \
            f"official {official_ratio(kinds.get(ds, ds)):g} not run"
        parts.append(f"{ds} {r:g} ({tag})")
    return "Missing ratio: " + ", ".join(parts) + "."


# ----------------------------------------------------------------------------- cells and rendering
@dataclass
class Cell:
    text: str
    style: str = ""  # "best" | "second" | ""
    mark: str = ""  # significance: "**", "*", "n.s." or ""
    below_floor: bool = False  # below the non-personalised floor (ItemPop) of its column: marked †

    def md(self) -> str:
        t = self.text + ("†" if self.below_floor else "")
        if self.style == "best":
            t = f"**{t}**"
        elif self.style == "second":
            t = f"<u>{t}</u>"
        if self.mark:
            t += self.mark.replace("*", r"\*") if set(self.mark) == {"*"} else " " + self.mark
        return t

    def tex(self) -> str:
        t = _tex_escape(self.text) + ("$^\\dagger$" if self.below_floor else "")
        if self.style == "best":
            t = f"\\textbf{{{t}}}"
        elif self.style == "second":
            t = f"\\underline{{{t}}}"
        if self.mark:
            t += f"$^{{{self.mark}}}$" if set(self.mark) == {"*"} else " " + _tex_escape(self.mark)
        return t


def _c(x) -> Cell:
    return x if isinstance(x, Cell) else Cell("–" if x is None else str(x))


def _num(mean, std=None, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f}±{std:.{digits}f}"


def rank_styles(values: dict, digits: int = 4) -> dict:
    """key -> "best" / "second" / "" by the value as printed; ties share a mark."""
    printed = {k: round(float(v), digits) for k, v in values.items() if v is not None and np.isfinite(v)}
    distinct = sorted(set(printed.values()), reverse=True)
    out = {k: "" for k in values}
    for k, v in printed.items():
        if distinct and v == distinct[0]:
            out[k] = "best"
        elif len(distinct) > 1 and v == distinct[1]:
            out[k] = "second"
    return out


def significance_mark(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n.s."
    for level, mark in SIG_LEVELS:
        if p < level:
            return mark
    return "n.s."


@dataclass
class Grid:
    """A rendered-to-be table: leaf headers, optional header spans, rows of cells."""
    title: str
    caption: str
    headers: list[str]
    rows: list[list]
    n_label: int = 1  # leading label columns
    spans: list[tuple[str, int]] | None = None  # over the non-label columns
    sections: dict[int, str] = field(default_factory=dict)  # row index -> section label (LaTeX rows)
    rules: set = field(default_factory=set)  # row indices preceded by a \midrule
    label: str = ""
    md_group_col: list[str] | None = None  # markdown: a leading "group" column (LaTeX uses section rows)

    def markdown(self) -> str:
        if self.spans:
            flat, i = list(self.headers[:self.n_label]), self.n_label
            for name, n in self.spans:
                for h in self.headers[i:i + n]:
                    flat.append(f"{name} {h}".strip())
                i += n
            headers = flat
        else:
            headers = self.headers
        body = [[_c(x).md() for x in row] for row in self.rows]
        if self.md_group_col is not None:
            headers = ["group"] + list(headers)
            body = [[grp] + row for grp, row in zip(self.md_group_col, body)]
        return (f"**{self.title}.** {self.caption}\n\n"
                + tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n")

    def latex(self) -> str:
        ncol = len(self.headers)
        wide = ncol > 8
        env = "table*" if wide else "table"
        lines = ["% requires \\usepackage{booktabs}" + ("" if not wide else " and \\usepackage{graphicx}"),
                 f"\\begin{{{env}}}[t]", "\\centering",
                 f"\\caption{{\\textbf{{{_tex_escape(latex_title(self.title))}.}} {_tex_escape(self.caption)}}}"]
        if self.label:
            lines.append(f"\\label{{{self.label}}}")
        if wide:
            lines.append("\\resizebox{\\textwidth}{!}{%")
        lines.append(f"\\begin{{tabular}}{{{'l' * self.n_label}{'c' * (ncol - self.n_label)}}}")
        lines.append("\\toprule")
        if self.spans:
            top, rules, col = [""] * self.n_label, [], self.n_label + 1
            for name, n in self.spans:
                top.append(f"\\multicolumn{{{n}}}{{c}}{{{_tex_escape(name)}}}" if n > 1 else _tex_escape(name))
                if name:
                    rules.append(f"\\cmidrule(lr){{{col}-{col + n - 1}}}")
                col += n
            lines.append(" & ".join(top) + " \\\\")
            if rules:
                lines.append(" ".join(rules))
        lines.append(" & ".join(_tex_escape(h) for h in self.headers) + " \\\\")
        lines.append("\\midrule")
        for i, row in enumerate(self.rows):
            if i in self.rules and i > 0:
                lines.append("\\midrule")
            if i in self.sections:
                if i > 0 and i not in self.rules:
                    lines.append("\\midrule")
                lines.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{{_tex_escape(self.sections[i])}}}}} \\\\")
            lines.append(" & ".join(_c(x).tex() for x in row) + " \\\\")
        lines.append("\\bottomrule")
        lines.append("\\end{tabular}" + ("}" if wide else ""))
        lines.append(f"\\end{{{env}}}")
        return "\n".join(lines) + "\n"


def latex_title(title: str) -> str:
    """The title without its own "Table N": LaTeX's caption numbers the table itself (no
    "Table 1: Table 2 (...)"). "Table 2 (missing modalities + new items), mean ± std" becomes
    "Missing modalities + new items, mean ± std"."""
    m = re.match(r"^Table \d+\s*\((.*?)\)(.*)$", title)
    if not m:
        return title
    text = m.group(1) + m.group(2)
    return text[:1].upper() + text[1:]


def _tex_escape(text: str) -> str:
    text = str(text)
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                 ("$", "\\$"), ("{", "\\{"), ("}", "\\}"), ("~", "\\textasciitilde{}"), ("^", "\\^{}")):
        text = text.replace(a, b)
    for a, b in (("<", "$<$"), (">", "$>$"), ("±", "$\\pm$"), ("−", "$-$"), ("–", "--"), ("—", "---"),
                 ("Δ", "$\\Delta$"), ("→", "$\\to$"), ("×", "$\\times$"), ("≥", "$\\geq$"), ("·", "$\\cdot$")):
        text = text.replace(a, b)
    return text


def _write_grids(grids: list[Grid], stem: Path, written: list[Path]) -> None:
    if not grids:
        return
    md = stem.with_suffix(".md")
    md.write_text("\n".join(g.markdown() for g in grids))
    tex = stem.with_suffix(".tex")
    tex.write_text("\n".join(g.latex() for g in grids))
    written.extend([md, tex])


def _write_csv(df: pd.DataFrame, path: Path, written: list[Path]) -> None:
    df.to_csv(path, index=False)
    written.append(path)


# ----------------------------------------------------------------------------- per-user significance
class UserMismatchError(ValueError):
    """Per-user vectors that do not cover the same users cannot be paired."""


def per_user_mean(store: ResultStore, recs: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Users sorted by id and the per-user ``metric`` averaged over the records (seeds)."""
    users, vecs = None, []
    for r in sorted(recs, key=lambda r: str(r.get("seed"))):
        d = store.load_per_user(r["job_id"])
        if metric not in d:
            raise KeyError(f"per-user file of job {r['job_id']} has no {metric!r}")
        u = np.asarray(d["users"])
        order = np.argsort(u, kind="stable")
        u, v = u[order], np.asarray(d[metric], dtype=float)[order]
        if users is None:
            users = u
        elif not np.array_equal(u, users):
            raise UserMismatchError(f"{r['model']} on {r['dataset']}: the seeds' per-user vectors cover different "
                                    f"users ({len(u)} vs {len(users)})")
        vecs.append(v)
    if users is None:
        raise KeyError("no records")
    return users, np.mean(vecs, axis=0)


def paired_test(store: ResultStore, a_recs: list[dict], b_recs: list[dict], metric: str) -> dict:
    """Two-sided paired t-test (scipy.stats.ttest_rel) of seed-averaged per-user vectors, a vs b."""
    ua, a = per_user_mean(store, a_recs, metric)
    ub, b = per_user_mean(store, b_recs, metric)
    if not np.array_equal(ua, ub):
        common = len(np.intersect1d(ua, ub))
        raise UserMismatchError(f"{a_recs[0]['model']} and {b_recs[0]['model']} on {a_recs[0]['dataset']} were "
                                f"evaluated on different users ({len(ua)} and {len(ub)}, {common} in common)")
    if len(a) < 2 or np.allclose(a, b):
        t, p = float("nan"), float("nan")
    else:
        res = sps.ttest_rel(a, b)
        t, p = float(res.statistic), float(res.pvalue)
    return {"t": t, "p": p, "n_users": int(len(a)), "mark": significance_mark(p)}


class _MemoStore:
    """A store whose per-user files are read once per report."""

    def __init__(self, store: ResultStore):
        self.store, self.cache = store, {}

    def load_per_user(self, job_id: str) -> dict:
        if job_id not in self.cache:
            self.cache[job_id] = self.store.load_per_user(job_id)
        return self.cache[job_id]


def _memo_store(store):
    return store if isinstance(store, _MemoStore) else _MemoStore(store)


# ----------------------------------------------------------------------------- Table 1 / Table 2
@dataclass
class MainTable:
    protocol: str
    datasets: list[str]
    metrics: tuple[str, ...]
    models: list[tuple[str, str]]
    stats: pd.DataFrame  # model, group, dataset, metric, mean, std, n, seeds
    improv: pd.DataFrame  # dataset, metric, proposed_mean, best_baseline, baseline_mean, improv_pct, t, p, mark, ...
    ratios: dict[str, float]
    records: list[dict]
    notes: list[str] = field(default_factory=list)

    def cell(self, model: str, dataset: str, metric: str) -> tuple[float, float, int]:
        """(mean, std, n seeds) of one cell; (nan, nan, 0) when it was not run."""
        if not hasattr(self, "_cells"):
            self._cells = {(m, d, k): (float(a), float(b), int(n)) for m, d, k, a, b, n in
                           zip(self.stats["model"], self.stats["dataset"], self.stats["metric"], self.stats["mean"],
                               self.stats["std"], self.stats["n"])}
        return self._cells.get((model, dataset, metric), (float("nan"), float("nan"), 0))

    def styles(self, dataset: str, metric: str) -> dict:
        """model -> "best" / "second" / "" within one column."""
        if not hasattr(self, "_styles"):
            self._styles = {}
            for (d, k), part in self.stats.groupby(["dataset", "metric"], sort=False):
                self._styles[(d, k)] = rank_styles(dict(zip(part["model"], part["mean"])))
        return self._styles.get((dataset, metric), {})

    def source(self, dataset: str) -> str:
        src = {r.get("data_source", "?") for r in self.records if r["dataset"] == dataset}
        return src.pop() if len(src) == 1 else "mixed"


def main_table(records: list[dict], protocol: str, store: ResultStore | None = None,
               metrics=TABLE_METRICS) -> MainTable | None:
    """Table 1 (``missing``) or Table 2 (``new_items``) from the records."""
    recs, ratios = at_official_ratio(records, JOB_PROTOCOL[protocol])
    rows = [{"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"], "metric": m,
             "seed": r.get("seed"), "value": float(r["test"][m])}
            for r in recs for m in metrics if _finite((r.get("test") or {}).get(m))]
    if not rows:
        return None
    stats = _aggregate(pd.DataFrame(rows), ["model", "group", "dataset", "metric"])
    datasets = dataset_order(recs)
    models = model_order(zip(stats["model"], stats["group"]))
    table = MainTable(protocol, datasets, tuple(metrics), models, stats, pd.DataFrame(), ratios, recs)
    table.improv = _improvement(table, store)
    return table


FLOOR_GROUP = "non-personalised"  # ItemPop: the sanity floor, shown in every table but no baseline to beat


def _is_baseline(model: str, group: str) -> bool:
    return model != PROPOSED_MODEL and group not in ("proposed", FLOOR_GROUP)


def _improvement(table: MainTable, store: ResultStore | None) -> pd.DataFrame:
    rows = []
    notes: dict[str, str] = {}
    store = None if store is None else _memo_store(store)
    for ds in table.datasets:
        for metric in table.metrics:
            s = table.stats[(table.stats["dataset"] == ds) & (table.stats["metric"] == metric)]
            prop = s[s["model"] == PROPOSED_MODEL]
            base = s[[_is_baseline(m, g) for m, g in zip(s["model"], s["group"])]]
            if prop.empty or base.empty:
                continue
            best = base.loc[base["mean"].idxmax()]
            pm, bm = float(prop["mean"].iloc[0]), float(best["mean"])
            row = {"protocol": table.protocol, "dataset": ds, "metric": metric, "proposed": PROPOSED_MODEL,
                   "proposed_mean": pm, "best_baseline": best["model"], "baseline_mean": bm,
                   "improv_pct": 100.0 * (pm - bm) / bm if bm > 0 else float("nan"),
                   "t": float("nan"), "p": float("nan"), "mark": "", "n_users": 0, "note": ""}
            if store is None:
                row["note"] = "no results store: significance not computed"
            else:
                a = [r for r in table.records if r["model"] == PROPOSED_MODEL and r["dataset"] == ds]
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
            if store is None:
                notes.setdefault("nostore", "Significance not computed: no results store with per-user vectors.")
            rows.append(row)
    table.notes.extend(notes.values())
    return pd.DataFrame(rows)


def _main_grids(t: MainTable, with_std: bool) -> Grid:
    title = TITLES.get(t.protocol, t.protocol) + (", mean ± std over seeds" if with_std else "")
    headers, spans = ["Model"], []
    for ds in t.datasets:
        spans.append((ds, len(t.metrics)))
        headers += [short_metric(m) for m in t.metrics]
    styles = {(ds, m): t.styles(ds, m) for ds in t.datasets for m in t.metrics}
    floor_models = [model for model, group in t.models if group == FLOOR_GROUP]
    floors = {(ds, m): max((t.cell(f, ds, m)[0] for f in floor_models if t.cell(f, ds, m)[2]), default=None)
              for ds in t.datasets for m in t.metrics}
    rows, sections, prev = [], {}, None
    md_group_col = []
    for model, group in t.models:
        if group != prev:
            sections[len(rows)] = group
            prev = group
            md_group_col.append(group)
        else:
            md_group_col.append("")
        cells = [Cell(model)]
        for ds in t.datasets:
            for m in t.metrics:
                mean, std, n = t.cell(model, ds, m)
                if n == 0:
                    cells.append(Cell("–"))
                else:
                    floor = floors[(ds, m)]
                    cells.append(Cell(_num(mean, std if with_std else None),
                                      "" if with_std else styles[(ds, m)].get(model, ""),
                                      below_floor=group != FLOOR_GROUP and floor is not None and mean < floor))
        rows.append(cells)
    rules = set()
    if not t.improv.empty and not with_std:
        imp = {(r.dataset, r.metric): r for r in t.improv.itertuples()}
        cells = [Cell("Improv.")]
        for ds in t.datasets:
            for m in t.metrics:
                r = imp.get((ds, m))
                if r is None or not np.isfinite(r.improv_pct):
                    cells.append(Cell("–"))
                else:
                    cells.append(Cell(f"{r.improv_pct:+.2f}%", mark=r.mark))
        rules.add(len(rows))
        rows.append(cells)
        md_group_col.append("")
    caption = _main_caption(t, with_std)
    return Grid(title, caption, headers, rows, 1, spans, sections, rules,
                label=f"tab:{t.protocol}{'-std' if with_std else ''}", md_group_col=md_group_col)


def _main_caption(t: MainTable, with_std: bool) -> str:
    what = ("Test metrics at the best validation epoch, mean ± sample std (ddof=1) over seeds." if with_std else
            "Test metrics at the best validation epoch, mean over seeds; best in bold, second underlined per column.")
    parts = [what, _ratio_caption(t.ratios, t.records), data_caption(t.records)]
    floor_models = [m for m, g in t.models if g == FLOOR_GROUP]
    if floor_models:
        parts.append(f"† below {', '.join(floor_models)} (most popular items in training, the non-personalised "
                     f"floor; not a baseline of Improv.).")
    if not with_std and not t.improv.empty:
        parts.append("Improv.: (DGMRec − strongest baseline) / strongest baseline, per column; significance of a "
                     "two-sided paired t-test on per-user vectors averaged over seeds, DGMRec vs the baseline with "
                     "the highest seed-mean (** p<0.01, * p<0.05, n.s. otherwise; "
                     "per-column baselines and p-values in " + f"{t.protocol}_improv.csv). "
                     + _baseline_summary(t.improv))
        parts.extend(t.notes)
    elif not with_std:
        parts.append("No Improv. row: " + ("DGMRec was not run." if PROPOSED_MODEL not in {m for m, _ in t.models}
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


def _main_csv(t: MainTable) -> pd.DataFrame:
    df = t.stats.copy()
    marks = []
    for r in df.itertuples():
        marks.append(t.styles(r.dataset, r.metric).get(r.model, ""))
    df["rank_mark"] = marks
    kinds = {r["dataset"]: _kind(r) for r in t.records}
    df.insert(0, "protocol", t.protocol)
    df.insert(4, "dataset_kind", df["dataset"].map(kinds))
    df.insert(5, "data_source", df["dataset"].map(t.source))
    df.insert(6, "missing_ratio", df["dataset"].map(t.ratios))
    return df


# ----------------------------------------------------------------------------- paper comparison
def load_paper_table(protocol: str) -> pd.DataFrame:
    """The published numbers as rows model, dataset_kind, metric, paper."""
    path = PAPER_DIR / PAPER_FILES[protocol]
    df = pd.read_csv(path)
    if protocol == "retrieval":
        long = df.melt(id_vars="metric", var_name="column", value_name="paper").dropna(subset=["paper"])
        long["dataset_kind"] = "baby"
        return long.reset_index(drop=True)
    long = df.drop(columns=["group"]).melt(id_vars="model", var_name="key", value_name="paper")
    split = long["key"].str.split("_", n=1, expand=True)
    long["dataset_kind"], long["metric"] = split[0], split[1]
    return long.drop(columns="key").dropna(subset=["paper"]).reset_index(drop=True)


def relative_difference(ours: float, paper: float) -> float:
    """100 · (ours − paper) / paper."""
    return 100.0 * (ours - paper) / paper if paper else float("nan")


def paper_comparison(t: MainTable) -> pd.DataFrame:
    """Ours vs published per (model, dataset, metric) for datasets that ran on real data."""
    paper = load_paper_table(t.protocol)
    kinds = {r["dataset"]: _kind(r) for r in t.records}
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
    headers = ["Model", "dataset"]
    spans = []
    for m in metrics:
        spans.append((short_metric(m), 3))
        headers += ["ours", "paper", "Δ%"]
    rows = []
    cell = {(r.model, r.dataset, r.metric): r for r in cmp.itertuples()}
    pairs = model_order(zip(cmp["model"], cmp["group"]))
    for ds in [d for d in t.datasets if d in set(cmp["dataset"])]:
        for model, _ in pairs:
            if not any((model, ds, m) in cell for m in metrics):
                continue
            row = [model, ds]
            for m in metrics:
                r = cell.get((model, ds, m))
                row += ["–"] * 3 if r is None else [_num(r.ours), _num(r.paper), f"{r.rel_diff_pct:+.1f}%"]
            rows.append(row)
    caption = ("Ours (mean over seeds) against the published numbers for the cells this run covers on real data; "
               "Δ% = 100·(ours − paper)/paper. "
               + data_caption([r for r in t.records if t.source(r["dataset"]) == "real"]))
    return Grid(f"{TITLES.get(t.protocol, t.protocol)}: ours vs the paper", caption, headers, rows, 2, spans,
                label=f"tab:{t.protocol}-paper")


# ----------------------------------------------------------------------------- missing level
LEVEL_KEY = re.compile(r"^test_level(\d+)$")


def level_label(level: int) -> str:
    return "full" if level == 0 else f"missing {level}"


def level_stats(records: list[dict], metrics=LEVEL_METRICS) -> tuple[pd.DataFrame, dict, dict, list[dict]]:
    """Per-level test metrics (mean/std over seeds) at each dataset's official ratio.

    Returns (stats: model, group, dataset, level, metric, mean, std, n, seeds;
    counts: dataset -> level -> (users, interactions) or None when they differ between runs;
    ratios; the records used).
    """
    recs, ratios = at_official_ratio(records, "missing")
    recs = [r for r in recs if any(LEVEL_KEY.match(k) for k in (r.get("extra") or {}))]
    rows, counts = [], {}
    for r in recs:
        for key, vals in (r.get("extra") or {}).items():
            mt = LEVEL_KEY.match(key)
            if not mt or not isinstance(vals, dict):
                continue
            lv = int(mt.group(1))
            for m in metrics:
                if _finite(vals.get(m)):
                    rows.append({"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"],
                                 "level": lv, "metric": m, "seed": r.get("seed"), "value": float(vals[m])})
            c = (r.get("extra_counts") or {}).get(key)
            if c is not None:
                counts.setdefault(r["dataset"], {}).setdefault(lv, set()).add(tuple(int(x) for x in c))
    stats = _aggregate(pd.DataFrame(rows), ["model", "group", "dataset", "level", "metric"])
    flat = {ds: {lv: (next(iter(v)) if len(v) == 1 else None) for lv, v in d.items()} for ds, d in counts.items()}
    return stats, flat, {d: ratios[d] for d in {r["dataset"] for r in recs}}, recs


def _level_grid(stats: pd.DataFrame, ds: str, counts: dict, ratios: dict, recs: list[dict],
                metrics=LEVEL_METRICS) -> Grid:
    part = stats[stats["dataset"] == ds]
    levels = sorted(int(x) for x in part["level"].unique())
    models = model_order(zip(part["model"], part["group"]))
    headers, spans = ["Model"], []
    for lv in levels:
        spans.append((level_label(lv), len(metrics)))
        headers += [short_metric(m) for m in metrics]
    cell = {(r.model, int(r.level), r.metric): r for r in part.itertuples()}
    styles = {(lv, m): rank_styles({mm: cell[(mm, lv, m)].mean for mm, _ in models if (mm, lv, m) in cell})
              for lv in levels for m in metrics}
    rows = []
    for model, _ in models:
        row = [Cell(model)]
        for lv in levels:
            for m in metrics:
                r = cell.get((model, lv, m))
                row.append(Cell("–") if r is None else Cell(_num(r.mean), styles[(lv, m)].get(model, "")))
        rows.append(row)
    cnt = counts.get(ds, {})
    cnt_txt = ", ".join(f"{level_label(lv)} {cnt[lv][1]} interactions / {cnt[lv][0]} users" if cnt.get(lv)
                        else f"{level_label(lv)} (counts differ between runs)" for lv in levels if lv in cnt)
    ds_recs = [r for r in recs if r["dataset"] == ds]
    caption = (f"{ds}: test interactions grouped by the number of missing modalities of their item (full = "
               f"all modalities observed); each user's ground truth restricted to that level, ranking unchanged; "
               f"mean over seeds, best bold, second underlined. Test interactions per level: {cnt_txt or 'n/a'}. "
               + _ratio_caption({ds: ratios[ds]}, ds_recs) + " " + data_caption(ds_recs))
    return Grid(f"Missing-level analysis, {ds}", caption, headers, rows, 1, spans, label=f"tab:level-{_slug(ds)}")


# ----------------------------------------------------------------------------- missing ratio
def ratio_stats(records: list[dict], metrics=LEVEL_METRICS) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Values per ratio (mean/std over seeds) and relative drops vs ratio 0.

    Drop(r) = 100·(M(0) − M(r))/M(0) computed per seed (seeds run at both ratios) and then
    averaged over those seeds.
    """
    recs = selected(records, "missing")
    rows = [{"model": r["model"], "group": r.get("group", "?"), "dataset": r["dataset"],
             "ratio": float(r.get("missing_ratio", 0.0)), "metric": m, "seed": r.get("seed"),
             "value": float(r["test"][m])}
            for r in recs for m in metrics if _finite((r.get("test") or {}).get(m))]
    df = pd.DataFrame(rows)
    values = _aggregate(df, ["model", "group", "dataset", "ratio", "metric"])
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
                                  "metric": metric, "drop": float(np.mean(per_seed)), "drop_std": _sd(per_seed),
                                  "n": len(per_seed)})
    drops_df = pd.DataFrame(drops, columns=["model", "group", "dataset", "ratio", "metric", "drop", "drop_std", "n"])
    return values, drops_df, recs


def _ratio_grids(values: pd.DataFrame, drops: pd.DataFrame, ds: str, recs: list[dict],
                 metrics=LEVEL_METRICS) -> list[Grid]:
    part = values[values["dataset"] == ds]
    ratios = sorted(part["ratio"].unique())
    models = model_order(zip(part["model"], part["group"]))
    cell = {(r.model, r.ratio, r.metric): r for r in part.itertuples()}
    headers, spans = ["Model"], []
    for m in metrics:
        spans.append((short_metric(m), len(ratios)))
        headers += [f"r={r:g}" for r in ratios]
    styles = {(r, m): rank_styles({mm: cell[(mm, r, m)].mean for mm, _ in models if (mm, r, m) in cell})
              for r in ratios for m in metrics}
    rows = []
    for model, _ in models:
        row = [Cell(model)]
        for m in metrics:
            for r in ratios:
                c = cell.get((model, r, m))
                row.append(Cell("–") if c is None else Cell(_num(c.mean), styles[(r, m)].get(model, "")))
        rows.append(row)
    ds_recs = [r for r in recs if r["dataset"] == ds]
    kind = _kind(ds_recs[0]) if ds_recs else ds
    cap = (f"{ds}: test metrics per missing ratio r (r=0: no masking; official ratio {official_ratio(kind):g}), "
           f"mean over seeds, best bold, second underlined per column. " + data_caption(ds_recs))
    grids = [Grid(f"Missing-ratio analysis, {ds}", cap, headers, rows, 1, spans, label=f"tab:ratio-{_slug(ds)}")]
    dpart = drops[drops["dataset"] == ds]
    if not dpart.empty:
        dr = sorted(dpart["ratio"].unique())
        dcell = {(r.model, r.ratio, r.metric): r for r in dpart.itertuples()}
        headers, spans = ["Model"], []
        for m in metrics:
            spans.append((f"drop of {short_metric(m)} (%)", len(dr)))
            headers += [f"r={r:g}" for r in dr]
        rows = []
        for model, _ in models:
            row = [Cell(model)]
            for m in metrics:
                for r in dr:
                    c = dcell.get((model, r, m))
                    row.append(Cell("–") if c is None else Cell(f"{c.drop:.2f}"))
            rows.append(row)
        cap = (f"{ds}: relative drop vs r=0, 100·(M(0) − M(r))/M(0) in %, computed per seed and averaged over the "
               f"seeds run at both ratios (lower is more robust). " + data_caption(ds_recs))
        grids.append(Grid(f"Relative drop vs ratio 0, {ds}", cap, headers, rows, 1, spans,
                          label=f"tab:ratio-drop-{_slug(ds)}"))
    return grids


# ----------------------------------------------------------------------------- retrieval
RETRIEVAL_KEY = re.compile(r"^(missing\d+)_([A-Za-z0-9]+)_hit@(\d+)(?:_([a-z]+2[a-z]+))?$")


def retrieval_stats(records: list[dict]) -> tuple[pd.DataFrame, dict, list[dict]]:
    """Cross-modal Hit@K (``extra["retrieval"]``) mean/std over seeds per dataset and model.

    Keys ``<missing1|missing2>_<method>_hit@<K>[_<direction>]``; columns are ``<group>_<method>``.
    """
    recs, ratios = at_official_ratio(records, "missing")
    recs = [r for r in recs if isinstance((r.get("extra") or {}).get("retrieval"), dict)]
    rows, queries = [], {}
    for r in recs:
        for key, v in r["extra"]["retrieval"].items():
            mt = RETRIEVAL_KEY.match(key)
            if mt and _finite(v):
                grp, method, k, direction = mt.groups()
                rows.append({"dataset": r["dataset"], "model": r["model"], "group": r.get("group", "?"),
                             "column": f"{grp}_{method.lower()}",
                             "metric": f"hit@{k}" + (f" ({direction})" if direction else ""),
                             "k": int(k), "direction": direction or "", "seed": r.get("seed"), "value": float(v)})
            elif key.startswith("n_queries_") and _finite(v):
                queries.setdefault(r["dataset"], {}).setdefault(key[len("n_queries_"):], set()).add(int(v))
    stats = _aggregate(pd.DataFrame(rows), ["dataset", "model", "group", "column", "metric", "k", "direction"])
    return stats, queries, recs


def _retrieval_column_order(cols) -> list[str]:
    def key(c):
        grp, _, method = c.partition("_")
        return (grp, 0 if method == "nn" else 1 if method == "dgmrec" else 2, method)
    return sorted(set(cols), key=key)


def _retrieval_grids(stats: pd.DataFrame, queries: dict, recs: list[dict]) -> list[Grid]:
    grids = []
    for ds in dataset_order(recs):
        for model in [m for m, _ in model_order(zip(stats["model"], stats["group"]))]:
            part = stats[(stats["dataset"] == ds) & (stats["model"] == model)]
            if part.empty:
                continue
            cols = _retrieval_column_order(part["column"])
            metrics = sorted(set(part["metric"]), key=lambda m: ("(" in m, m.split(" (")[1] if "(" in m else "",
                                                                  int(m.split("@")[1].split(" ")[0])))
            cell = {(r.column, r.metric): r for r in part.itertuples()}
            rows = [[m] + [_num(cell[(c, m)].mean) if (c, m) in cell else "–" for c in cols] for m in metrics]
            ds_recs = [r for r in recs if r["dataset"] == ds and r["model"] == model]
            q = queries.get(ds, {})
            q_txt = ", ".join(f"{k} {'/'.join(map(str, sorted(v)))}" for k, v in sorted(q.items()))
            cap = (f"{ds}, {model}: cross-modal retrieval of generated features. Queries: items missing one "
                   f"(missing1) or two (missing2) modalities; the generated feature is ranked by cosine against the "
                   f"true features of all items; Hit@K = true feature in the top K; nn = nearest-neighbour baseline "
                   f"(true feature of the most similar fully observed item in the observed modalities; none for "
                   f"items missing every observed modality). Mean over seeds."
                   + (f" Queries per group and modality: {q_txt}." if q_txt else "") + " " + data_caption(ds_recs))
            grids.append(Grid(f"Cross-modal retrieval, {ds}" + ("" if model == PROPOSED_MODEL else f" ({model})"),
                              cap, ["metric"] + cols, rows, 1, label=f"tab:retrieval-{_slug(ds)}"))
    return grids


def retrieval_paper_comparison(stats: pd.DataFrame, recs: list[dict]) -> pd.DataFrame:
    paper = load_paper_table("retrieval")
    real = {r["dataset"] for r in recs if r.get("data_source") == "real" and _kind(r) == "baby"
            and r["model"] == PROPOSED_MODEL and same_ratio(r.get("missing_ratio", 0.0), official_ratio("baby"))}
    s = stats[stats["dataset"].isin(real) & (stats["model"] == PROPOSED_MODEL) & (stats["direction"] == "")]
    if s.empty:
        return pd.DataFrame()
    m = s.merge(paper, on=["column", "metric"], how="inner")
    m["rel_diff_pct"] = [relative_difference(o, p) for o, p in zip(m["mean"], m["paper"])]
    return m.rename(columns={"mean": "ours", "std": "ours_std", "n": "n_seeds"})[
        ["dataset", "model", "column", "metric", "ours", "ours_std", "n_seeds", "paper", "rel_diff_pct"]]


# ----------------------------------------------------------------------------- cost
def cost_frame(records: list[dict]) -> pd.DataFrame:
    """Per (protocol, dataset, model): means over seeds of the timing and memory fields."""
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
    num = ["s_per_epoch", "epochs_to_best", "epochs_run", "train_seconds", "eval_seconds", "peak_memory_mb",
           "recall@20"]
    df[num] = df[num].apply(pd.to_numeric, errors="coerce")
    out = df.groupby(["protocol", "dataset", "model", "group"], sort=False)[num].mean().reset_index()
    out["n"] = df.groupby(["protocol", "dataset", "model", "group"], sort=False)["seed"].count().to_numpy()
    order = {mg: i for i, mg in enumerate(model_order(zip(out["model"], out["group"])))}
    dorder = {d: i for i, d in enumerate(dataset_order(records))}
    out["_k"] = [(p, dorder.get(d, 99), order[(m, g)]) for p, d, m, g in zip(out["protocol"], out["dataset"],
                                                                            out["model"], out["group"])]
    return out.sort_values("_k").drop(columns="_k").reset_index(drop=True)


def _g3(x) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _cost_grid(cost: pd.DataFrame, recs: list[dict]) -> Grid:
    headers = ["protocol", "dataset", "Model", "s/epoch", "epochs to best", "epochs run", "train s", "eval s",
               "peak MB", "R@20"]
    rows = [[r["protocol"], r["dataset"], r["model"], _g3(r["s_per_epoch"]), _g3(r["epochs_to_best"]),
             _g3(r["epochs_run"]), _g3(r["train_seconds"]), _g3(r["eval_seconds"]), _g3(r["peak_memory_mb"]),
             _num(r["recall@20"])] for r in cost.to_dict("records")]
    cap = ("Cost per model and dataset, mean over seeds of the selected (best-validation) setting: wall-clock seconds "
           "per training epoch, epochs to the best validation (best_epoch + 1), epochs run (early stopping), "
           "training seconds (s/epoch × epochs run), seconds per test evaluation, peak resident memory of the worker "
           "(MB), test R@20. " + data_caption(recs))
    return Grid("Training and evaluation cost", cap, headers, rows, 3, label="tab:cost")


# ----------------------------------------------------------------------------- the report
def write_report(records: list[dict], results_dir: str | Path, protocols=None, store: ResultStore | None = None,
                 figures: bool = True) -> list[Path]:
    """Write the tables, figures and ``index.md`` of the requested protocols; return the files written.

    ``store`` supplies per-user vectors for significance tests; by default the store in
    ``results_dir`` when it holds per-user files.
    """
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    if store is None and (out / "per_user").is_dir():
        store = ResultStore(out)
    records, superseded = latest_settings(_unique_jobs(records))
    if isinstance(protocols, str):
        protocols = [protocols]
    if protocols is None:
        protocols = present_protocols(records)
    elif "all" in protocols:
        protocols = PROTOCOL_NAMES
    unknown = sorted(set(protocols) - set(PROTOCOL_NAMES))
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; known: {', '.join(PROTOCOL_NAMES)}, all")
    protocols = [p for p in PROTOCOL_NAMES if p in set(protocols)]
    written: list[Path] = []
    index: list[str] = []  # markdown lines
    notes: list[str] = []
    if figures:
        from benchmarks.report import figures as fig_lib
    else:
        fig_lib = None
    from benchmarks.report import groups as report_groups
    from benchmarks.report import imputation as report_imputation
    from benchmarks.report import significance as report_stats
    every_record = records
    records, axes_notes = report_axes.primary_records(records)  # one imputation/mechanism in the paper layouts
    if set(protocols) - {"imputation"}:
        notes.extend(axes_notes)

    for protocol in protocols:
        before = len(written)
        if protocol in ("missing", "new_items"):
            sec = _report_main(records, protocol, out, store, written, notes)
            sec += report_stats.section(records, protocol, out, store, written)
        elif protocol == "missing_level":
            sec = _report_level(records, out, written, fig_lib)
        elif protocol == "missing_ratio":
            sec = _report_ratio(records, out, written, fig_lib)
        elif protocol == "imputation":
            sec = report_imputation.section(every_record, out, written, fig_lib)
        else:
            sec = _report_retrieval(records, out, written, notes)
        index.append(f"## {_SECTION_TITLES[protocol]}\n")
        index.extend(sec)
        if len(written) == before and not sec:
            index.append("No results for this protocol in this run.\n")
        index.append("")

    groups_sec = report_groups.section(records, protocols, out, written, fig_lib)
    if groups_sec:
        index.append("## Per-group results and exposure\n")
        index.extend(groups_sec)
        index.append("")

    # cost over the records behind the requested tables
    cost_recs = []
    job_protocols = {JOB_PROTOCOL[p] for p in protocols}
    for jp in sorted(job_protocols):
        cost_recs.extend(at_official_ratio(records, jp)[0])
    cost = cost_frame(cost_recs)
    if not cost.empty:
        g = _cost_grid(cost, cost_recs)
        _write_grids([g], out / "cost", written)
        _write_csv(cost, out / "cost.csv", written)
        index.append("## Cost\n")
        index.append(_links(out, "cost", ("md", "tex", "csv")))
        if fig_lib is not None:
            for jp, part in cost.groupby("protocol", sort=False):
                if part["train_seconds"].notna().any() and part["recall@20"].notna().any():
                    files = fig_lib.cost_scatter(part, f"Test R@20 vs training time ({jp} protocol; "
                                                       f"{data_label(cost_recs)})",
                                                 out / f"cost_{_slug(jp)}")
                    written.extend(files)
                    index.append(_figure_links(files))
        index.append("")

    failed = [r for r in every_record if r.get("status") == "failed"]
    head = ["# Results in this folder", ""]
    ok = [r for r in every_record if r.get("status") == "ok"]
    head.append(f"{len(ok)} finished jobs, {len(failed)} failed; protocols: {', '.join(protocols) or 'none'}. "
                f"The tables cover every run made into this folder (its `results.jsonl`); every table and "
                f"figure is linked below.")
    if superseded:
        by = sorted({(r["model"], r["dataset"], r["protocol"]) for r in superseded})
        notes.append(f"{len(superseded)} record(s) of earlier runs with other settings of the same cells are left "
                     f"out of the tables (a newer run replaced them): "
                     + "; ".join(f"{m} on {d} ({p})" for m, d, p in by) + ".")
    if ok:
        head.append("")
        head.append(data_caption(select_grid(ok)))
    head.append("")
    if failed:
        by = {}
        for r in failed:
            by.setdefault((r["model"], r["dataset"]), []).append(str(r.get("seed")))
        notes.append("Failed jobs (excluded from every table): " + "; ".join(
            f"{m} on {d} (seeds {', '.join(s)})" for (m, d), s in sorted(by.items())) + ".")
    body = head + index
    if notes:
        body += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    idx = out / "index.md"
    idx.write_text("\n".join(body) + "\n")
    written.append(idx)
    return written


write_tables = write_report  # the former name

_SECTION_TITLES = {"missing": "Table 1: missing modalities (`missing`)",
                   "new_items": "Table 2: missing modalities and new items (`new_items`)",
                   "missing_level": "Missing-level analysis (`missing_level`)",
                   "missing_ratio": "Missing-ratio analysis (`missing_ratio`)",
                   "retrieval": "Cross-modal retrieval (`retrieval`)",
                   "imputation": "Imputation methods (`imputation`)"}


def present_protocols(records: list[dict]) -> list[str]:
    jps = {r.get("protocol") for r in records if r.get("status") == "ok"}
    out = [p for p in ("missing", "new_items") if p in jps]
    if "missing" in jps:
        if any(any(LEVEL_KEY.match(k) for k in (r.get("extra") or {})) for r in records):
            out.append("missing_level")
        ratios: dict[str, set] = {}
        for r in records:
            if r.get("protocol") == "missing" and r.get("status") == "ok":
                ratios.setdefault(r["dataset"], set()).add(r.get("missing_ratio"))
        if any(len(v) > 1 for v in ratios.values()):
            out.append("missing_ratio")
        if any("retrieval" in (r.get("extra") or {}) for r in records):
            out.append("retrieval")
        if len({report_axes.imputation_of(r) for r in records if r.get("protocol") == "missing"
                and report_axes.uses_features(r)}) > 1:
            out.append("imputation")
    return out


def _links(out: Path, stem: str, exts, label: str | None = None) -> str:
    files = [f"[{stem}.{e}]({stem}.{e})" for e in exts if (out / f"{stem}.{e}").exists()]
    return f"- {label + ': ' if label else ''}" + " · ".join(files)


def _figure_links(files: list[Path]) -> str:
    png = [f for f in files if f.suffix == ".png"]
    pdf = [f for f in files if f.suffix == ".pdf"]
    lines = []
    for p in png:
        alt = p.stem.replace("_", " ")
        extra = "".join(f" · [{q.name}]({q.name})" for q in pdf if q.stem == p.stem)
        lines.append(f"- figure [{p.name}]({p.name}){extra}\n\n  ![{alt}]({p.name})")
    return "\n".join(lines)


def _report_main(records, protocol, out, store, written, notes) -> list[str]:
    t = main_table(records, protocol, store)
    if t is None:
        return []
    _write_grids([_main_grids(t, with_std=False)], out / protocol, written)
    _write_csv(_main_csv(t), out / f"{protocol}.csv", written)
    _write_grids([_main_grids(t, with_std=True)], out / f"{protocol}_std", written)
    _write_csv(t.stats[["model", "group", "dataset", "metric", "mean", "std", "n", "seeds"]],
               out / f"{protocol}_std.csv", written)
    lines = [_links(out, protocol, ("md", "tex", "csv"), "table (mean over seeds, bold/underline, Improv.)"),
             _links(out, f"{protocol}_std", ("md", "tex", "csv"), "mean ± std over seeds")]
    if not t.improv.empty:
        _write_csv(t.improv, out / f"{protocol}_improv.csv", written)
        lines.append(_links(out, f"{protocol}_improv", ("csv",), "improvement and significance per column"))
    for n in t.notes:
        notes.append(f"{protocol}: {n}")
    # paper comparison
    cmp = paper_comparison(t)
    not_real = {ds: t.source(ds) for ds in t.datasets if t.source(ds) != "real"}
    if not cmp.empty:
        _write_grids([_paper_grid(t, cmp)], out / f"{protocol}_vs_paper", written)
        _write_csv(cmp, out / f"{protocol}_vs_paper.csv", written)
        lines.append(_links(out, f"{protocol}_vs_paper", ("md", "tex", "csv"), "ours vs the paper"))
    elif not not_real:
        lines.append("- No paper comparison: no model/dataset/metric of this run is among the published cells.")
    if not_real:
        why = "; ".join(f"{ds} ran on {SOURCE_TEXT.get(s, s)}" for ds, s in not_real.items())
        lines.append(f"- No paper comparison for {', '.join(not_real)}: {why}. The published numbers were measured on "
                     f"the real datasets; reference data (surrogate features) and synthetic replicas give numbers "
                     f"that are not comparable to them.")
    return lines + [""]


def _report_level(records, out, written, fig_lib) -> list[str]:
    stats, counts, ratios, recs = level_stats(records)
    if stats.empty:
        return ["No per-level results: the `missing` records carry no `extra.test_level*` metrics.", ""]
    datasets = [d for d in dataset_order(recs) if d in set(stats["dataset"])]
    grids = [_level_grid(stats, ds, counts, ratios, recs) for ds in datasets]
    _write_grids(grids, out / "missing_level", written)
    csv = stats.copy()
    csv["level_label"] = csv["level"].map(level_label)
    pairs = [counts.get(d, {}).get(lv) or (None, None) for d, lv in zip(csv["dataset"], csv["level"])]
    csv["users"] = [u for u, _ in pairs]
    csv["interactions"] = [n for _, n in pairs]
    _write_csv(csv, out / "missing_level.csv", written)
    lines = [_links(out, "missing_level", ("md", "tex", "csv"), "tables (one per dataset)")]
    if fig_lib is not None:
        for ds in datasets:
            part = stats[stats["dataset"] == ds]
            cnt = counts.get(ds, {})
            labels = {int(lv): level_label(int(lv)) + (f" ({cnt[int(lv)][1]})" if cnt.get(int(lv)) else "")
                      for lv in part["level"].unique()}
            files = fig_lib.level_bars(part, labels, f"{ds} ({data_label(recs, ds)}): test metrics by missing level "
                                                     f"of the test item "
                                                     f"(ratio {ratios[ds]:g}, mean over seeds)",
                                       out / f"missing_level_{_slug(ds)}")
            written.extend(files)
            lines.append(_figure_links(files))
    return lines + [""]


def _report_ratio(records, out, written, fig_lib) -> list[str]:
    values, drops, recs = ratio_stats(records)
    if values.empty:
        return []
    datasets = [d for d in dataset_order(recs) if d in set(values["dataset"])]
    grids = [g for ds in datasets for g in _ratio_grids(values, drops, ds, recs)]
    _write_grids(grids, out / "missing_ratio", written)
    csv = values.merge(drops[["model", "dataset", "ratio", "metric", "drop", "drop_std"]],
                       on=["model", "dataset", "ratio", "metric"], how="left")
    csv = csv.rename(columns={"drop": "drop_pct_vs_r0", "drop_std": "drop_pct_std"})
    _write_csv(csv, out / "missing_ratio.csv", written)
    lines = [_links(out, "missing_ratio", ("md", "tex", "csv"), "tables (values and relative drops per dataset)")]
    no_zero = [ds for ds in datasets if not (values[values["dataset"] == ds]["ratio"] == 0).any()]
    if no_zero:
        lines.append(f"- No relative drop for {', '.join(no_zero)}: ratio 0 (no masking) was not run.")
    if fig_lib is not None:
        for ds in datasets:
            v = values[values["dataset"] == ds]
            if v["ratio"].nunique() < 2:
                lines.append(f"- No ratio figure for {ds}: only one ratio was run.")
                continue
            files = fig_lib.ratio_lines(v, drops[drops["dataset"] == ds],
                                        f"{ds} ({data_label(recs, ds)}): accuracy vs missing ratio (mean over seeds)",
                                        out / f"missing_ratio_{_slug(ds)}")
            written.extend(files)
            lines.append(_figure_links(files))
    return lines + [""]


def _report_retrieval(records, out, written, notes) -> list[str]:
    stats, queries, recs = retrieval_stats(records)
    if stats.empty:
        return ["No retrieval results: no selected `missing` record carries `extra.retrieval` "
                "(it needs a model with generated features, such as DGMRec).", ""]
    _write_grids(_retrieval_grids(stats, queries, recs), out / "retrieval", written)
    _write_csv(stats, out / "retrieval.csv", written)
    lines = [_links(out, "retrieval", ("md", "tex", "csv"), "tables")]
    cmp = retrieval_paper_comparison(stats, recs)
    if not cmp.empty:
        cols = _retrieval_column_order(cmp["column"])
        headers, spans, rows = ["dataset", "metric"], [], []
        for c in cols:
            spans.append((c, 3))
            headers += ["ours", "paper", "Δ%"]
        cell = {(r.dataset, r.metric, r.column): r for r in cmp.itertuples()}
        for ds in dict.fromkeys(cmp["dataset"]):
            for m in sorted(set(cmp["metric"]), key=lambda m: int(m.split("@")[1])):
                row = [ds, m]
                for c in cols:
                    r = cell.get((ds, m, c))
                    row += ["–"] * 3 if r is None else [_num(r.ours), _num(r.paper), f"{r.rel_diff_pct:+.1f}%"]
                rows.append(row)
        used = [r for r in recs if r["dataset"] in set(cmp["dataset"]) and r["model"] == PROPOSED_MODEL]
        g = Grid("Cross-modal retrieval: ours vs the paper (Baby)",
                 "Ours (mean over seeds) against the published Hit@K; Δ% = 100·(ours − paper)/paper. "
                 + data_caption(used), headers, rows, 2, spans, label="tab:retrieval-paper")
        _write_grids([g], out / "retrieval_vs_paper", written)
        _write_csv(cmp, out / "retrieval_vs_paper.csv", written)
        lines.append(_links(out, "retrieval_vs_paper", ("md", "tex", "csv"), "ours vs the paper"))
    compared = set(cmp["dataset"]) if not cmp.empty else set()
    src = {r["dataset"]: (_kind(r), r.get("data_source")) for r in recs if r["dataset"] not in compared}
    if src:
        why = "; ".join(f"{ds} is {k} on {SOURCE_TEXT.get(s, s)}" for ds, (k, s) in src.items())
        lines.append(f"- No paper comparison for {', '.join(src)}: the paper reports retrieval for the real Baby "
                     f"dataset only ({why}).")
    return lines + [""]


def summary_frame(records: list[dict], metrics=TABLE_METRICS) -> pd.DataFrame:
    """One row per (protocol, dataset, ratio, model, metric) with mean, std and seed count."""
    rows = [{"protocol": r["protocol"], "dataset": r["dataset"], "ratio": r.get("missing_ratio"), "model": r["model"],
             "group": r.get("group"), "metric": m, "seed": r.get("seed"), "value": float(r["test"][m])}
            for r in select_grid(records) for m in metrics if _finite((r.get("test") or {}).get(m))]
    return _aggregate(pd.DataFrame(rows), ["protocol", "dataset", "ratio", "model", "group", "metric"])


if __name__ == "__main__":  # python -m benchmarks.report.tables [results-dir] [protocol ...]
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results")
    st = ResultStore(d)
    for p in write_report(st.records(), d, sys.argv[2:] or None, st):
        print(p)
