"""Fidelity check: our models against the official implementation on identical inputs.

    python -m benchmarks.experiments.fidelity                       # every model that has an official figure
    python -m benchmarks.experiments.fidelity --models DGMRec,BM3 --seeds 999,42,2023,2024,2025
    python -m benchmarks.experiments.fidelity --report-only         # tabulate what the store already holds

Runs (or resumes) the ``missing`` protocol on the reference TikTok dataset
(``../shared/data/reference``) with the official schedule (15 epochs, evaluation after every
epoch), one job per model and seed, through the ordinary runner, and puts the mean test
Recall@20 / NDCG@20 over seeds next to the official figures of
``tiktok-official-results.json``.

Most official figures are a single seed, and one run of a recommender on TikTok moves by 5-15%
with the seed, so the ratio alone cannot tell a defect from noise. Each row therefore also gives
``z``: the gap divided by its standard error, ``sqrt(s²/n_ours + s²/n_official)``, where ``s``
is the seed standard deviation (pooled over our and the official seeds when the official file
has more than one). The verdict is ``ok`` when the ratio lies within 5%, ``noise`` when it does
not but |z| < 2 (the gap is within two standard errors of the seed spread), and ``GAP``
otherwise. The epoch-0 training loss of seed 999 is compared as well: equal first-epoch losses
mean equal initialisation, losses and batches; where later curves part ways is training
dynamics, not set-up; the largest relative loss difference over the epochs and our test
Recall@20 at the official's best epoch (seed 999 both) show whether a gap comes from the
dynamics or from which epoch validation picked. The table is written to ``<out>/fidelity.md``.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmarks.experiments.bench_common import EXTRA_SEEDS, OFFICIAL_RESULTS, REFERENCE, official_records, parse_seeds, publish
from benchmarks.report.tables import select_grid
from benchmarks.run.store import ResultStore
from data_prep.errors import DataError

METRICS = ("recall@20", "ndcg@20")
TOLERANCE = 0.05
Z_LIMIT = 2.0


def official_runs(path: Path = OFFICIAL_RESULTS, extra: tuple[Path, ...] = ()) -> dict[str, list[dict]]:
    """The official ``ok`` missing-protocol runs per model (``partial`` grids count: their
    recorded setting finished), from the official file and then from ``extra`` files of further
    official seeds (``benchmarks.experiments.official_runs``); a model and seed already seen is not taken twice."""
    out: dict[str, list[dict]] = {}
    seen = set()
    for source in (path, *extra):
        for rec in official_records(source):
            key = (rec["model"], rec.get("seed"))
            if key in seen:
                continue
            if rec.get("protocol") == "missing" and rec.get("test") and rec.get("status") in ("ok", "partial"):
                seen.add(key)
                out.setdefault(rec["model"], []).append(rec)
    return out


def official_setting(rec: dict) -> dict:
    """The grid setting an official run reports, from its ``grid_selected`` string
    ``"['reg_weight', 'missing_imputation', 'seed']=(0.01, 1, 999)"`` (empty when not a grid)."""
    import ast
    text = rec.get("grid_selected")
    if not text or "=" not in text:
        return {}
    keys, values = text.split("=", 1)
    keys, values = ast.literal_eval(keys.strip()), ast.literal_eval(values.strip())
    values = values if isinstance(values, tuple) else (values,)
    return {k: v for k, v in zip(keys, values) if k not in ("seed", "missing_imputation")}


def _matches(rec: dict, setting: dict) -> bool:
    cfg = rec.get("config", {})
    return all(k not in rec.get("grid_keys", []) or
               (isinstance(cfg.get(k), (int, float)) and math.isclose(float(cfg[k]), float(v), rel_tol=1e-9))
               or cfg.get(k) == v for k, v in setting.items())


def compare(ours: list[float], official: list[float]) -> dict:
    """Mean, seed spread, ratio, z and verdict of one metric (see the module docstring)."""
    a, b = np.asarray(ours, float), np.asarray(official, float)
    mo, mb = float(a.mean()), float(b.mean())
    dev = np.concatenate([a - mo, b - mb]) if len(b) > 1 else a - mo
    dof = len(a) - 1 + (len(b) - 1 if len(b) > 1 else 0)
    s = math.sqrt(float((dev ** 2).sum()) / dof) if dof > 0 else float("nan")
    se = s * math.sqrt(1.0 / len(a) + 1.0 / len(b)) if dof > 0 else float("nan")
    ratio = mo / mb if mb else float("nan")
    z = (mo - mb) / se if se and se > 0 else float("nan")
    if abs(ratio - 1.0) <= TOLERANCE:
        verdict = "ok"
    elif math.isfinite(z) and abs(z) < Z_LIMIT:
        verdict = "noise"
    else:
        verdict = "GAP"
    return {"ours": mo, "sd": s, "n": len(a), "official": mb, "n_official": len(b), "ratio": ratio,
            "z": z, "verdict": verdict}


def fidelity_rows(records: list[dict], official: dict[str, list[dict]]) -> list[dict]:
    recs = [r for r in records if r.get("protocol") == "missing" and r.get("status") == "ok"
            and r.get("dataset_kind") == "tiktok" and r.get("data_source") == "reference"]
    by_model: dict[str, list[dict]] = {}
    # one record per model, seed and setting: the newest (a retried or rerun job counts once)
    newest: dict[tuple, dict] = {}
    for r in recs:
        setting = tuple(str(r.get("config", {}).get(k)) for k in r.get("grid_keys") or [])
        newest[(r["model"], r["seed"], setting)] = r
    for r in newest.values():
        by_model.setdefault(r["model"], []).append(r)
    rows = []
    for model, all_runs in by_model.items():
        offs = official.get(model)
        if not offs:
            continue
        # A grid is compared at the setting the official figure comes from (the official code
        # picks by test, or, for GRCN, only its first setting finished); without one, at ours
        # picked by validation.
        setting = official_setting(offs[0])
        grid = any(r.get("grid_size", 1) > 1 for r in all_runs)
        if grid and setting:
            runs = [r for r in all_runs if _matches(r, setting)]
            chosen = "official's: " + ", ".join(f"{k}={v}" for k, v in setting.items()
                                                 if any(k in r.get("grid_keys", []) for r in all_runs))
        else:
            runs = select_grid(all_runs)
            chosen = "by validation" if grid else "–"
        if not runs:
            continue
        row = {"model": model, "grid setting": chosen,
               "seeds": ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))}
        for m in METRICS:
            c = compare([r["test"][m] for r in runs], [o["test"][m] for o in offs])
            tag = "R@20" if m.startswith("recall") else "N@20"
            row.update({f"ours {tag}": f"{c['ours']:.4f} ± {c['sd']:.4f}" if c["n"] > 1 else f"{c['ours']:.4f}",
                        f"official {tag}": f"{c['official']:.4f} (n={c['n_official']})",
                        f"ratio {tag}": round(c["ratio"], 3), f"z {tag}": round(c["z"], 2),
                        f"{tag}": c["verdict"]})
        ours0 = [r for r in runs if r["seed"] == 999 and r.get("curve")]
        off0 = [o for o in offs if o.get("seed") == 999 and o.get("curve")]
        if ours0 and off0:
            row.update(curve_comparison(ours0[0], off0[0]))
        rows.append(row)
    return rows


def curve_comparison(ours: dict, official: dict) -> dict:
    """Seed 999 against the official seed-999 run, epoch by epoch: the epoch-0 losses, the largest
    relative loss difference over the epochs both ran, and our test Recall@20 at the official's
    best epoch over the official's figure (separates training dynamics from the choice of epoch)."""
    a = {c["epoch"]: c for c in ours["curve"]}
    b = {c["epoch"]: c for c in official["curve"]}
    out = {}
    if 0 in a and 0 in b and a[0].get("train_loss") is not None and b[0].get("train_loss") is not None:
        out["epoch-0 loss ours/official"] = f"{a[0]['train_loss']:.4g} / {b[0]['train_loss']:.4g}"
    rel = [abs(a[e]["train_loss"] - b[e]["train_loss"]) / abs(b[e]["train_loss"]) for e in sorted(set(a) & set(b))
           if a[e].get("train_loss") is not None and b[e].get("train_loss")]
    if rel:
        out["max loss diff"] = f"{max(rel):.1%}"
    best = official.get("best_epoch")
    if best in a and a[best].get("test_recall@20") is not None and official["test"].get("recall@20"):
        out["R@20 at official best epoch (ratio)"] = round(a[best]["test_recall@20"] / official["test"]["recall@20"], 3)
    return out


