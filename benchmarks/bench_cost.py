"""Cost benchmark: training seconds per epoch, evaluation seconds and peak memory of every model.

    python -m benchmarks.bench_cost                                  # reference TikTok, every model
    python -m benchmarks.bench_cost --datasets synthetic:clothing --epochs 1
    python -m benchmarks.bench_cost --datasets synthetic:elec --epochs 1 --set grid_limit=1
    python -m benchmarks.bench_cost --datasets synthetic:elec --epochs 1 --models LATTICE --max-batches 200

Each (model, dataset) is one job of the ordinary runner (same code path as a real run: same
protocol, graphs, training loop and evaluator), with a short schedule (``--epochs``, an
evaluation after every epoch, no early stopping), run in its own worker process so that the
peak resident memory is the job's own. Jobs are kept in ``<out>/results.jsonl``: an interrupted
benchmark resumes. The table puts our figures next to the official implementation's
(``tiktok-official-results.json``, measured on a 2-core CPU with the same schedule) with the
ratio, and is written to ``<out>/cost_benchmark.md``. Training seconds per epoch are medians over
the epochs. With ``--max-batches N`` each epoch stops after N batches and the figure is projected
to a whole epoch (marked in the table); use it only where a whole epoch would take hours (LATTICE
trains with batches of 128 and Adam over the raw feature tables: ~10 500 steps per Electronics
epoch).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmarks.bench_common import REFERENCE, official_records, publish
from benchmarks.runner import RunOptions, execute, plan
from benchmarks.store import ResultStore
from models.registry import names


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="tiktok")
    ap.add_argument("--data-root", default=str(REFERENCE))
    ap.add_argument("--models", default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=999)
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--max-batches", type=int, default=None,
                    help="stop each epoch after N batches and project s/epoch (catalogue-scale runs of "
                         "slow models); peak memory and the full evaluation are measured as usual")
    ap.add_argument("--retry-failed", action="store_true", help="rerun jobs recorded as failed")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args(argv)
    from benchmarks.config import parse_sets
    models = [m.strip() for m in args.models.split(",")] if args.models else names()
    sets = {"epochs": args.epochs, "eval_step": 1, "stopping_step": 10 ** 6, **parse_sets(args.sets)}
    if args.max_batches is not None:
        sets["max_batches_per_epoch"] = args.max_batches
    opts = RunOptions(protocols=["missing"], datasets=[d.strip() for d in args.datasets.split(",")], models=models,
                      seeds=[args.seed], data_root=args.data_root, full=True, sets=sets, jobs=1,
                      results_dir=args.out, cache_dir=str(Path(args.out) / "cache"), progress=True)
    p = plan(opts)
    store = ResultStore(args.out)
    execute(p.jobs, store, n_workers=1, progress=True, fresh_workers=True, retry_failed=args.retry_failed)
    planned = {j["job_id"] for j in p.jobs}
    official = official_costs()
    rows = []
    latest = {r["job_id"]: r for r in store.records(warn=False)}  # a retried job supersedes its failure
    for rec in latest.values():
        if rec["job_id"] not in planned:
            continue
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
            "ratio": round(ours / off["train_median"], 3) if ours and off.get("train_median") else None,
            "eval s (test)": rec.get("eval_seconds"), "official eval s": off.get("eval"),
            "peak MB": rec.get("peak_memory_mb"), "official peak MB": off.get("peak"),
            "error": (rec.get("error") or "")[:80],
        })
    rows.sort(key=lambda r: (r["dataset"], models.index(r["model"].split(" ")[0])
                             if r["model"].split(" ")[0] in models else 99))
    table = tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3g", missingval="–")
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    summary = (f"\n{len(rows)} jobs; ratio ours/official training s/epoch: median {np.median(ratios):.3f}, "
               f"max {max(ratios):.3f}; {sum(r <= 0.5 for r in ratios)} of {len(ratios)} at most 0.5"
               if ratios else "")
    text = (f"**Cost benchmark: {args.epochs} epoch(s), evaluation after each, seed {args.seed}, "
            f"missing protocol, one fresh process per job. Training seconds per epoch are medians over the "
            f"epochs (the first epoch carries warm-up); official figures: 2-core CPU, 15 epochs.**\n\n"
            f"{table}\n{summary}\n")
    publish(text, Path(args.out) / "cost_benchmark.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
