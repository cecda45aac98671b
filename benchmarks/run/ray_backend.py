"""Ray backend: each pending job runs as a Ray task with the resources its configuration asks for.

    python run_all.py --backend ray                  # a local Ray instance on this machine
    python run_all.py --backend ray --address auto   # the cluster this machine joined (`ray start`)

The driver plans the grid as usual, submits one task per pending job and appends every
record to *its own* results store as it arrives, exactly as the local backend does: resume,
failure records and tables are unchanged. A task calls ``run_job(spec)`` on whichever node
Ray places it and returns the record together with the job's per-user metric file, which the
driver writes to ``<results-dir>/per_user/``: results land on the driver's machine whatever
node ran the job. (Ray moves tasks and results with pickle: the cluster's nodes are trusted
like this machine; the driver still chooses the per-user file's name itself.)

Resources per job come from configuration keys (``benchmarks/run/configs/overall.yaml``; set them
with ``--set``): ``resources_cpus`` (Ray ``num_cpus``, also the job's torch threads),
``resources_gpus`` (``num_gpus``; a fraction below 1 shares a GPU) and
``resources_memory_mb`` (Ray's logical ``memory`` resource; null reserves nothing). They are
not part of a job's identity (``runner.identity_config``): the same job asking for other
resources is the same job.

Devices: a job with ``resources_gpus > 0`` runs on the GPU(s) Ray assigned to its task
(``cuda``, i.e. the first of them); a job without runs on the CPU even where the node has
GPUs (Ray does not hide them from tasks that asked for none). The record's ``config.device``
says which.

Worker deaths: Ray reruns a task whose worker process (or node) died up to ``MAX_RETRIES``
times; a job whose worker dies ``MAX_RETRIES + 1`` times is recorded failed, worded like the
local backend's record. A failure of the Ray cluster itself (the local raylet died, ...) stops
the run instead: finished jobs are in the store and a rerun resumes.

Ray is an optional extra (``requirements-ray.txt``): importing this module does not import it.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from benchmarks.run.devices import parse_device
from benchmarks.run.jobs import load_generated_for
from benchmarks.run.runner import MAX_WORKER_CRASHES, _crash_record
from benchmarks.run.store import ResultStore

REQUIREMENTS_FILE = "requirements-ray.txt"
MAX_RETRIES = MAX_WORKER_CRASHES - 1  # as the local backend: a job may break its worker once
TASK_PREFIX = "dgmrec"                # task names (and worker process titles): ray::dgmrec:<model>:...


class RayBackendError(RuntimeError):
    """Ray is missing, misconfigured, unreachable, or the cluster failed."""


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RayBackendError(f"--backend ray needs Ray, which is not importable here ({exc}); install the "
                              f"optional extra with `python -m pip install -r {REQUIREMENTS_FILE}`") from None
    return ray


# --------------------------------------------------------------------------- per-job resources

def job_resources(cfg: dict) -> dict:
    """Ray task resources of one job, from its configuration: num_cpus, num_gpus[, memory in bytes]."""
    cpus = _number(cfg, "resources_cpus", 1)
    gpus = _number(cfg, "resources_gpus", 0)
    if cpus <= 0:
        raise RayBackendError(f"resources_cpus must be > 0, got {cpus}")
    if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise RayBackendError(f"resources_gpus must be 0, a fraction below 1 or a whole number, got {gpus}")
    out = {"num_cpus": cpus, "num_gpus": gpus}
    mem = cfg.get("resources_memory_mb")
    if mem is not None:
        mem = _number(cfg, "resources_memory_mb", None)
        if mem <= 0:
            raise RayBackendError(f"resources_memory_mb must be > 0 or null, got {mem}")
        out["memory"] = int(mem * 2 ** 20)
    return out


def job_device(cfg: dict, num_gpus: float) -> str:
    """The device a job uses inside its Ray task (see the module docstring)."""
    kind, _ = parse_device(cfg.get("device"))
    if num_gpus > 0:
        return "cpu" if kind == "cpu" else "cuda"
    if kind == "cuda":
        raise RayBackendError(f"device {cfg.get('device')!r} asks for a GPU but resources_gpus is 0: set e.g. "
                              f"--set resources_gpus=1 (or 0.5 to share a GPU between two jobs)")
    return "cpu"


def _number(cfg: dict, key: str, default):
    value = cfg.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RayBackendError(f"{key} must be a number, got {value!r}")
    return value


def infeasible(requests: list[dict], nodes: list[dict]) -> list[dict]:
    """The resource requests that no alive node could ever satisfy (``nodes``: ``ray.nodes()``)."""
    capacities = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]

    def fits(req, cap):
        return (cap.get("CPU", 0) >= req["num_cpus"] and cap.get("GPU", 0) >= req["num_gpus"]
                and cap.get("memory", 0) >= req.get("memory", 0))

    return [r for r in requests if not any(fits(r, c) for c in capacities)]


# --------------------------------------------------------------------------- inside the worker

# record fields naming files beside the record -> the store folder each goes to
RESULT_FILES = {"per_user_file": "per_user", "generated_file": "generated"}


def _ray_task(spec: dict, device: str, threads: int):
    """Runs in a Ray worker: one job, its record and the bytes of the files it wrote (per-user
    metrics, generated features) by the record field that names them."""
    import torch

    from benchmarks.run.jobs import run_job
    torch.set_num_threads(threads)
    spec = dict(spec, config=dict(spec["config"], device=device))
    files = {}
    with tempfile.TemporaryDirectory(prefix="dgmrec-ray-") as tmp:
        if spec.get("results_dir"):
            spec["results_dir"] = tmp  # the driver writes the files into its own results dir
        record = run_job(spec)
        for key in RESULT_FILES:
            if record.get(key) and spec.get("results_dir"):
                files[key] = (Path(tmp) / record[key]).read_bytes()
    return record, files


# --------------------------------------------------------------------------- the driver

class RayBackend:
    """``run(pending, record)``: the pluggable executor that ``runner.execute`` calls."""

    def __init__(self, address: str | None = None, max_retries: int = MAX_RETRIES, stream=None):
        self.address = address
        self.max_retries = max_retries
        self.stream = stream

    def run(self, pending: list[dict], record) -> None:
        if not pending:
            return
        ray = import_ray()
        plans = []
        for spec in pending:  # validate every job before anything runs
            res = job_resources(spec["config"])
            plans.append((spec, res, job_device(spec["config"], res["num_gpus"])))
        started = self._connect(ray)
        try:
            self._check_feasible(ray, [p[1] for p in plans])
            self._say(ray, plans)
            remote = ray.remote(_ray_task)
            refs = {}
            for spec, res, device in plans:
                if spec.get("depends_on"):  # the generated features it imputes with live in the driver's store
                    try:
                        spec = dict(spec, generated=load_generated_for(spec))
                    except ValueError as exc:
                        record(_failed(spec, str(exc)))
                        continue
                opts = dict(res, max_retries=self.max_retries, retry_exceptions=False, name=task_name(spec))
                refs[remote.options(**opts).remote(spec, device, max(1, int(res["num_cpus"])))] = spec
            remaining = list(refs)
            try:
                while remaining:
                    ready, remaining = ray.wait(remaining, num_returns=1)
                    for ref in ready:
                        record(self._collect(ray, ref, refs[ref]))
            except BaseException:
                for ref in remaining:  # Ctrl-C or a failed cluster: stop what is still queued
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                raise
        finally:
            if started:
                ray.shutdown()

    # ------------------------------------------------------------------ helpers

    def _connect(self, ray) -> bool:
        """Connect (or start a local instance); True if this call started Ray and must shut it down."""
        if ray.is_initialized():
            return False  # the caller (a notebook, a test) owns the connection
        if self.address:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, ... all mean "not there"
                raise RayBackendError(
                    f"cannot connect to the Ray cluster at {self.address!r}: {exc} (start one with `ray start --head`, "
                    f"or drop --address to run a local instance; a cluster with token authentication also needs "
                    f"RAY_AUTH_MODE=token and its token in ~/.ray/auth_token on this machine)") from None
            return True
        # A local instance on this machine only: loopback addresses, no usage reporting.
        try:
            with _env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0"), _local_only(ray):
                ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise RayBackendError(f"cannot start a local Ray instance: {type(exc).__name__}: {_first_line(exc)}") \
                from exc
        return True

    def _say(self, ray, plans) -> None:
        import sys
        total = ray.cluster_resources()
        asks = sorted({_describe(res) for _, res, _ in plans})
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
        nodes = sum(1 for n in ray.nodes() if n.get("Alive", True))
        print(f"ray: {len(plans)} job(s) on {where}: {nodes} node(s), {total.get('CPU', 0):g} CPU(s), "
              f"{total.get('GPU', 0):g} GPU(s); each job asks for {' or '.join(asks)}; a job whose worker dies is "
              f"retried {self.max_retries} time(s)", file=self.stream or sys.stdout, flush=True)

    def _check_feasible(self, ray, requests: list[dict]) -> None:
        unique = list({tuple(sorted(r.items())): r for r in requests}.values())
        bad = infeasible(unique, ray.nodes())
        if bad:
            have = [{k: v for k, v in n.get("Resources", {}).items() if k in ("CPU", "GPU", "memory")}
                    for n in ray.nodes() if n.get("Alive", True)]
            raise RayBackendError(f"no node of the Ray cluster can run a job asking for {_describe(bad[0])} "
                                  f"(nodes: {have}); lower resources_cpus / resources_gpus / resources_memory_mb "
                                  f"with --set, or add a node that has them")

    def _collect(self, ray, ref, spec: dict) -> dict:
        ex = ray.exceptions
        try:
            rec, files = ray.get(ref)
        except ex.OutOfMemoryError as exc:
            return _failed(spec, "out of memory: Ray's memory monitor killed the worker process running this job "
                                 f"({_first_line(exc)})")
        except (ex.WorkerCrashedError, ex.NodeDiedError) as exc:
            what = "worker process" if isinstance(exc, ex.WorkerCrashedError) else "node"
            return _failed(spec, f"the Ray {what} died {self.max_retries + 1} times while running this job "
                                 f"(killed, or out of memory at the operating-system level)")
        except (ex.RayTaskError, ex.TaskUnschedulableError, ex.RuntimeEnvSetupError) as exc:
            cause = getattr(exc, "cause", None) or exc  # RayTaskError wraps what the task raised
            return _failed(spec, f"the Ray task failed: {type(cause).__name__}: {_first_line(cause)}")
        except ex.RayError as exc:
            raise RayBackendError(f"the Ray cluster failed ({type(exc).__name__}: {_first_line(exc)}); finished "
                                  f"jobs are in the store, rerun the same command to resume") from exc
        store = ResultStore(spec["results_dir"])
        for key, data in files.items():
            # the driver names each file from the job id it planned: a record never picks the path
            path = store.result_path(RESULT_FILES[key], spec["job_id"])
            _write_atomic(path, data)
            rec[key] = str(path.relative_to(store.dir))
        return rec


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a HOST:PORT where nothing listens (Ray itself would retry for minutes)."""
    import re
    import socket
    m = re.fullmatch(r"([^:/\s]+):(\d+)", address)
    if not m:
        return  # "auto", ray://..., or anything else Ray resolves itself
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as exc:
        raise RayBackendError(f"cannot reach the Ray head at {address} ({exc}); is `ray start --head --port="
                              f"{m.group(2)}` running there, and is the port open to this machine?") from None


def task_name(spec: dict) -> str:
    return f"{TASK_PREFIX}:{spec['model']}:{spec['dataset']}:s{spec['seed']}:{spec['job_id']}"


def _failed(spec: dict, error: str) -> dict:
    rec = _crash_record(spec)
    rec["error"] = error
    return rec


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _describe(req: dict) -> str:
    out = f"{req['num_cpus']} CPU(s), {req['num_gpus']} GPU(s)"
    return out + (f", {req['memory'] / 2 ** 20:.0f} MB of memory" if "memory" in req else "")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _env(**values):
    """Set environment variables the user has not set, for the duration of the block."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _local_only(ray):
    """Have a local instance use 127.0.0.1, not this machine's network address.

    ``ray.init`` maps 127.0.0.1 to the address other machines would reach, unless Ray thinks
    clusters are off (its macOS/Windows default): the constant is read at import time, so the
    driver's copy is switched for the start-up; the processes Ray starts inherit the
    environment variable that ``_env`` sets.
    """
    consts = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if consts is None or not hasattr(consts, "ENABLE_RAY_CLUSTER") or os.environ.get(
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        yield
        return
    old = consts.ENABLE_RAY_CLUSTER
    consts.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        consts.ENABLE_RAY_CLUSTER = old
