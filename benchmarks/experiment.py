"""The suite from Python: one call runs models × datasets × protocols × seeds and returns the records.

    from benchmarks import run_experiment
    records = run_experiment(models=["LightGCN", "VBPR"], datasets=["synthetic:baby"], protocols="missing",
                             overrides={"epochs": 20}, quick=True, jobs=0)

Every record is a dict as stored in ``<results_dir>/results.jsonl``; a job already in that store
is not run again (its stored record is returned). ``Experiment`` is the same in two steps: the
constructor checks everything and plans the jobs (refusing a bad request before any job runs),
``run()`` runs them and writes the tables. ``run_all.py`` is the command line over it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.core.protocols import ALL_PROTOCOL_NAMES, PAPER_PROTOCOL_NAMES, ProtocolError
from benchmarks.run.config import ConfigError
from benchmarks.run.devices import parse_device
from benchmarks.run.discovery import model_names
from benchmarks.run.jobs import DEFAULT_DATA_ROOT
from benchmarks.run.ray_backend import RayBackendError  # does not import Ray
from benchmarks.run.runner import RunOptions, execute, gpu_worker_slots, plan
from benchmarks.run.store import ResultStore
from data_prep.errors import DataError
from models.registry import UnknownModelError

DEFAULT_DATASETS = ("baby", "sports", "clothing", "tiktok")
# Without real data, the default run trains every model to early stopping on one two-modality and
# one three-modality replica, within minutes on 2 cores.
EMBEDDED_DATASETS = ("baby", "tiktok")
# What refuses an experiment before any job starts (the command line exits with 2).
REFUSALS = (UnknownModelError, ConfigError, ProtocolError, DataError, FileNotFoundError, ValueError, RayBackendError)


def default_jobs() -> int:
    """One worker per core: a deterministic job runs on one thread, so the cores are used by
    running jobs side by side rather than by splitting one job over threads."""
    return max(1, min(8, os.cpu_count() or 1))


def default_datasets(data_root: str | None, quick: bool) -> list[str]:
    """The paper's four datasets when any of them is under the data root (and not quick), else the
    embedded default's replicas."""
    root = Path(data_root or DEFAULT_DATA_ROOT)
    if not quick and any((root / d).is_dir() for d in DEFAULT_DATASETS):
        return list(DEFAULT_DATASETS)
    return list(EMBEDDED_DATASETS)


def protocol_names(protocols: str | Sequence[str]) -> list[str]:
    """``all`` is every paper protocol (not ``imputation``, which multiplies the feature models' jobs)."""
    names = [protocols] if isinstance(protocols, str) else list(protocols)
    out = []
    for name in names:
        out.extend(PAPER_PROTOCOL_NAMES if name == "all" else [name])
    return list(dict.fromkeys(out))


@dataclass
class Outcome:
    records: list[dict]  # the latest stored record of every planned job, in plan order
    counts: dict  # jobs planned, skipped (already in the store), ok and failed in this run
    tables: list[Path]  # the files the report wrote (empty without tables)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r.get("status") == "failed"]


