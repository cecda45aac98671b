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
import os
import sys
from pathlib import Path

from benchmarks.run.config import ConfigError, parse_sets
from benchmarks.run.devices import parse_device
from benchmarks.core.protocols import ALL_PROTOCOL_NAMES, PAPER_PROTOCOL_NAMES, PROTOCOLS, ProtocolError
from benchmarks.run.ray_backend import RayBackendError  # does not import Ray
from benchmarks.report.tables import present_protocols, write_report
from benchmarks.run.runner import RunOptions, execute, gpu_worker_slots, plan, print_banner
from benchmarks.run.jobs import DEFAULT_DATA_ROOT
from benchmarks.run.store import ResultStore
from data_prep.errors import DataError
from benchmarks.run.discovery import model_entries, model_names
from models.registry import UnknownModelError

DEFAULT_DATASETS = ("baby", "sports", "clothing", "tiktok")
# Without real data, the default run trains every model to early stopping on one two-modality and
# one three-modality replica, within about 15 minutes on 2 cores; --datasets names any others.
EMBEDDED_DATASETS = ("baby", "tiktok")


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
    # -- backends and devices (benchmarks/ray_backend.py; runner.gpu_worker_slots)
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


def default_jobs() -> int:
    """One worker per core: a deterministic job runs on one thread, so the cores are used by
    running jobs side by side rather than by splitting one job over threads."""
    return max(1, min(8, os.cpu_count() or 1))


def default_datasets(args) -> list[str]:
    """The paper's four datasets when any of them is under the data root (and not --quick), else the
    embedded default's replicas."""
    root = Path(args.data_root or DEFAULT_DATA_ROOT)
    if not args.quick and any((root / d).is_dir() for d in DEFAULT_DATASETS):
        return list(DEFAULT_DATASETS)
    return list(EMBEDDED_DATASETS)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_models:
        entries = model_entries()
        width = max(len(e.name) for e in entries)
        for e in entries:
            print(f"{e.name:<{width}}  {e.group}")
        return 0
    try:
        if args.jobs is None:
            args.jobs = default_jobs()
        if args.jobs < 0:
            raise ValueError(f"--jobs must be >= 0, got {args.jobs}")
        if args.scale is not None and not 0 < args.scale <= 1:
            raise ValueError(f"--scale must lie in (0, 1], got {args.scale}")
        try:
            seeds = [int(s) for s in _csv(args.seeds)] or None
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        protocols = [p for p in PAPER_PROTOCOL_NAMES if p in PROTOCOLS] if args.protocol == "all" else [args.protocol]
        models = _csv(args.models) or model_names()
        sets = parse_sets(args.sets)
        devices, run_pending = _backend(args, sets)
        opts = RunOptions(protocols=protocols, datasets=_csv(args.datasets) or default_datasets(args), models=models,
                          seeds=seeds,
                          data_root=args.data_root, quick=args.quick, full=args.full, sets=sets,
                          jobs=args.jobs, results_dir=args.results_dir, cache_dir=args.cache_dir, scale=args.scale,
                          retry_failed=args.retry_failed, progress=not args.no_progress)
        p = plan(opts)
    except (UnknownModelError, ConfigError, ProtocolError, DataError, FileNotFoundError, ValueError,
            RayBackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_banner(p, protocols, models)
    if devices:
        print(f"local workers: {len(devices)} GPU slot(s) ({', '.join(devices)})")
    store = ResultStore(args.results_dir)
    try:
        counts = execute(p.jobs, store, n_workers=args.jobs, progress=opts.progress, retry_failed=args.retry_failed,
                         devices=devices, run_pending=run_pending)
    except KeyboardInterrupt:
        print("\ninterrupted: finished jobs are in the store; rerun the same command to resume", file=sys.stderr)
        return 130
    except RayBackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    planned = {j["job_id"] for j in p.jobs}
    everything = store.records()
    # The tables cover the whole results folder, so a run with fewer models or protocols adds to the
    # tables of earlier runs made into it instead of overwriting them with a subset.
    present = set(present_protocols(everything))
    written = write_report(everything, Path(args.results_dir),
                           [x for x in ALL_PROTOCOL_NAMES if x in set(protocols) | present], store)
    latest = {r["job_id"]: r for r in everything}  # a retried job's record supersedes its failure
    failed = [r for j, r in latest.items() if j in planned and r.get("status") == "failed"]
    print(f"jobs: {counts['planned']} planned, {counts['skipped']} already done, {counts['ok']} ok, "
          f"{counts['failed']} failed now; {len(failed)} failed in the store")
    print("tables: " + ", ".join(str(w) for w in written if w.suffix == ".md"))
    if failed:
        print(f"{len(failed)} job(s) failed (rerun with --retry-failed once fixed):", file=sys.stderr)
        for r in failed:
            print(f"  failed: {r['model']} on {r['dataset']} seed {r['seed']}: {r.get('error', '?')}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- backends and devices

def _backend(args, sets: dict):
    """Apply --device to the configuration; return (local GPU worker slots or None, the Ray runner or None)."""
    if args.device is not None:
        parse_device(args.device, "--device")
        if "device" in sets and str(sets["device"]) != args.device:
            raise ValueError(f"--device {args.device} contradicts --set device={sets['device']}")
        sets["device"] = args.device
    if args.address and args.backend != "ray":
        raise ValueError("--address needs --backend ray")
    if args.backend == "ray":
        if args.jobs_per_gpu != 1:
            raise ValueError("--jobs-per-gpu is for the local backend; with --backend ray set the GPU share of a job "
                             "with --set resources_gpus=0.5 (two jobs per GPU) etc.")
        from benchmarks.run.ray_backend import RayBackend, import_ray
        import_ray()  # fail now, with the install hint, if Ray is missing
        return None, RayBackend(address=args.address).run
    slots = gpu_worker_slots(sets.get("device", "auto"), args.jobs_per_gpu)  # checks the device request here
    return (slots if args.jobs > 0 else None), None


if __name__ == "__main__":
    sys.exit(main())
