"""Cost benchmark: training seconds per epoch, evaluation seconds and peak memory of every model.

    python -m benchmarks.experiments.bench_cost                                  # reference TikTok, every model
    python -m benchmarks.experiments.bench_cost --datasets synthetic:clothing --epochs 1
    python -m benchmarks.experiments.bench_cost --datasets synthetic:elec --epochs 1 --set grid_limit=1
    python -m benchmarks.experiments.bench_cost --datasets synthetic:elec --epochs 1 --models LATTICE --max-batches 200
    python -m benchmarks.experiments.bench_cost --device cuda --datasets tiktok,baby --official-src PATH/src --epochs 3

Each (model, dataset) is one job of the ordinary runner with a short schedule (``--epochs``, an
evaluation after every epoch, no early stopping), in its own worker process on the CPU. Jobs
are kept in ``<out>/results.jsonl``, so an interrupted benchmark resumes; the table, our figures
beside the official implementation's with the ratios, goes to ``<out>/cost_benchmark.md``.
``--max-batches N`` stops each epoch after N batches and projects the epoch's seconds (marked in
the table). ``--official-src`` also runs the official implementation on the same device, data,
setting and epochs (official runs kept in ``<out>/official_runs.jsonl``). How each figure is
measured, and the current tables: docs/cost.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmarks.experiments.bench_common import REFERENCE, official_records, publish
from benchmarks.run.runner import RunOptions, execute, plan
from benchmarks.run.store import ResultStore
from benchmarks.run.discovery import model_names as names


def official_costs() -> dict[str, dict]:
    out = {}
    for rec in official_records():
        if rec.get("train_seconds_per_epoch") is None or rec.get("seed") != 999:
            continue
        out[rec["model"]] = {"train": rec["train_seconds_per_epoch"],
                             "train_median": rec.get("train_seconds_per_epoch_median") or rec["train_seconds_per_epoch"],
                             "eval": rec.get("test_eval_seconds"),
                             "valid_eval": rec.get("valid_eval_seconds"), "peak": rec.get("peak_rss_mb"),
                             "status": rec["status"]}
    return out


OFFICIAL_DATASETS = ("tiktok", "baby")  # reference folders the official code can read (its own format)


def _official_record(store: Path, key: dict, run) -> dict:
    """The official run for ``key`` from ``store`` (one JSON object a line), else ``run()`` appended."""
    rows = [json.loads(line) for line in store.read_text().splitlines() if line.strip()] if store.is_file() else []
    for r in rows:
        if r.get("key") == key:
            return r
    rec = dict(run(), key=key)
    with open(store, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def _peak(rec: dict) -> float | None:
    return rec.get("peak_gpu_memory_mb") if rec.get("peak_gpu_memory_mb") is not None else rec.get("peak_memory_mb")


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="tiktok")
    ap.add_argument("--data-root", default=str(REFERENCE))
    ap.add_argument("--models", default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=999)
    ap.add_argument("--scale", type=float, default=None, help="scale of synthetic replicas (default: full scale)")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (the device key of every job); on "
                    "CUDA the jobs run in this process, each with CUDA's own peak-memory counter reset")
    ap.add_argument("--official-src", default=None,
                    help="src folder of a ptkjw1997/DGMRec checkout: also run the official implementation for the "
                         "same models, data (reference tiktok, baby), setting and epochs on the same device, and "
                         "print both side by side with the ratios")
    ap.add_argument("--official-timeout", type=float, default=1800.0, help="seconds per official run")
    ap.add_argument("--budget-seconds", type=float, default=None,
                    help="start no further model after this many seconds (the table says what was left out)")
    ap.add_argument("--max-batches", type=int, default=None,
                    help="stop each epoch after N batches and project s/epoch (catalogue-scale runs of "
                         "slow models); peak memory and the full evaluation are measured as usual")
    ap.add_argument("--retry-failed", action="store_true", help="rerun jobs recorded as failed")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args(argv)
    from benchmarks.run.config import parse_sets
    from benchmarks.run.devices import resolve_device
    models = [m.strip() for m in args.models.split(",")] if args.models else names()
    sets = {"epochs": args.epochs, "eval_step": 1, "stopping_step": 10 ** 6, **parse_sets(args.sets)}
    if args.device:
        sets["device"] = args.device
    if args.max_batches is not None:
        sets["max_batches_per_epoch"] = args.max_batches
    on_gpu = resolve_device(sets.get("device", "auto")).type == "cuda"
    if args.official_src and not (Path(args.official_src) / "main.py").is_file():
        raise SystemExit(f"{args.official_src}: not the official src folder (no main.py)")
    opts = RunOptions(protocols=["missing"], datasets=[d.strip() for d in args.datasets.split(",")], models=models,
                      seeds=[args.seed], data_root=args.data_root, full=True, scale=args.scale, sets=sets, jobs=1,
                      results_dir=args.out, cache_dir=str(Path(args.out) / "cache"), progress=True)
    p = plan(opts)
    store = ResultStore(args.out)
    started, left_out = time.perf_counter(), []
    by_model: dict[str, list] = {}
    for j in p.jobs:
        by_model.setdefault(j["model"], []).append(j)
    official_runs: dict = {}
    for model, jobs in by_model.items():
        if args.budget_seconds is not None and time.perf_counter() - started > args.budget_seconds:
            left_out.append(model)
            continue
        # On CUDA a job's peak is CUDA's own counter, reset per job: no fresh process needed (and
        # none to pay for: each would start CUDA again). On the CPU it is the process's resident peak.
        execute(jobs, store, n_workers=0 if on_gpu else 1, progress=True, fresh_workers=not on_gpu,
                retry_failed=args.retry_failed)
        if args.official_src:
            official_runs.update(_run_official(args, jobs, store))
    planned = {j["job_id"] for j in p.jobs}
    latest = {r["job_id"]: r for r in store.records(warn=False)}  # a retried job supersedes its failure
    records = [r for r in latest.values() if r["job_id"] in planned]
    if args.official_src:
        text = _side_by_side_table(args, records, official_runs, models, left_out, on_gpu)
    else:
        text = _cost_table(args, records, models)
    if left_out:
        text += f"\nNot run within --budget-seconds {args.budget_seconds:g}: {', '.join(left_out)}\n"
    publish(text, Path(args.out) / "cost_benchmark.md")
    return 0


def _run_official(args, jobs: list[dict], store: ResultStore) -> dict:
    """The official run of each (model, reference dataset) of ``jobs``, on our first grid setting."""
    from benchmarks.experiments.official_runs import official_override, run_one
    latest = {r["job_id"]: r for r in store.records(warn=False)}
    out, seen = {}, set()
    for j in jobs:
        kind = j["dataset_kind"]
        if j["data_source"] != "reference" or kind not in OFFICIAL_DATASETS or (j["model"], kind) in seen:
            continue
        seen.add((j["model"], kind))
        ours = latest.get(j["job_id"], {})
        device = ours.get("environment", {}).get("device") or j["config"].get("device")
        override = official_override(Path(args.official_src), j["model"], kind, j["config"], args.epochs)
        key = {"model": j["model"], "dataset": kind, "device": str(device), "seed": args.seed, "override": override}
        data_dir = Path(args.data_root) / kind
        rec = _official_record(Path(args.out) / "official_runs.jsonl", key,
                               lambda: run_one(Path(args.official_src), data_dir, j["model"], args.seed, override,
                                               args.official_timeout, dataset=kind, device=str(device)))
        out[j["job_id"]] = rec
    return out


def _side_by_side_table(args, records, official, models, left_out, on_gpu) -> str:
    rows = []
    for rec in records:
        off = official.get(rec["job_id"])
        if off is None:
            continue
        ours = rec.get("train_seconds_per_epoch_median") or rec.get("train_seconds_per_epoch")
        theirs = off.get("train_seconds_per_epoch_median")
        peak_ours = _peak(rec)
        peak_theirs = off.get("peak_gpu_mb") if on_gpu else off.get("peak_rss_mb")
        rows.append({
            "model": rec["model"], "dataset": rec["dataset"], "device": rec.get("environment", {}).get("device"),
            "s/epoch": ours, "official s/epoch": theirs, "ratio": _ratio(ours, theirs),
            "eval s (valid)": rec.get("valid_eval_seconds"), "official eval s": off.get("valid_eval_seconds"),
            "eval ratio": _ratio(rec.get("valid_eval_seconds"), off.get("valid_eval_seconds")),
            ("peak GPU MB" if on_gpu else "peak MB"): peak_ours, "official peak": peak_theirs,
            "memory ratio": _ratio(peak_ours, peak_theirs),
            "status": rec["status"] if off.get("status") == "ok" else f"{rec['status']} / official {off.get('status')}",
            "error": " ".join(((rec.get("error") or "") + " " + (off.get("error") or "")).split())[-120:],
        })
    rows.sort(key=lambda r: (r["dataset"], models.index(r["model"]) if r["model"] in models else 99))
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    summary = (f"\n{len(ratios)} pairs; ratio ours/official s/epoch: median {np.median(ratios):.3f}, max "
               f"{max(ratios):.3f}; {sum(r <= 0.5 for r in ratios)} of {len(ratios)} at most 0.5\n" if ratios else "")
    table = tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3g", missingval="–")
    return (f"**Ours and the official implementation on the same {'GPU' if on_gpu else 'machine'}: {args.epochs} "
            f"epoch(s), validation after each, seed {args.seed}, missing protocol, the same setting on both sides "
            f"(our first grid setting). s/epoch: medians over the epochs; eval: one validation "
            f"pass; peak: {'CUDA max_memory_allocated' if on_gpu else 'resident memory'} of the job (ours) and of "
            f"the official process.**\n\n{table}\n{summary}")


def _cost_table(args, records, models) -> str:
    official = official_costs()
    rows = []
    for rec in records:
        off = official.get(rec["model"], {}) if rec.get("dataset_kind") == "tiktok" and \
            rec.get("data_source") == "reference" else {}
        ours = rec.get("train_seconds_per_epoch_median") or rec.get("train_seconds_per_epoch")
        grid = ", ".join(f"{k}={rec['config'][k]}" for k in rec.get("grid_keys") or [] if k in rec.get("config", {}))
        rows.append({
            "model": rec["model"] + (f" ({grid})" if rec.get("grid_size", 1) > 1 and grid else ""),
            "dataset": rec["dataset"], "status": rec["status"],
            "epoch": (f"{rec['epoch_capped']['batches_run']}/{rec['epoch_capped']['batches_per_epoch']} batches, "
                      "projected") if rec.get("epoch_capped") else "full",
            "train s/epoch (median)": ours, "official (median)": off.get("train_median"),
            "ratio": _ratio(ours, off.get("train_median")),
            "eval s (test)": rec.get("eval_seconds"), "official eval s": off.get("eval"),
            "peak MB": _peak(rec), "official peak MB": off.get("peak"),
            "error": " ".join((rec.get("error") or "").split())[:80],
        })
    rows.sort(key=lambda r: (r["dataset"], models.index(r["model"].split(" ")[0])
                             if r["model"].split(" ")[0] in models else 99))
    table = tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3g", missingval="–")
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    summary = (f"\n{len(rows)} jobs; ratio ours/official training s/epoch: median {np.median(ratios):.3f}, "
               f"max {max(ratios):.3f}; {sum(r <= 0.5 for r in ratios)} of {len(ratios)} at most 0.5"
               if ratios else "")
    return (f"**Cost benchmark: {args.epochs} epoch(s), evaluation after each, seed {args.seed}, "
            f"missing protocol, one fresh process per job. Training seconds per epoch are medians over the "
            f"epochs (the first epoch carries warm-up); official figures: 2-core CPU, 15 epochs.**\n\n"
            f"{table}\n{summary}\n")


if __name__ == "__main__":
    raise SystemExit(main())
