"""Captions: what data a table or figure shows (real, reference, synthetic replica), its seeds,
reference-defect setting, missing-data axes, selection rule, schedule and missing ratios."""
from __future__ import annotations

from benchmarks.report import axes
from benchmarks.report.presentation import short_metric, source_text
from benchmarks.report.selection import dataset_kind, dataset_order, official_ratio, same_ratio
from benchmarks.report.stats import finite


def data_label(records: list[dict], dataset: str | None = None) -> str:
    """What a figure's data is, for its title: "SYNTHETIC replica", "reference data (surrogate
    features)", "real data", or several of them joined."""
    sources = sorted({r.get("data_source", "?") for r in records if dataset is None or r["dataset"] == dataset})
    return " + ".join(source_text(x) for x in sources)


def data_caption(records: list[dict]) -> str:
    """Which data (per dataset), seeds, defect setting, missing-data axes, selection rule and schedule."""
    if not records:
        return "No records."
    parts = []
    for ds in dataset_order(records):
        recs = [r for r in records if r["dataset"] == ds]
        text = data_label(recs)
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
    text = (f"Data: {'; '.join(parts)}. Seeds: {', '.join(map(str, seeds))} ({n_txt}). "
            f"{fixed_txt[0].upper() + fixed_txt[1:]}. {axes.axes_caption(records)} "
            f"Grid settings chosen by validation {'/'.join(vmetrics)}; "
            f"test metrics at the best validation epoch.{_schedule(records)}")
    if any(r.get("data_source") == "synthetic" for r in records):
        text += " SYNTHETIC REPLICA DATA: not comparable to the paper."
    elif any(r.get("data_source") == "reference" for r in records):
        text += " Reference data uses surrogate features: not comparable to the paper."
    return text


def _schedule(records: list[dict]) -> str:
    """" Schedule: at most E epochs (...), evaluated every ..., stopping after ...; how runs ended."
    (empty when no record names its epochs)."""
    configs = [r.get("config") or {} for r in records]
    epochs = sorted({int(c["epochs"]) for c in configs if finite(c.get("epochs"))})
    if not epochs:
        return ""
    text = f" Schedule: at most {epochs[0]} epochs" if len(epochs) == 1 else \
        f" Schedule: at most {epochs[0]}–{epochs[-1]} epochs"
    text += " (early stopping on validation)"
    patience = sorted({(int(c["eval_step"]), int(c["stopping_step"])) for c in configs
                       if finite(c.get("eval_step")) and finite(c.get("stopping_step"))})
    if len(patience) == 1:
        step, stop = patience[0]
        text += (f", evaluated every {'epoch' if step == 1 else f'{step} epochs'}, stopping after more than "
                 f"{stop} evaluations without improvement")
    reasons = [r.get("stop_reason") for r in records if r.get("stop_reason") in ("early_stopping", "epoch_budget")]
    if reasons:
        budget = reasons.count("epoch_budget")
        text += (f"; {reasons.count('early_stopping')} of {len(reasons)} trained runs stopped early"
                 + (f", {budget} reached the epoch budget" if budget else ""))
    if any(c.get("grid_limit") for c in configs):
        text += "; first setting of each grid only"
    return text + "."


def ratio_caption(ratios: dict[str, float], records: list[dict]) -> str:
    """"Missing ratio: tiktok 0.6 (official), ..." for the ratio each dataset's table uses."""
    if not ratios:
        return ""
    kinds = {r["dataset"]: dataset_kind(r) for r in records}
    parts = []
    for ds, r in ratios.items():
        official = official_ratio(kinds.get(ds, ds))
        tag = "official" if same_ratio(r, official) else f"official {official:g} not run"
        parts.append(f"{ds} {r:g} ({tag})")
    return "Missing ratio: " + ", ".join(parts) + "."