class Experiment:
    """A checked and planned experiment; ``run()`` runs its jobs (see the module text).

    ``device`` sets the configuration key ``device`` (auto, cpu, cuda, cuda:N); ``jobs`` worker
    processes (None: one per core, at most 8; 0: inside this process); ``jobs_per_gpu``: with G
    visible GPUs the local backend runs G·K worker slots; ``backend`` ``local`` or ``ray`` (with
    ``address``, a Ray cluster)."""

    def __init__(self, models: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
                 protocols: str | Sequence[str] = "missing", seeds: Sequence[int] | None = None,
                 overrides: dict | None = None, *, data_root: str | None = None, results_dir: str = "results",
                 cache_dir: str | None = "cache", jobs: int | None = None, quick: bool = False, full: bool = False,
                 scale: float | None = None, device: str | None = None, jobs_per_gpu: int = 1,
                 backend: str = "local", address: str | None = None, retry_failed: bool = False,
                 progress: bool = False):
        jobs = default_jobs() if jobs is None else jobs
        if jobs < 0:
            raise ValueError(f"--jobs must be >= 0, got {jobs}")
        if scale is not None and not 0 < scale <= 1:
            raise ValueError(f"--scale must lie in (0, 1], got {scale}")
        self.protocols = protocol_names(protocols)
        self.models = list(models or model_names())
        sets = dict(overrides or {})
        self.devices, self.run_pending = _backend(sets, device, jobs, jobs_per_gpu, backend, address)
        datasets = list(datasets or default_datasets(data_root, quick))
        self.options = RunOptions(protocols=self.protocols, datasets=datasets, models=self.models,
                                  seeds=list(seeds) if seeds else None, data_root=data_root,
                                  quick=quick, full=full, sets=sets, jobs=jobs, results_dir=str(results_dir),
                                  cache_dir=None if cache_dir is None else str(cache_dir), scale=scale,
                                  retry_failed=retry_failed, progress=progress)
        self.plan = plan(self.options)

    def run(self, write_tables: bool = True) -> Outcome:
        """Run the jobs not yet in the store and, with ``write_tables``, write the tables of the
        whole results folder (a run with fewer models or protocols adds to the tables of earlier
        runs made into it instead of overwriting them with a subset)."""
        opts = self.options
        store = ResultStore(opts.results_dir)
        counts = execute(self.plan.jobs, store, n_workers=opts.jobs, progress=opts.progress,
                         retry_failed=opts.retry_failed, devices=self.devices, run_pending=self.run_pending)
        everything = store.records()
        tables = []
        if write_tables:
            from benchmarks.report.writer import present_protocols, write_report
            shown = set(self.protocols) | set(present_protocols(everything))
            tables = write_report(everything, Path(opts.results_dir), [p for p in ALL_PROTOCOL_NAMES if p in shown],
                                  store)
        latest = {r["job_id"]: r for r in everything}  # a retried job's record supersedes its failure
        records = [latest[j["job_id"]] for j in self.plan.jobs if j["job_id"] in latest]
        return Outcome(records, counts, tables)


def run_experiment(models: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
                   protocols: str | Sequence[str] = "missing", seeds: Sequence[int] | None = None,
                   overrides: dict | None = None, *, data_root: str | None = None, results_dir: str = "results",
                   cache_dir: str | None = "cache", jobs: int | None = None, quick: bool = False,
                   full: bool = False, scale: float | None = None, device: str | None = None,
                   write_tables: bool = True, retry_failed: bool = False, progress: bool = False) -> list[dict]:
    """Run models × datasets × protocols × seeds and return the record of every planned job.

    ``models``: registered names (default: all); ``datasets``: folder names under ``data_root`` or
    ``synthetic:<kind>`` (default: the paper's four when any is there, else the replicas of baby
    and tiktok); ``protocols``: one name, several, or ``all``; ``seeds``: default 999, 42, 2023,
    2024, 2025 (999 alone on replicas); ``overrides``: configuration keys, as ``--set``;
    ``quick``/``full``: as ``--quick``/``--full``; ``jobs``: worker processes (0: in this
    process); ``write_tables``: write the tables into ``results_dir`` as the command line does.
    """
    experiment = Experiment(models, datasets, protocols, seeds, overrides, data_root=data_root,
                            results_dir=results_dir, cache_dir=cache_dir, jobs=jobs, quick=quick, full=full,
                            scale=scale, device=device, retry_failed=retry_failed, progress=progress)
    return experiment.run(write_tables).records


def _backend(sets: dict, device: str | None, jobs: int, jobs_per_gpu: int, backend: str, address: str | None):
    """Apply ``device`` to the configuration; return (local GPU worker slots or None, the Ray runner or None)."""
    if device is not None:
        parse_device(device)
        if "device" in sets and str(sets["device"]) != device:
            raise ValueError(f"--device {device} contradicts --set device={sets['device']}")
        sets["device"] = device
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be local or ray, got {backend!r}")
    if address and backend != "ray":
        raise ValueError("--address needs --backend ray")
    if backend == "ray":
        if jobs_per_gpu != 1:
            raise ValueError("--jobs-per-gpu is for the local backend; with --backend ray set the GPU share of a job "
                             "with --set resources_gpus=0.5 (two jobs per GPU) etc.")
        from benchmarks.run.ray_backend import RayBackend, import_ray
        import_ray()  # fail now, with the install hint, if Ray is missing
        return None, RayBackend(address=address).run
    slots = gpu_worker_slots(sets.get("device", "auto"), jobs_per_gpu)  # checks the device request here
    return (slots if jobs > 0 else None), None
