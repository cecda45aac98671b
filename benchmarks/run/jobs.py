"""One job = one training run of one model setting on one dataset, protocol, ratio and seed.

``run_job(spec) -> record`` is a pure function of its spec (Ray-trainable shaped): it loads
the data, applies the protocol, builds the model, trains, evaluates and returns the record
that the driver appends to the results store. It never raises for a failing model: the
failure (exception, non-finite loss, out of memory) becomes a record with ``status: failed``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.run.devices import resolve_device
from data_prep.dataset import Dataset, load_folder

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC_PREFIX = "synthetic:"
PAPER_DATASETS = ("baby", "sports", "clothing", "tiktok")
DEFAULT_DATA_ROOT = "data"
RECORD_VERSION = 1


@dataclass(frozen=True)
class DatasetRef:
    """How to obtain a dataset inside any worker process (picklable, hashable)."""

    name: str  # display name: "tiktok" or "synthetic:tiktok"
    kind: str
    source: str  # real | reference | synthetic
    root: str | None = None
    scale: float = 1.0
    seed: int = 2025

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"


def resolve_dataset(name: str, data_root: str | Path, scale: float, fallback: bool = True) -> tuple[DatasetRef, bool]:
    """A dataset name -> (reference, fell_back_to_synthetic).

    ``synthetic:<kind>`` always names a replica. A plain name is looked up under the data
    root; with ``fallback`` (the default data root, which a fresh clone does not have) a paper
    dataset that is not there runs on its synthetic replica, otherwise it is an error.
    """
    if name.startswith(SYNTHETIC_PREFIX):
        kind = name[len(SYNTHETIC_PREFIX):]
        from data_prep.synthetic import KINDS
        if kind not in KINDS:
            raise ValueError(f"unknown synthetic replica {name!r}; known: "
                             + ", ".join(f"synthetic:{k}" for k in KINDS))
        return DatasetRef(name, kind, "synthetic", None, scale), False
    folder = Path(data_root) / name
    if folder.is_dir():
        return DatasetRef(name, name, data_label(folder), str(Path(data_root).resolve())), False
    if name in PAPER_DATASETS and fallback:
        return DatasetRef(f"{SYNTHETIC_PREFIX}{name}", name, "synthetic", None, scale), True
    hint = f"; its synthetic replica is synthetic:{name}" if name in PAPER_DATASETS else \
        "; known replicas: " + ", ".join(f"synthetic:{k}" for k in PAPER_DATASETS + ("elec",))
    raise FileNotFoundError(f"dataset folder {folder} not found{hint}")


def data_label(folder: Path) -> str:
    """``real`` or ``reference`` (surrogate features): the folder's SOURCE record written by
    ``python -m data_prep import``, else whether it lies in a folder named ``reference``."""
    from data_prep.provenance import read_source
    kind = read_source(folder).get("kind")
    if kind in ("real", "reference"):
        return kind
    return "reference" if folder.resolve().parent.name == "reference" else "real"


@functools.lru_cache(maxsize=4)
def load_dataset(ref: DatasetRef) -> Dataset:
    if ref.synthetic:
        from data_prep.synthetic import make_replica
        return make_replica(ref.kind, scale=ref.scale, seed=ref.seed)
    return load_folder(ref.root, ref.name, source=ref.source, kind=ref.kind)


# --------------------------------------------------------------------------- provenance

@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<git sha>[-dirty]`` of the project, or ``nogit-<hash of the sources>``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if sha:
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    h = hashlib.sha256()
    for pkg in ("models", "baselines", "benchmarks", "data_prep"):
        for p in sorted((PROJECT_ROOT / pkg).rglob("*")):
            if p.suffix in (".py", ".yaml"):
                h.update(p.read_bytes())
    return "nogit-" + h.hexdigest()[:12]


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "platform": platform.platform(), "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def job_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PeakMemory:
    """Peak resident memory of this process while a job runs (sampled every 10 ms)."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self.start = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mb(self) -> float:
        return round(self.peak / 2 ** 20, 1)

    @property
    def start_mb(self) -> float:
        return round(self.start / 2 ** 20, 1)


