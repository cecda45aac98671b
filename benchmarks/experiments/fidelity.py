"""Fidelity check: our models against the official implementation on identical inputs.

    python -m benchmarks.experiments.fidelity                       # every model that has an official figure
    python -m benchmarks.experiments.fidelity --models DGMRec,BM3 --seeds 999,42,2023,2024,2025
    python -m benchmarks.experiments.fidelity --report-only         # tabulate what the store already holds

Runs (or resumes) the ``missing`` protocol on the reference TikTok data with the official
schedule (15 epochs, an evaluation after every epoch), one job per model and seed through the
ordinary runner, and writes ``<out>/fidelity.md``: per model our mean test Recall@20 / NDCG@20
over seeds beside the official mean (``tiktok-official-results.json`` pooled with the extra
official seeds of ``official_runs``), the ratio, ``z`` (the gap over its standard error from the
seed spread) and a verdict (``ok`` within 5%, ``noise`` within two standard errors, else
``GAP``), and the seed-999 epoch-0 losses of both sides. docs/fidelity.md explains the columns
and holds the current table.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmarks.experiments.bench_common import EXTRA_SEEDS, OFFICIAL_RESULTS, REFERENCE, official_records, parse_seeds, publish
from benchmarks.report.selection import select_grid
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
    """Means, each side's seed standard deviation, the pooled one ``sd``, ratio, z and verdict of
    one metric (see the module docstring)."""
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
            "sd_ours": float(a.std(ddof=1)) if len(a) > 1 else float("nan"),
            "sd_official": float(b.std(ddof=1)) if len(b) > 1 else float("nan"), "z": z, "verdict": verdict}


def _mean_sd(mean: float, sd: float, n: int) -> str:
    return f"{mean:.4f} ± {sd:.4f} (n={n})" if n > 1 else f"{mean:.4f} (n=1)"


def fidelity_rows(records: list[dict], official: dict[str, list[dict]], dataset: str = "tiktok",
                  ratio: float | None = None) -> list[dict]:
    """One row per model of ours (``missing`` protocol on the reference ``dataset``, at missing
    ratio ``ratio`` when given) against its official runs."""
    recs = [r for r in records if r.get("protocol") == "missing" and r.get("status") == "ok"
            and r.get("dataset_kind") == dataset and r.get("data_source") == "reference"
            and (ratio is None or math.isclose(float(r.get("missing_ratio", -1)), ratio, abs_tol=1e-9))]
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
            row.update({f"ours {tag}": _mean_sd(c["ours"], c["sd_ours"], c["n"]),
                        f"official {tag}": _mean_sd(c["official"], c["sd_official"], c["n_official"]),
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


def records_runs(path: Path, dataset: str) -> tuple[str, dict[str, list[dict]]]:
    """(the code base, the ``ok`` runs per model) of an ``official_runs`` records file on ``dataset``."""
    from benchmarks.experiments.official_checkout import DGMREC
    recs = [r for r in official_records(path) if r.get("dataset") == dataset and r.get("status") == "ok"
            and r.get("test")]
    if not recs:
        raise SystemExit(f"{path}: no finished official run on {dataset}")
    codebases = sorted({r.get("codebase", DGMREC) for r in recs})
    if len(codebases) > 1:
        raise SystemExit(f"{path}: runs of several code bases on {dataset} ({', '.join(codebases)}); "
                         "compare one at a time")
    out: dict[str, list[dict]] = {}
    for r in recs:
        out.setdefault(r["model"], []).append(r)
    return codebases[0], out


def our_sets(runs: list[dict], codebase: str, model: str, user_sets: dict) -> dict:
    """The ``--set`` of our side for the official ``runs`` of ``model``: their epochs, missing
    ratio and schedule, the official ``--set`` values under our names where we have the key,
    then ``user_sets``."""
    from benchmarks.experiments.official_checkout import DGMREC
    from benchmarks.experiments.official_settings import ours_from_official, release_ratio
    epochs = sorted({r.get("epochs") for r in runs})
    if len(epochs) != 1:
        raise SystemExit(f"{model}: official runs with different epochs {epochs}; rerun them alike")
    ratio = runs[0].get("missing_ratio")  # records of the release written before it was recorded: its ratio
    ratio = ratio if ratio is not None else (release_ratio(runs[0]["dataset"]) if codebase == DGMREC else 0.0)
    sets = {"epochs": epochs[0], "missing_ratio": float(ratio)}
    sets.update({k: v for k, v in (runs[0].get("schedule") or {}).items() if k != "epochs"})
    sets.update(ours_from_official(codebase, model, runs[0].get("sets") or {}))
    sets.update(user_sets)
    return sets


def setting_differences(run: dict, codebase: str, model: str, sets: dict) -> list[str]:
    """Settings of the official run that differ from ours under the same (or mapped) name."""
    from benchmarks.experiments.official_settings import our_settings
    from benchmarks.experiments.weight_maps import SETTING_NAMES
    ours = dict(our_settings(codebase, model, run["dataset"]))
    names = SETTING_NAMES.get((codebase, model), {})
    ours.update({off: sets[mine] for off, mine in names.items() if mine in sets})
    ours.update(sets)
    out = []
    for k, v in sorted((run.get("settings") or {}).items()):
        mine = ours.get(k)
        if k not in ours or mine == v:
            continue
        if isinstance(mine, (int, float)) and isinstance(v, (int, float)) and math.isclose(mine, v, rel_tol=1e-9):
            continue
        out.append(f"{k} official {v!r}, ours {mine!r}")
    return out


def _run_ours(groups: dict, models_seeds: dict, dataset: str, data_root: str, out: str, jobs: int) -> None:
    """Our jobs, one plan per distinct ``--set`` (``groups``: the JSON of the sets -> the models)."""
    import json

    from benchmarks.run.runner import RunOptions, execute, plan
    for key, models in groups.items():
        sets = json.loads(key)
        seeds = sorted({s for m in models for s in models_seeds[m]})
        opts = RunOptions(protocols=["missing"], datasets=[dataset], models=models, seeds=seeds, data_root=data_root,
                          full=True, sets=sets, jobs=jobs, results_dir=out, cache_dir=str(Path(out) / "cache"),
                          progress=True)
        execute(plan(opts).jobs, ResultStore(out), n_workers=jobs, progress=True)


def compare_records(args) -> int:
    """``--records``: ours against an ``official_runs`` records file on the folder ``--data-dir``."""
    import json

    from benchmarks.experiments.official_checkout import data_folder
    from benchmarks.run.config import parse_sets
    try:
        folder = data_folder(args.data_dir)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    codebase, runs = records_runs(Path(args.records), folder.name)
    models = [m.strip() for m in args.models.split(",")] if args.models else sorted(runs)
    missing = [m for m in models if m not in runs]
    if missing:
        raise SystemExit(f"{args.records}: no finished run of {', '.join(missing)} on {folder.name}")
    wanted = set(parse_seeds(args.seeds)) if args.seeds else None
    runs = {m: [r for r in runs[m] if wanted is None or r["seed"] in wanted] for m in models}
    if codebase != "dgmrec-release" and folder.modalities.has_audio:
        raise SystemExit(f"{folder.path}: has audio, which {codebase} does not use; ours would (compare on a "
                         "folder without audio_feat.npy)")
    user_sets = parse_sets(args.sets)
    out = args.out or f"results/fidelity-{codebase}-{folder.name}"
    sets_of = {m: our_sets(runs[m], codebase, m, user_sets) for m in models}
    groups: dict[str, list[str]] = {}  # models by their --set (as JSON)
    for m in models:
        groups.setdefault(json.dumps(sets_of[m], sort_keys=True), []).append(m)
    if args.report_only and not (Path(out) / "results.jsonl").is_file():
        raise SystemExit(f"{Path(out) / 'results.jsonl'}: no results store to report on")
    if not args.report_only:
        _run_ours(groups, {m: [r["seed"] for r in runs[m]] for m in models}, folder.name,
                  str(folder.path.resolve().parent), out, args.jobs)
    records = [r for r in ResultStore(out).records(warn=False) if r.get("model") in models]
    ratio = {float(sets_of[m]["missing_ratio"]) for m in models}
    rows = []
    for r in sorted(ratio):
        rows += fidelity_rows([x for x in records if float(sets_of[x["model"]]["missing_ratio"]) == r],
                              {m: runs[m] for m in models if sets_of[m]["missing_ratio"] == r}, folder.name, r)
    rows.sort(key=lambda row: models.index(row["model"]))
    table = tabulate(rows, headers="keys", tablefmt="github", missingval="–")
    notes = []
    for m in models:
        diff = setting_differences(runs[m][0], codebase, m, sets_of[m])
        notes.append(f"- {m}: ours with " + ", ".join(f"{k}={v}" for k, v in sets_of[m].items())
                     + (f"; official settings that differ from ours: {'; '.join(diff)}" if diff else
                        "; no official setting differs from ours under a shared name"))
    commit = runs[models[0]][0].get("official_commit")
    ratios = ", ".join(f"missing ratio {r:g}" for r in sorted(ratio))
    text = (f"**Fidelity against {codebase}{f' at {commit[:7]}' if commit else ''} on {folder.path} "
            f"({ratios}, mean over seeds; each side's "
            f"seed standard deviation). ok: ratio within {TOLERANCE:.0%}; noise: outside it but |z| < {Z_LIMIT:g} "
            f"(z = difference of the means / its standard error from the pooled seed spread); GAP: neither.**\n\n"
            f"{table}\n\n" + "\n".join(notes) + "\n")
    publish(text, Path(out) / "fidelity.md")
    return 0


def main(argv=None) -> int:
    from benchmarks.report.presentation import PAPER_ORDER
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", default=None,
                    help="an official_runs records file: compare ours with it on --data-dir (its models, seeds, "
                         "epochs and settings) instead of the TikTok official results")
    ap.add_argument("--data-dir", default=None, help="with --records: the dataset folder the official runs used")
    ap.add_argument("--models", default=None, help="comma-separated; default: every model with an official figure")
    ap.add_argument("--seeds", default=None, help="default 999,42,2023; with --records: the records' seeds")
    ap.add_argument("--epochs", type=int, default=15, help="without --records (with it: the records' epochs)")
    ap.add_argument("--data-root", default=str(REFERENCE))
    ap.add_argument("--official", default=str(OFFICIAL_RESULTS))
    ap.add_argument("--official-extra", action="append", default=None,
                    help="file(s) of further official seeds (benchmarks.experiments.official_runs); default: "
                         "benchmarks/experiments/reference/tiktok-official-extra-seeds.json when present; "
                         "'none': the official file alone")
    ap.add_argument("--out", default=None, help="results folder (default results/fidelity, with --records "
                                                "results/fidelity-<code base>-<dataset>)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--report-only", action="store_true", help="do not train; tabulate the store")
    args = ap.parse_args(argv)
    if args.records:
        if not args.data_dir:
            raise SystemExit("--records needs --data-dir, the folder the official runs used")
        return compare_records(args)
    args.out = args.out or "results/fidelity"
    args.seeds = args.seeds or "999,42,2023"
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
