"""Plans the job grid, runs what is not finished yet, and appends each record as it arrives.

Resuming is by job identity: a job's id is a hash of model, dataset, protocol, missing
ratio, seed, resolved configuration and data fingerprint, and a rerun skips every id the
store already holds (``ok``, or ``failed`` unless ``--retry-failed``). Records are written
by the driver alone, one atomic line each, so an interrupted grid loses only the jobs that
were running and a rerun completes it with every job exactly once.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass, field

from . import registry_entry
from .config import check_sets, expand_grid, resolve
from .jobs import PAPER_DATASETS, DatasetRef, code_version, job_id, load_dataset, resolve_dataset, run_job, spec_dict
from .protocols import get_protocol
from .store import ResultStore

PAPER_SEEDS = (999, 42, 2023, 2024, 2025)
QUICK_SCALE = 0.05
MAX_WORKER_CRASHES = 2


@dataclass
class RunOptions:
    protocols: list[str]
    datasets: list[str]
    models: list[str]
    seeds: list[int] | None = None
    data_root: str = "data"
    quick: bool = False
    full: bool = False
    sets: dict = field(default_factory=dict)
    jobs: int = 1
    results_dir: str = "results"
    cache_dir: str | None = "cache"
    scale: float | None = None
    retry_failed: bool = False
    progress: bool = True


@dataclass
class Plan:
    jobs: list[dict]
    banner: list[str]
    datasets: dict  # name -> {"ref": DatasetRef, "quick": bool, "fallback": bool}
    seeds: list[int]


def plan(opts: RunOptions) -> Plan:
    entries = [registry_entry(m) for m in opts.models]
    check_sets(opts.sets, entries)
    protocols = [get_protocol(p) for p in opts.protocols]
    datasets = {}
    for requested in opts.datasets:
        # --quick always runs on replicas; without real data a paper dataset falls back to its replica.
        name = f"synthetic:{requested}" if opts.quick and requested in PAPER_DATASETS else requested
        scale = opts.scale or (1.0 if opts.full and not opts.quick else QUICK_SCALE)
        ref, fallback = resolve_dataset(name, opts.data_root, scale)
        quick = opts.quick or (ref.synthetic and not opts.full)
        datasets[ref.name] = {"ref": ref, "quick": quick, "fallback": fallback, "requested": requested}
    all_quick = all(d["quick"] for d in datasets.values())
    seeds = list(opts.seeds) if opts.seeds else ([PAPER_SEEDS[0]] if all_quick else list(PAPER_SEEDS))
    banner = []
    for name, d in datasets.items():
        ref = d["ref"]
        what = {"synthetic": f"SYNTHETIC replica at scale {ref.scale}", "reference": "reference data (surrogate features)",
                "real": "real data"}[ref.source]
        note = " (no real data found under the data root)" if d["fallback"] else ""
        sched = "quick capped schedule" if d["quick"] else "full protocol schedule"
        banner.append(f"{d['requested']}: {what}{note}; {sched}")
    banner.append(f"seeds: {','.join(map(str, seeds))}" + (" (one seed: quick run)" if all_quick and not opts.seeds else ""))
    version = code_version()
    jobs = []
    for proto in protocols:
        for name, d in datasets.items():
            ref = d["ref"]
            ds = load_dataset(ref)
            fingerprint = ds.fingerprint_digest()
            for entry in entries:
                if not proto.accepts(entry.cls):
                    continue
                cfg = resolve(entry, ref.kind, opts.sets, d["quick"])
                for ratio in proto.ratios(ds, cfg):
                    for seed in seeds:
                        group_identity = {"model": entry.name, "dataset": ref.name, "protocol": proto.job_protocol,
                                          "missing_ratio": ratio, "seed": seed, "config": cfg,
                                          "fingerprint": fingerprint}
                        settings = expand_grid(cfg, entry.cls.list_params)
                        if cfg.get("grid_limit"):  # quick runs train only the first grid setting(s)
                            settings = settings[:int(cfg["grid_limit"])]
                        for setting in settings:
                            setting = dict(setting, seed=seed, missing_ratio=ratio)
                            identity = dict(group_identity, config=setting)
                            jobs.append({
                                "job_id": job_id(identity), "grid_group": job_id(group_identity),
                                "grid_keys": setting["grid_keys"], "grid_size": len(settings),
                                "model": entry.name, "group": entry.group, "dataset": ref.name,
                                "dataset_kind": ref.kind, "data_source": ref.source, "dataset_ref": spec_dict(ref),
                                "protocol": proto.job_protocol, "missing_ratio": ratio, "seed": seed, "config": setting,
                                "fingerprint": fingerprint, "code_version": version,
                                "results_dir": opts.results_dir, "cache_dir": opts.cache_dir,
                            })
    if not jobs and entries:
        raise ValueError(f"no selected model applies to protocol(s) {', '.join(opts.protocols)} "
                         f"(retrieval needs a model with generated_features(), such as DGMRec)")
    unique = list({j["job_id"]: j for j in jobs}.values())  # protocols of one family share jobs
    return Plan(unique, banner, datasets, seeds)


def _worker_init(threads: int):
    import torch
    torch.set_num_threads(threads)


def execute(jobs: list[dict], store: ResultStore, n_workers: int = 1, progress: bool = True,
            retry_failed: bool = False, on_record=None) -> dict:
    """Run the jobs not yet in the store; return counts of what happened."""
    done = store.finished_ids(retry_failed=retry_failed)
    seen, pending = set(), []
    for j in jobs:
        if j["job_id"] not in done and j["job_id"] not in seen:
            seen.add(j["job_id"])
            pending.append(j)
    counts = {"planned": len(jobs), "skipped": len(jobs) - len(pending), "ok": 0, "failed": 0}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(pending), desc="jobs", unit="job", dynamic_ncols=True)

    def record(rec):
        store.append(rec)
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{rec['model']}/{rec['dataset']} {rec['status']}")
        if on_record is not None:
            on_record(rec)

    try:
        if n_workers <= 0:
            for spec in pending:
                record(run_job(spec, progress=progress))
        else:
            _run_pool(pending, n_workers, record)
    finally:
        if bar is not None:
            bar.close()
    return counts


def _run_pool(pending: list[dict], n_workers: int, record) -> None:
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    crashes: dict[str, int] = {}
    queue = list(pending)
    while queue:
        ctx = mp.get_context("spawn")
        pool = cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_worker_init,
                                      initargs=(threads,))
        futures = {pool.submit(run_job, spec, False): spec for spec in queue}
        queue = []
        try:
            for fut in cf.as_completed(futures):
                spec = futures[fut]
                try:
                    record(fut.result())
                except cf.process.BrokenProcessPool:
                    # A worker died (killed, or out of memory at the OS level). Retry the jobs
                    # that were in flight once; a job that breaks the pool twice is recorded failed.
                    crashes[spec["job_id"]] = crashes.get(spec["job_id"], 0) + 1
                    if crashes[spec["job_id"]] >= MAX_WORKER_CRASHES:
                        record(_crash_record(spec))
                    else:
                        queue.append(spec)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _crash_record(spec: dict) -> dict:
    rec = {k: spec[k] for k in ("job_id", "grid_group", "model", "group", "dataset", "dataset_kind", "data_source",
                                "protocol", "missing_ratio", "seed", "fingerprint", "code_version", "grid_keys",
                                "grid_size", "config")}
    rec.update(status="failed", error="the worker process died twice while running this job "
                                      "(killed, or out of memory at the operating-system level)")
    return rec


def print_banner(p: Plan, protocols, models, stream=sys.stdout) -> None:
    print("=" * 78, file=stream)
    print(f"DGMRec benchmark suite: protocol(s) {', '.join(protocols)}; {len(models)} model(s); "
          f"{len(p.jobs)} job(s)", file=stream)
    for line in p.banner:
        print(f"  {line}", file=stream)
    if any(d["ref"].synthetic for d in p.datasets.values()):
        print("  NOTE: synthetic replicas are not the paper's data; their numbers are not comparable to the paper.",
              file=stream)
    print("=" * 78, file=stream)
