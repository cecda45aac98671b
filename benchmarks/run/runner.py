"""Plans the job grid, runs what is not finished yet, and appends each record as it arrives.

Resuming is by job identity: a job's id is a hash of model, dataset, protocol, missing
ratio, seed, resolved configuration and data fingerprint, and a rerun skips every id the
store already holds (``ok``, or ``failed`` unless ``--retry-failed``). Records are written
by the driver alone, one atomic line each, so an interrupted grid loses only the jobs that
were running and a rerun completes it with every job exactly once.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.run.discovery import registry_entry
from benchmarks.run.config import check_sets, check_values, expand_grid, resolve
from benchmarks.run.devices import parse_device, resolve_device
from benchmarks.run.jobs import (DEFAULT_DATA_ROOT, PAPER_DATASETS, RECORD_FIELDS, code_version, job_id, load_dataset,
                                 resolve_dataset, run_job)
from benchmarks.run.progress import ProgressBoard, QueueDrain, job_label
from benchmarks.core.protocols import GENERATOR_MODEL, check_axes, get_protocol
from benchmarks.run.store import ResultStore

PAPER_SEEDS = (999, 42, 2023, 2024, 2025)
QUICK_SCALE = 0.05
MAX_WORKER_CRASHES = 2


@dataclass
class RunOptions:
    protocols: list[str]
    datasets: list[str]
    models: list[str]
    seeds: list[int] | None = None
    data_root: str | None = None  # None: DEFAULT_DATA_ROOT, where absent paper datasets run on replicas
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
    explicit_root = opts.data_root is not None
    root = Path(opts.data_root if explicit_root else DEFAULT_DATA_ROOT)
    if explicit_root and not root.is_dir():
        raise FileNotFoundError(f"--data-root {root}: no such folder (without --data-root, paper datasets missing "
                                f"from {DEFAULT_DATA_ROOT}/ run on their synthetic replicas)")
    datasets, unused_real = {}, []
    for requested in opts.datasets:
        # --quick always runs on replicas; without real data under the default root a paper
        # dataset runs on its replica, and an explicit --data-root must hold what is asked for.
        name = f"synthetic:{requested}" if opts.quick and requested in PAPER_DATASETS else requested
        if name != requested and (root / requested).is_dir():
            unused_real.append(str(root / requested))
        scale = opts.scale or (1.0 if opts.full and not opts.quick else QUICK_SCALE)
        ref, fallback = resolve_dataset(name, root, scale, fallback=not explicit_root)
        quick = opts.quick or (ref.synthetic and not opts.full)
        datasets[ref.name] = {"ref": ref, "quick": quick, "fallback": fallback, "requested": requested}
    # Every value of every setting is checked before any dataset is loaded or any job starts.
    for kind, quick in sorted({(d["ref"].kind, d["quick"]) for d in datasets.values()}):
        for entry in entries:
            check_values(resolve(entry, kind, opts.sets, quick), entry.defaults, opts.sets, f"{entry.name} on {kind}")
    all_quick = all(d["quick"] for d in datasets.values())
    seeds = list(opts.seeds) if opts.seeds else ([PAPER_SEEDS[0]] if all_quick else list(PAPER_SEEDS))
    banner = []
    for name, d in datasets.items():
        ref = d["ref"]
        what = {"synthetic": f"SYNTHETIC replica at scale {ref.scale}", "reference": "reference data (surrogate features)",
                "real": "real data"}[ref.source]
        note = f" (no {d['requested']}/ under {root}/)" if d["fallback"] else ""
        sched = ("embedded default: first grid setting, official schedule to early stopping" if d["quick"]
                 else "full protocol: every grid setting, official schedule to early stopping")
        banner.append(f"{d['requested']}: {what}{note}; {sched}")
    if unused_real:
        banner.append(f"--quick runs synthetic replicas: the data in {', '.join(unused_real)} is not used "
                      f"(drop --quick to run on it)")
    banner.append(f"seeds: {','.join(map(str, seeds))}" + (" (one seed: quick run)" if all_quick and not opts.seeds else ""))
    version = code_version()
    jobs = []
    generator = None
    for proto in protocols:
        for name, d in datasets.items():
            ref = d["ref"]
            ds = load_dataset(ref)
            fingerprint = ds.fingerprint_digest()

            def specs(entry, cfg, ratio, seed, **extra):
                return _job_specs(entry, proto, ref, cfg, ratio, seed, fingerprint, version, opts, **extra)

            for entry in entries:
                if not proto.accepts(entry.cls):
                    continue
                base = resolve(entry, ref.kind, opts.sets, d["quick"])
                for variant in proto.variants(ds, base, entry.cls):
                    cfg = dict(base, **variant)
                    check_axes(ds, cfg)
                    for ratio in proto.ratios(ds, cfg):
                        for seed in seeds:
                            if cfg.get("missing_imputation") != "generated":
                                jobs.extend(specs(entry, cfg, ratio, seed))
                                continue
                            # the generating model's jobs on the same data come first; their
                            # generated features are this job's imputation
                            generator = generator or registry_entry(GENERATOR_MODEL)
                            gcfg = resolve(generator, ref.kind, opts.sets, d["quick"])
                            if gcfg.get("missing_imputation") == "generated":
                                gcfg["missing_imputation"] = "mean"
                            producers = specs(generator, gcfg, ratio, seed, save_generated=True)
                            jobs.extend(producers)
                            jobs.extend(specs(entry, dict(cfg, generated_from=producers[0]["grid_group"]), ratio,
                                              seed, depends_on=[p["job_id"] for p in producers]))
    if not jobs and entries:
        raise ValueError(f"no selected model applies to protocol(s) {', '.join(opts.protocols)} "
                         f"(retrieval needs a model with generated_features(), such as DGMRec; imputation a model "
                         f"that takes imputed features)")
    unique: dict[str, dict] = {}
    for j in jobs:  # protocols of one family share jobs; a job that produces features for others says so
        if j["job_id"] in unique and j.get("save_generated"):
            unique[j["job_id"]]["save_generated"] = True
        unique.setdefault(j["job_id"], j)
    if generator is not None and generator.name not in {e.name for e in entries}:
        banner.append(f"imputation 'generated': {generator.name} jobs are added to generate the features")
    return Plan(list(unique.values()), banner, datasets, seeds)


def _job_specs(entry, proto, ref, cfg: dict, ratio: float, seed: int, fingerprint: str, version: str,
               opts: RunOptions, **extra) -> list[dict]:
    """The job specs of one (model, dataset, protocol, ratio, seed): one per grid setting."""
    group_identity = {"model": entry.name, "dataset": ref.name, "protocol": proto.job_protocol,
                      "missing_ratio": ratio, "seed": seed, "config": identity_config(cfg),
                      "fingerprint": fingerprint}
    settings = expand_grid(cfg, entry.cls.list_params)
    if cfg.get("grid_limit"):  # quick runs train only the first grid setting(s)
        settings = settings[:int(cfg["grid_limit"])]
    out = []
    for setting in settings:
        # The job's seed and ratio are spec fields, not configuration; its identity hashes them
        # inside the configuration, where they always were, so that job ids stay what they were.
        config = {k: v for k, v in setting.items() if k != "missing_ratio"}
        identity = dict(group_identity, config=identity_config(dict(config, seed=seed, missing_ratio=ratio)))
        out.append({
            "job_id": job_id(identity), "grid_group": job_id(group_identity),
            "grid_keys": setting["grid_keys"], "grid_size": len(settings),
            "model": entry.name, "group": entry.group, "dataset": ref.name,
            "dataset_kind": ref.kind, "data_source": ref.source, "dataset_ref": asdict(ref),
            "protocol": proto.job_protocol, "missing_ratio": ratio, "seed": seed, "config": config,
            "fingerprint": fingerprint, "code_version": version,
            "results_dir": opts.results_dir, "cache_dir": opts.cache_dir, **extra,
        })
    return out


def worker_threads(n_workers: int) -> int:
    """Torch threads per worker: ``OMP_NUM_THREADS`` when set (a shared machine), else the cores
    divided among the workers (more threads than cores makes every job slower)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not env:
        return max(1, (os.cpu_count() or 1) // max(1, n_workers))
    try:
        threads = int(env)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"OMP_NUM_THREADS must be a positive integer, got {env!r}")
    return threads