def main(argv=None) -> int:
    from benchmarks.report.presentation import PAPER_ORDER
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated; default: every model with an official figure")
    ap.add_argument("--seeds", default="999,42,2023")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--data-root", default=str(REFERENCE))
    ap.add_argument("--official", default=str(OFFICIAL_RESULTS))
    ap.add_argument("--official-extra", action="append", default=None,
                    help="file(s) of further official seeds (benchmarks.experiments.official_runs); default: "
                         "benchmarks/experiments/reference/tiktok-official-extra-seeds.json when present; "
                         "'none': the official file alone")
    ap.add_argument("--out", default="results/fidelity")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--report-only", action="store_true", help="do not train; tabulate the store")
    args = ap.parse_args(argv)
    if not Path(args.official).is_file():
        raise SystemExit(f"{args.official}: official results not found (needs ../shared/data/reference)")
    extra = [EXTRA_SEEDS] if args.official_extra is None else \
        [Path(p) for p in args.official_extra if p != "none"]
    for p in extra:
        if p != EXTRA_SEEDS and not p.is_file():
            raise SystemExit(f"{p}: official extra-seeds file not found")
    official = official_runs(Path(args.official), tuple(extra))
    models = [m.strip() for m in args.models.split(",")] if args.models else \
        [m for m in PAPER_ORDER if m in official]
    if not args.report_only:
        from benchmarks.run.config import parse_sets
        from benchmarks.run.runner import RunOptions, execute, plan
        sets = {"epochs": args.epochs, **parse_sets(args.sets)}
        opts = RunOptions(protocols=["missing"], datasets=["tiktok"], models=models,
                          seeds=parse_seeds(args.seeds), data_root=args.data_root, full=True,
                          sets=sets, jobs=args.jobs, results_dir=args.out,
                          cache_dir=str(Path(args.out) / "cache"), progress=True)
        execute(plan(opts).jobs, ResultStore(args.out), n_workers=args.jobs, progress=True)
    if args.report_only and not (Path(args.out) / "results.jsonl").is_file():
        raise SystemExit(f"{Path(args.out) / 'results.jsonl'}: no results store to report on "
                         "(run without --report-only first, or point --out at an earlier run)")
    records = [r for r in ResultStore(args.out).records(warn=False) if r.get("model") in models]
    rows = fidelity_rows(records, official)
    order = {m: i for i, m in enumerate(PAPER_ORDER)}
    rows.sort(key=lambda r: order.get(r["model"], 99))
    table = tabulate(rows, headers="keys", tablefmt="github", missingval="–")
    text = (f"**Fidelity on the reference TikTok data ({args.epochs} epochs, missing protocol, mean over seeds). "
            f"ok: ratio within {TOLERANCE:.0%}; noise: outside it but |z| < {Z_LIMIT:g} (z = gap / standard error "
            f"of the seed spread); GAP: neither.**\n\n{table}\n")
    publish(text, Path(args.out) / "fidelity.md")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DataError as exc:  # a malformed official or extra-seeds file
        raise SystemExit(str(exc))