def check_device_memory(model, device: torch.device) -> None:
    """Refuse a job up front on a GPU that cannot hold even its model: what is allocated once the
    task and model are built, plus a gradient and Adam's two moments per trainable parameter, is a
    lower bound of the training peak (activations come on top); a shortfall is a MemoryError that
    names both figures, before the first batch."""
    if device.type != "cuda":
        return
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    need = torch.cuda.memory_allocated(device) + 3 * params
    total = torch.cuda.get_device_properties(device).total_memory
    if need > total:
        gib = 2 ** 30
        raise MemoryError(f"{type(model).__name__} needs at least {need / gib:.1f} GiB on {device} (model, data "
                          f"and graphs {torch.cuda.memory_allocated(device) / gib:.1f} GiB, gradients and Adam "
                          f"state {3 * params / gib:.1f} GiB), the device has {total / gib:.1f} GiB")


# --------------------------------------------------------------------------- the job

# Spec fields every record of the job carries (a failure record too).
RECORD_FIELDS = ("job_id", "grid_group", "model", "group", "dataset", "dataset_kind", "data_source", "protocol",
                 "missing_ratio", "seed", "fingerprint", "code_version", "grid_keys", "grid_size", "config")


def run_job(spec: dict, on_epoch=None) -> dict:
    """Train and evaluate one job; always returns a record (``status`` ok or failed).

    ``on_epoch(point)`` is called after every epoch with the epoch's curve point (progress display)."""
    from benchmarks.core.engine import Trainer, seed_everything

    cfg = spec["config"]
    record = dict({k: spec[k] for k in RECORD_FIELDS}, record_version=RECORD_VERSION, status="failed", started=_now())
    t_start = time.perf_counter()
    device = torch.device("cpu")
    # A deterministic job runs on one thread; the caller (a notebook, a test) keeps its own settings.
    with PeakMemory() as mem, _restored(torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()):
        try:
            device = prepare_device(cfg)
            rng = seed_everything(int(spec["seed"]), bool(cfg.get("deterministic")))
            record["environment"] = environment(device)  # the threads the job really runs on
            dataset, protocol, model_cls, cache = job_inputs(spec)
            t0 = time.perf_counter()
            task = build_task(spec, dataset, protocol, model_cls, device, cache)
            model, test_time = build_model(model_cls, cfg, task, device)
            fill_setup(record, task, model, t0)
            analyses = protocol.analyses(dataset, task, model_cls)
            result = Trainer(model, task, cfg, rng, progress=on_epoch, analyses=analyses, test_time=test_time).run()
            fill_result(record, result)
            record["status"] = "ok"
            record["eval_counts"] = {"valid": [len(task.valid), task.valid.n_interactions],
                                     "test": [len(task.test), task.test.n_interactions]}
            write_job_files(record, spec, result)
        except Exception as exc:  # noqa: BLE001 - a failing job must not stop the grid
            fill_failure(record, exc)
    record["peak_memory_mb"] = mem.mb
    record["start_memory_mb"] = mem.start_mb  # process RSS when the job began (a reused worker carries some)
    if device.type == "cuda":
        record["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    record["total_seconds"] = round(time.perf_counter() - t_start, 3)
    record["finished"] = _now()
    record.setdefault("environment", environment(device))
    return record


def prepare_device(cfg: dict) -> torch.device:
    """The job's device, with its per-job CUDA settings (a worker runs many jobs)."""
    device = resolve_device(cfg.get("device"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        # Full float32 products unless the job asks for TF32.
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.get("cuda_tf32"))
    return device


def job_inputs(spec: dict):
    """The dataset, protocol, model class and artefact cache of a job."""
    from benchmarks.core.protocols import get_protocol
    from benchmarks.run.discovery import registry_entry
    from models.cache import ArtifactCache

    dataset = load_dataset(DatasetRef(**spec["dataset_ref"]))
    cache = ArtifactCache(spec.get("cache_dir"))
    model_cls = registry_entry(spec["model"]).cls
    return dataset, get_protocol(spec["protocol"]), model_cls, cache


def build_task(spec: dict, dataset: Dataset, protocol, model_cls, device: torch.device, cache):
    """The job's task; the ``generated`` imputation takes the features its producer job saved
    (the Ray backend ships them in the spec)."""
    generated = None
    if spec["config"].get("missing_imputation") == "generated":
        generated = spec.get("generated") or load_generated_for(spec)
    return protocol.build_task(dataset, spec["config"], model_cls, spec["missing_ratio"], device, cache, generated)


def build_model(model_cls, cfg: dict, task, device: torch.device):
    """The model on its device, and under test_only its test-time copy (trained on complete
    features, tested on masked ones); refused up front when it cannot fit the GPU."""
    test_time = None
    if task.test_task is not None:
        from benchmarks.core.masked_copy import build_pair
        model, test_time = build_pair(model_cls, cfg, task)
    else:
        model = model_cls(cfg, task).to(device)
    check_device_memory(model, device)
    return model, test_time


def fill_setup(record: dict, task, model, t0: float) -> None:
    shown = task.test_task or task
    record["missing_axes"] = {"imputation": shown.imputation, "mechanism": task.mechanism,
                              "filled_rows": shown.imputation_info}
    record["setup_seconds"] = round(time.perf_counter() - t0, 3)
    record["n_parameters"] = int(sum(p.numel() for p in model.parameters()))


def write_job_files(record: dict, spec: dict, result) -> None:
    """The per-user test vectors and, for a job another job imputes from, its generated features."""
    from benchmarks.run.store import ResultStore

    if result.test_users is None or not spec.get("results_dir"):
        return
    store = ResultStore(spec["results_dir"])
    record["per_user_file"] = store.save_per_user(spec["job_id"], result.test_users, result.test_per_user,
                                                  groups=result.groups)
    generated = (result.captured.get("feature_quality") or {}).get("generated")
    if spec.get("save_generated") and generated:
        record["generated_file"] = store.save_generated(spec["job_id"], generated)


def fill_failure(record: dict, exc: Exception) -> None:
    """The failure record: the error, and for a failure in training the epoch and the best result so far."""
    from benchmarks.core.engine import TrainingFailure

    if isinstance(exc, TrainingFailure):
        record["error"] = str(exc)
        record["failed_epoch"] = exc.epoch
        if exc.__cause__ is not None:
            record["traceback"] = "".join(traceback.format_exception(exc.__cause__, limit=8))[-4000:]
        if exc.partial is not None and exc.partial.best_epoch >= 0:
            fill_result(record, exc.partial)
    elif isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        record["error"] = f"out of memory: {exc}".strip()
    else:
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = "".join(traceback.format_exception(exc, limit=8))[-4000:]


class _restored:
    def __init__(self, threads: int, deterministic: bool):
        self.threads, self.deterministic = threads, deterministic

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.deterministic)


def load_generated_for(spec: dict) -> dict:
    """The generated features the ``generated`` imputation of this job takes: those saved by the
    best-validation ok job among its producers (``spec["depends_on"]``, one grid of the generating
    model on the same dataset, ratio and seed)."""
    from benchmarks.core.protocols import GENERATOR_MODEL, ProtocolError
    from benchmarks.run.store import ResultStore

    producers = list(spec.get("depends_on") or ())
    if not producers or not spec.get("results_dir"):
        raise ProtocolError(f"missing_imputation 'generated' needs a {GENERATOR_MODEL} job that generates the features "
                            f"(planned by the runner; none is named for this job)")
    store = ResultStore(spec["results_dir"])
    recs = {r["job_id"]: r for r in store.records(warn=False) if r["job_id"] in set(producers)}
    ok = [r for r in recs.values() if r.get("status") == "ok" and r.get("generated_file")]
    if not ok:
        states = ", ".join(f"{j} {recs[j].get('status', '?') if j in recs else 'not run'}" for j in producers)
        raise ProtocolError(f"missing_imputation 'generated': no finished {GENERATOR_MODEL} job saved generated "
                            f"features for this dataset, ratio and seed ({states})")
    metric = str(ok[0].get("config", {}).get("valid_metric", "recall@20")).lower()
    best = max(ok, key=lambda r: r.get("valid", {}).get(metric, float("-inf")))
    return store.load_generated(best["job_id"])


def fill_result(record: dict, result) -> None:
    record.update({
        "best_epoch": result.best_epoch, "valid": result.valid, "test": result.test,
        "epochs_run": result.epochs_run, "stopped_early": result.stopped_early, "stop_reason": result.stop_reason,
        "train_seconds_per_epoch": _r(result.train_seconds_per_epoch),
        "train_seconds_per_epoch_median": _r(result.train_seconds_per_epoch_median),
        "eval_seconds": _r(result.eval_seconds),
        "valid_eval_seconds": _r(float(np.mean(result.valid_eval_seconds)) if result.valid_eval_seconds else None),
        "curve": result.curve,
    })
    if result.epoch_fraction < 1.0:  # max_batches_per_epoch: the s/epoch figures above are projections
        record["epoch_capped"] = {"batches_run": result.batches_run, "batches_per_epoch": result.batches_per_epoch}
    if result.extra:
        record["extra"] = result.extra
        record["extra_counts"] = {k: list(v) for k, v in result.extra_counts.items()}


def _r(x):
    return None if x is None else round(float(x), 4)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