def execute(jobs: list[dict], store: ResultStore, n_workers: int = 1, progress: bool = True,
            retry_failed: bool = False, on_record=None, devices: list[str] | None = None,
            run_pending=None, fresh_workers: bool = False) -> dict:
    """Run the jobs not yet in the store; return counts of what happened.

    ``fresh_workers``: start a new worker process for every job, so that a job's recorded peak
    memory is its own (a reused worker keeps what the allocator retained from earlier jobs);
    costs a process start and the imports (~2 s) per job, so only the cost benchmark uses it.

    ``devices``: one device per worker process (``gpu_worker_slots``), which then replaces
    ``n_workers``. ``run_pending(pending, record)``: another backend (``ray_backend.RayBackend.run``)
    that runs the pending jobs and calls ``record`` with each record; the driver appends them.
    """
    done = store.finished_ids(retry_failed=retry_failed)
    seen, pending = set(), []
    for j in jobs:
        if j["job_id"] not in done and j["job_id"] not in seen:
            seen.add(j["job_id"])
            pending.append(j)
    # A finished job whose generated features a pending job needs but never saved them (it ran
    # before it had a dependent) runs again; its new record supersedes the old one.
    needed = {p for j in pending for p in j.get("depends_on") or ()}
    status = {r["job_id"]: r.get("status") for r in store.records(warn=False)} if needed else {}
    for j in jobs:
        if j["job_id"] in needed and j["job_id"] not in seen and status.get(j["job_id"]) == "ok" \
                and not store.has_generated(j["job_id"]):
            seen.add(j["job_id"])
            pending.append(j)
    counts = {"planned": len(jobs), "skipped": len(jobs) - len(pending), "ok": 0, "failed": 0}
    board = ProgressBoard(len(pending), enabled=progress)

    def record(rec):
        store.append(rec)
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        board.finished(rec)
        if on_record is not None:
            on_record(rec)

    try:
        with _sigterm_as_interrupt():
            # jobs that read another job's output run after every job they may read from
            first = [j for j in pending if not j.get("depends_on")]
            then = [j for j in pending if j.get("depends_on")]
            for stage in (first, then):
                if stage:
                    _dispatch(stage, record, n_workers, board, devices, run_pending, fresh_workers)
    finally:
        board.close()
    return counts


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """A SIGTERM (a scheduler's stop, ``kill``) to the driver takes the Ctrl-C path: running
    workers are stopped instead of being left orphaned, and the store keeps what finished."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dispatch(pending, record, n_workers, board, devices, run_pending, fresh_workers) -> None:
    if run_pending is not None:
        run_pending(pending, record)
    elif n_workers <= 0:
        for spec in pending:
            record(run_job(spec, on_epoch=board.on_epoch(spec)))
    elif devices:
        _run_pool(pending, len(devices), record, board, devices=devices, fresh=fresh_workers)
    else:
        _run_pool(pending, n_workers, record, board, fresh=fresh_workers)


def _run_pool(pending: list[dict], n_workers: int, record, board: ProgressBoard | None = None,
              devices: list[str] | None = None, fresh: bool = False) -> None:
    board = board or ProgressBoard(len(pending), enabled=False)
    threads = worker_threads(n_workers)
    crashes: dict[str, int] = {}
    queue = list(pending)
    ctx = mp.get_context("spawn")
    epochs = ctx.Queue() if board.enabled else None  # workers' per-epoch progress messages
    while queue:
        if devices:  # one device per worker: each worker takes one slot from a queue when it starts
            slots = ctx.Queue()
            for d in devices:
                slots.put(d)
            pool = cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_slot_worker_init,
                                          initargs=(threads, epochs, slots), max_tasks_per_child=1 if fresh else None)
            futures = {pool.submit(_run_on_slot, spec): spec for spec in queue}
        else:
            pool = cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_worker_init,
                                          initargs=(threads, epochs), max_tasks_per_child=1 if fresh else None)
            futures = {pool.submit(_run_reporting, spec): spec for spec in queue}
        queue = []
        drain = QueueDrain(epochs, board) if epochs is not None else contextlib.nullcontext()
        try:
            with drain:
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
            # Stop the workers now: their jobs are rerun on resume, and waiting for them would
            # only delay the exit (their records could no longer be written).
            for proc in mp.active_children():
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


_PROGRESS_QUEUE = None  # in a worker process: where run_job's epochs are reported (None: not shown)


def _worker_init(threads: int, progress_queue=None):
    global _PROGRESS_QUEUE
    import torch
    torch.set_num_threads(threads)
    _PROGRESS_QUEUE = progress_queue


def _run_reporting(spec: dict) -> dict:
    """Run a job in a worker process, sending each epoch's curve point to the driver's board."""
    on_epoch = None
    if _PROGRESS_QUEUE is not None:
        label, q = job_label(spec), _PROGRESS_QUEUE
        on_epoch = lambda point: q.put((spec["job_id"], label, point))  # noqa: E731
    return run_job(spec, on_epoch=on_epoch)


def _crash_record(spec: dict) -> dict:
    rec = {k: spec[k] for k in RECORD_FIELDS}
    rec.update(status="failed", error="the worker process died twice while running this job "
                                      "(killed, or out of memory at the operating-system level)")
    return rec


# --------------------------------------------------------------------------- job identity

RESOURCE_KEY_PREFIX = "resources_"


def identity_config(cfg: dict) -> dict:
    """The configuration that identifies a job: without the ``resources_*`` keys (what a job asks
    the Ray backend for does not change what it computes, so it neither reruns nor duplicates it)
    and without keys set to null (a new option whose null default keeps the old behaviour must not
    turn every finished job of an existing store into an unfinished one)."""
    return {k: v for k, v in cfg.items() if not k.startswith(RESOURCE_KEY_PREFIX) and v is not None}


# --------------------------------------------------------------------------- GPU worker slots (local backend)

_SLOT_DEVICE: str | None = None  # the device of this worker process (set by _slot_worker_init)


def gpu_worker_slots(device: str | None, jobs_per_gpu: int = 1, gpu_count: int | None = None) -> list[str] | None:
    """The device of each local worker slot, or None for CPU workers (``--jobs`` then applies).

    With G visible GPUs and ``device`` auto or cuda: G*K slots, slot s on ``cuda:{s % G}``;
    ``cuda:N``: K slots on GPU N; ``cpu``, or auto without a GPU: None.
    """
    import torch
    if jobs_per_gpu < 1:
        raise ValueError(f"--jobs-per-gpu must be >= 1, got {jobs_per_gpu}")
    gpus = torch.cuda.device_count() if gpu_count is None else gpu_count
    resolved = resolve_device(device, gpus)
    if resolved.type == "cpu":
        return None
    if resolved.index is not None:
        return [str(resolved)] * jobs_per_gpu
    return [f"cuda:{s % gpus}" for s in range(gpus * jobs_per_gpu)]


def _slot_worker_init(threads: int, progress_queue, slots) -> None:
    global _SLOT_DEVICE
    _worker_init(threads, progress_queue)
    _SLOT_DEVICE = slots.get(timeout=120)
    import torch
    if _SLOT_DEVICE.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(_SLOT_DEVICE))


def _run_on_slot(spec: dict) -> dict:
    """Run a job on this worker's device (a job configured for the CPU stays there)."""
    if _SLOT_DEVICE is not None and parse_device(spec["config"].get("device"))[0] != "cpu":
        spec = dict(spec, config=dict(spec["config"], device=_SLOT_DEVICE))
    return _run_reporting(spec)


def print_banner(p: Plan, protocols, models, stream=None) -> None:
    stream = stream or sys.stdout
    print("=" * 78, file=stream)
    print(f"DGMRec benchmark suite: protocol(s) {', '.join(protocols)}; {len(models)} model(s); "
          f"{len(p.jobs)} job(s)", file=stream)
    for line in p.banner:
        print(f"  {line}", file=stream)
    if any(d["ref"].synthetic for d in p.datasets.values()):
        print("  NOTE: synthetic replicas are not the paper's data; their numbers are not comparable to the paper.",
              file=stream)
    print("=" * 78, file=stream)
