#!/usr/bin/env python
"""Run every model over the datasets under the paper's protocols and write the tables.

    python run_all.py --protocol new_items
    python run_all.py --protocol missing --datasets tiktok --models LightGCN,MFBPR \\
        --data-root ../shared/data/reference --seeds 999,42,2023 --set epochs=15
    python run_all.py --list-models

Without real data under --data-root, the paper's datasets fall back to synthetic replicas
with a capped schedule and one seed; the banner and every table say so.
"""
from __future__ import annotations

import argparse
import sys

from benchmarks.core.protocols import ALL_PROTOCOL_NAMES
from benchmarks.experiment import DEFAULT_DATASETS, EMBEDDED_DATASETS, REFUSALS, Experiment
from benchmarks.report.presentation import model_order
from benchmarks.run.config import parse_sets
from benchmarks.run.devices import parse_device
from benchmarks.run.discovery import model_entries
from benchmarks.run.ray_backend import RayBackendError  # does not import Ray
from benchmarks.run.runner import print_banner


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", default="missing", choices=list(ALL_PROTOCOL_NAMES) + ["all"],
                   help="evaluation protocol (default: missing)")
    p.add_argument("--datasets", default=None,
                   help="comma-separated dataset names (folders under --data-root) or synthetic:<kind>; default: "
                        f"{','.join(DEFAULT_DATASETS)}, or the replicas of {' and '.join(EMBEDDED_DATASETS)} when "
                        "none of them is under the data root")
    p.add_argument("--models", default=None, help="comma-separated model names (default: every registered model)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: 999,42,2023,2024,2025)")
    p.add_argument("--data-root", default=None,
                   help="folder holding <dataset>/ folders; must exist (default: data/, where a missing paper "
                        "dataset runs on its synthetic replica)")
    p.add_argument("--quick", action="store_true", help="small synthetic replicas and a capped schedule")
    p.add_argument("--full", action="store_true", help="full-scale replicas and the full schedule even without real data")
    p.add_argument("--scale", type=float, default=None, help="scale factor of synthetic replicas (0, 1]")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration value (repeatable); values are YAML")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes (default: one per core, at most 8, each single-threaded as the default "
                        "deterministic=true runs; 0 runs jobs inside this process)")
    p.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="local: worker processes on this machine (default); ray: one Ray task per job with the "
                        "resources of its resources_* keys (needs: pip install -r requirements-ray.txt)")
    p.add_argument("--address", default=None,
                   help="with --backend ray: the Ray cluster to use (auto, or HOST:PORT of `ray start --head`); "
                        "default: start a local Ray instance")
    p.add_argument("--device", default=None,
                   help="auto | cpu | cuda | cuda:N: sets the configuration key device (default: auto)")
    p.add_argument("--jobs-per-gpu", type=int, default=1,
                   help="local backend with G visible GPUs: run G*K worker processes, each pinned to one GPU "
                        "(default 1; --jobs applies when no GPU is used)")
    p.add_argument("--results-dir", default="results", help="where results.jsonl and tables go")
    p.add_argument("--cache-dir", default="cache", help="cache of derived artefacts (graphs, masks)")
    p.add_argument("--retry-failed", action="store_true", help="rerun jobs recorded as failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list-models", action="store_true", help="list registered models and exit")
    return p.parse_args(argv)


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_models:  # in the tables' row order
        rows = model_order((e.name, e.group) for e in model_entries())
        width = max(len(name) for name, _ in rows)
        for name, group in rows:
            print(f"{name:<{width}}  {group}")
        return 0
    try:
        try:
            seeds = [int(s) for s in _csv(args.seeds)] or None
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        if args.device is not None:
            parse_device(args.device, "--device")
        experiment = Experiment(_csv(args.models) or None, _csv(args.datasets) or None, args.protocol, seeds,
                                parse_sets(args.sets), data_root=args.data_root, results_dir=args.results_dir,
                                cache_dir=args.cache_dir, jobs=args.jobs, quick=args.quick, full=args.full,
                                scale=args.scale, device=args.device, jobs_per_gpu=args.jobs_per_gpu,
                                backend=args.backend, address=args.address, retry_failed=args.retry_failed,
                                progress=not args.no_progress)
    except REFUSALS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_banner(experiment.plan, experiment.protocols, experiment.models)
    if experiment.devices:
        print(f"local workers: {len(experiment.devices)} GPU slot(s) ({', '.join(experiment.devices)})")
    try:
        outcome = experiment.run()
    except KeyboardInterrupt:
        print("\ninterrupted: finished jobs are in the store; rerun the same command to resume", file=sys.stderr)
        return 130
    except RayBackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts, failed = outcome.counts, outcome.failed
    print(f"jobs: {counts['planned']} planned, {counts['skipped']} already done, {counts['ok']} ok, "
          f"{counts['failed']} failed now; {len(failed)} failed in the store")
    print("tables: " + ", ".join(str(w) for w in outcome.tables if w.suffix == ".md"))
    if failed:
        print(f"{len(failed)} job(s) failed (rerun with --retry-failed once fixed):", file=sys.stderr)
        for r in failed:
            print(f"  failed: {r['model']} on {r['dataset']} seed {r['seed']}: {r.get('error', '?')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
