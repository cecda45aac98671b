"""Everything the suite measures on a GPU, in one call that fits a 9-minute slot.

    python -m benchmarks.experiments.gpu_check --device cuda --official-src /path/to/DGMRec/src   # on the GPU
    python -m benchmarks.experiments.gpu_check --device cpu --smoke                               # rehearsal

Five phases share a time budget (``--budget`` seconds, split by ``PHASES``; what a phase leaves
unused goes to the next): ``correctness`` (every model on the device against the CPU with
``device_compare``, the poisoned-input check of ``leakage``, kNN graphs, host reads of
``host_sync``, a profile of three training batches), ``throughput`` (K = 1, 2, 4 jobs per GPU),
``speed`` (``bench_cost`` beside the official implementation), ``catalogue`` (one epoch and one
evaluation of every model on the full-scale Electronics and Clothing replicas, each job in its
own process) and ``estimate`` (``grid_estimate``). The tables go to ``--out`` (default
``results/gpu``), stores, caches and replicas to ``--work``, so a second call continues where a
first ran out of time; ``summary.md`` gathers the tables. ``--smoke`` runs every phase on tiny
replicas with four models and one epoch, so the script can be tried on a CPU. The phases'
outputs are listed in the README (*On a GPU*).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from benchmarks.experiments.bench_common import REFERENCE as _REFERENCE

# the reference data beside the checkout, or inside it (a copy of the working tree with shared/ in it)
REFERENCE = next((p for p in (_REFERENCE, Path(__file__).resolve().parents[2] / "shared" / "data" / "reference")
                  if p.is_dir()), _REFERENCE)

# seconds of the default 520 s budget per phase
PHASES = {"correctness": 110, "throughput": 70, "speed": 190, "catalogue": 150, "estimate": 0}
THROUGHPUT_MODELS = ("MFBPR", "LightGCN", "VBPR", "NGCF")
CATALOGUE = ("elec", "clothing")  # Electronics first: the done-criterion is its whole epoch


class Clock:
    """Phase budgets: a phase gets its share plus what earlier phases left unused."""

    def __init__(self, total: float, shares: dict):
        self.start = time.perf_counter()
        self.total = total
        scale = total / max(sum(PHASES.values()), 1)
        self.shares = {k: v * scale for k, v in shares.items()}
        self.carry = 0.0
        self._phase_end = None

    def begin(self, phase: str) -> float:
        left = self.total - (time.perf_counter() - self.start)
        budget = max(0.0, min(self.shares[phase] + self.carry, left))
        self._phase_start, self._phase_budget = time.perf_counter(), budget
        return budget

    def remaining(self) -> float:
        return self._phase_budget - (time.perf_counter() - self._phase_start)

    def end(self) -> float:
        used = time.perf_counter() - self._phase_start
        self.carry = max(0.0, self._phase_budget - used)
        return used


def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": device, "cpu_cores": os.cpu_count(), "platform": platform.platform()}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1))
    return env


def _md(rows: list[dict]) -> str:
    return tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3g", missingval="–") if rows else "(none)"


# --------------------------------------------------------------------------- replicas in the background

def _replica_file(work: Path, kind: str, scale: float) -> Path:
    return work / "replicas" / f"{kind}-{scale:g}.pkl"


def start_replicas(out: Path, kinds, scale: float) -> list[subprocess.Popen]:
    """Generate the catalogue replicas in background processes (pickled; skipped when present)."""
    procs = []
    for kind in kinds:
        path = _replica_file(out, kind, scale)
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.experiments.gpu_check", "--child-replica",
                                       f"{kind}:{scale:g}:{path}"], env=dict(os.environ, OMP_NUM_THREADS="4")))
    return procs


def _child_replica(spec: str) -> int:
    from data_prep.synthetic import make_replica
    kind, scale, path = spec.split(":", 2)
    ds = make_replica(kind, scale=float(scale))
    tmp = Path(path + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(ds, f, protocol=5)
    tmp.replace(path)
    return 0


@contextlib.contextmanager
def _replicas_from(work: Path):
    """Within: the planner and the jobs load the pickled replicas made by ``start_replicas``."""
    import functools

    from benchmarks.run import jobs

    from benchmarks.run import runner
    original = jobs.load_dataset

    @functools.lru_cache(maxsize=4)
    def load(ref):
        path = _replica_file(work, ref.kind, ref.scale)
        if ref.synthetic and ref.seed == 2025 and path.is_file():
            with open(path, "rb") as f:
                return pickle.load(f)
        return original(ref)
    jobs.load_dataset = runner.load_dataset = load
    try:
        yield
    finally:
        jobs.load_dataset = runner.load_dataset = original


def _child_bench(args_json: str) -> int:
    """One catalogue job (a bench_cost call) on a pickled replica, in its own process."""
    spec = json.loads(args_json)
    from benchmarks.experiments import bench_cost
    with _replicas_from(Path(spec["work"])):
        return bench_cost.main(spec["argv"])


# --------------------------------------------------------------------------- phases

def phase_correctness(device, models, clock, out: Path, smoke: bool) -> list[dict]:
    from benchmarks.experiments.device_compare import compare_devices, compare_knn_graphs
    from benchmarks.experiments.host_sync import audit_model
    from benchmarks.experiments.leakage import check_leak
    from data_prep.synthetic import make_replica
    from benchmarks.run.discovery import registry_entry as get
    data = {k: make_replica(k, scale=0.02, seed=7) for k in ("baby", "tiktok")}
    rows, graph_rows, left = [], [], []
    for model in models:
        for kind in ("baby", "tiktok"):
            for protocol in ("missing", "new_items"):
                if clock.remaining() <= 0:
                    left.append(f"{model}/{kind}/{protocol}")
                    continue
                row = {"model": model, "data": f"{kind} ({len(data[kind].modalities)} mod.)", "protocol": protocol}
                try:
                    c = compare_devices(model, data[kind], protocol, device)
                    leak = check_leak(get(model), data[kind], protocol, device)
                    row.update(loss_rel=c.loss_rel, loss_tol=c.loss_tolerance, grad_rel=c.grad_rel,
                               grad_vs_tol=c.grad_ratio, score_rel=c.score_rel, score_tol=c.score_tolerance,
                               top20_bad_users=c.top20_mismatched_users, tie_swaps=c.top20_tie_swaps,
                               poisoned="ok" if leak["ok"] else f"FAIL ({leak['max_rel']:.3g})",
                               poisoned_bitwise=leak["identical"],
                               verdict="ok" if c.ok and leak["ok"] else "FAIL: " + "; ".join(c.problems))
                except Exception as exc:  # noqa: BLE001 - a failing model is a finding, not the end of the check
                    row.update(verdict=f"ERROR {type(exc).__name__}: {str(exc)[:200]}")
                rows.append(row)
    for kind in ("baby", "tiktok"):
        if clock.remaining() > 0:
            graph_rows += [dict(r, data=kind) for r in compare_knn_graphs(data[kind], device)]
    audits, prof_dir = [], out / "profile"
    prof_dir.mkdir(parents=True, exist_ok=True)
    for model in models:
        if clock.remaining() <= 0:
            break
        try:
            a = audit_model(model, "synthetic:tiktok", device=device)
            audits.append({"model": model, "host reads / training batch": a["train_batch"],
                           "which": ", ".join(f"{k} {v}" for k, v in sorted(a["train_calls"].items())),
                           "host reads / scoring batch": a["score_batch"]})
            (prof_dir / f"{model}.txt").write_text(_profile(model, device))
        except Exception as exc:  # noqa: BLE001
            audits.append({"model": model, "which": f"ERROR {type(exc).__name__}: {str(exc)[:150]}"})
    ok = sum(r.get("verdict") == "ok" for r in rows)
    text = (f"## Correctness on {device}\n\nLoss, per-parameter gradients and every user's top-20 against the CPU "
            f"(same weights, batch and random draws; tolerance 50x the CPU's change under a 1e-7 weight "
            f"perturbation, never below 1e-5 relative), and the poisoned-feature check on {device}. "
            f"{ok} of {len(rows)} cases ok.\n\n{_md(rows)}\n\n"
            f"kNN graphs built on {device} against the CPU's (neighbours differing beyond near-ties, largest "
            f"weight difference):\n\n{_md(graph_rows)}\n\nHost reads per batch (calls that make the host wait "
            f"for the device; torch.unique and boolean selections size their output by values):\n\n{_md(audits)}\n")
    if left:
        text += f"\nNot run within the phase budget: {', '.join(left)}\n"
    (out / "correctness.md").write_text(text)
    (out / "correctness.json").write_text(json.dumps({"cases": rows, "graphs": graph_rows, "host_reads": audits,
                                                      "not_run": left}, indent=1, default=str))
    return rows


def _profile(model: str, device: str) -> str:
    """torch.profiler over three training batches of ``model`` on the reference TikTok data (a small
    replica without it): the top ops by time on the device."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.run.discovery import registry_entry
    from benchmarks.run.config import expand_grid, resolve
    from benchmarks.core.engine import make_adam, seed_everything
    from benchmarks.run.jobs import load_dataset, resolve_dataset
    from benchmarks.core.protocols import get_protocol
    from benchmarks.core.sampling import BPRSampler
    entry = registry_entry(model)
    reference = (REFERENCE / "tiktok").is_dir()
    ref, _ = resolve_dataset("tiktok" if reference else "synthetic:tiktok", REFERENCE, 0.1)
    ds = load_dataset(ref)
    # the reference data (59,541 rows) at the model's batch size; a small replica at 512 rows a batch
    cfg = expand_grid(resolve(entry, "tiktok", {} if reference else {"train_batch_size": 512}, quick=True),
                      entry.cls.list_params)[0]
    proto = get_protocol("missing")
    dev = torch.device(device)
    rng = seed_everything(1)
    task = proto.build_task(ds, cfg, entry.cls, proto.ratios(ds, cfg)[0], dev)
    m = entry.cls(cfg, task).to(dev)
    opt = make_adam(m.optimizer_parameters(), 1e-3, 0.0)
    m.train()
    m.pre_epoch(0)
    batches = list(BPRSampler(task, rng).epoch(int(cfg["train_batch_size"]), device=dev))[:4]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    for k, (u, p, n) in enumerate(batches):
        if k == 1:
            prof = profile(activities=activities)
            prof.__enter__()
        loss = m.calculate_loss(u, p, n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    prof.__exit__(None, None, None)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    return f"{model}: {len(batches) - 1} training batches of {ds.name} on {device}\n\n" + \
        prof.key_averages().table(sort_by=key, row_limit=15)


def phase_throughput(device, clock, out: Path, work: Path, smoke: bool) -> dict:
    from benchmarks.run.runner import RunOptions, execute, gpu_worker_slots, plan
    from benchmarks.run.store import ResultStore
    reference = (REFERENCE / "tiktok").is_dir() and not smoke
    models = list(THROUGHPUT_MODELS[:2] if smoke else THROUGHPUT_MODELS)
    ks = (1, 2) if smoke else (1, 2, 4)
    epochs = 1 if smoke else 20
    result = {"device": device, "models": models, "seeds": [1] if smoke else [1, 2], "epochs": epochs,
              "dataset": "tiktok (reference)" if reference else "synthetic:tiktok", "wall_seconds": {}, "jobs": {}}
    for k in ks:
        if clock.remaining() <= 0:
            break
        folder = work / "throughput" / f"k{k}"
        shutil.rmtree(folder, ignore_errors=True)  # measured afresh: a kept store would skip every job
        opts = RunOptions(protocols=["missing"], datasets=["tiktok" if reference else "synthetic:tiktok"],
                          models=models, seeds=result["seeds"], data_root=str(REFERENCE) if reference else "none",
                          full=reference, scale=None if reference else 0.05, results_dir=str(folder),
                          cache_dir=str(work / "throughput" / "cache"), progress=False,
                          sets={"epochs": epochs, "eval_step": 5 if epochs >= 5 else 1, "stopping_step": 10 ** 6,
                                "grid_limit": 1, "device": device})
        jobs = plan(opts).jobs
        slots = gpu_worker_slots(device, k)
        t0 = time.perf_counter()
        counts = execute(jobs, ResultStore(folder), n_workers=k, progress=False, devices=slots, retry_failed=True)
        result["wall_seconds"][str(k)] = round(time.perf_counter() - t0, 2)
        result["jobs"][str(k)] = counts
    walls = result["wall_seconds"]
    result["speedup"] = {k: round(walls["1"] / w, 3) for k, w in walls.items()} if "1" in walls else {}
    rows = [{"jobs per GPU": k, "jobs": len(models) * len(result["seeds"]), "wall s": w,
             "jobs / min": round(60 * len(models) * len(result["seeds"]) / w, 2),
             "speed-up over K=1": result["speedup"].get(k)} for k, w in walls.items()]
    (out / "throughput.json").write_text(json.dumps(result, indent=1))
    (out / "throughput.md").write_text(
        f"## Jobs per GPU on {device}\n\n{', '.join(models)} x seeds {result['seeds']} on {result['dataset']}, "
        f"{epochs} epochs each, one grid setting; K worker processes per GPU (--jobs-per-gpu K); wall time "
        f"includes starting the workers.\n\n{_md(rows)}\n")
    return result


def phase_speed(device, models, clock, out: Path, work: Path, smoke: bool, official_src) -> None:
    from benchmarks.experiments import bench_cost
    datasets = "tiktok" if smoke else "tiktok,baby"
    argv = ["--device", device, "--datasets", datasets, "--data-root", str(REFERENCE), "--models", ",".join(models),
            "--epochs", "1" if smoke else "3", "--out", str(work / "speed"), "--set", "grid_limit=1",
            "--budget-seconds", f"{max(1.0, clock.remaining() - 30):.0f}", "--retry-failed"]
    if official_src:
        # one official run may not eat the phase (nor the next one's time)
        argv += ["--official-src", str(official_src),
                 "--official-timeout", f"{max(30.0, min(150.0, clock.remaining())):.0f}"]
    bench_cost.main(argv)
    (out / "speed.md").write_text(f"## Ours and the official code on {device}\n\n"
                                  + (work / "speed" / "cost_benchmark.md").read_text())


def phase_catalogue(device, models, clock, out: Path, work: Path, scale: float, procs) -> list[dict]:
    """Each (dataset, model) as a bench_cost job in a child process, killed when time is up."""
    rows = []
    folder = work / "catalogue"
    for kind in CATALOGUE:
        path = _replica_file(work, kind, scale)
        for model in models:
            if clock.remaining() <= 5:
                rows.append({"model": model, "dataset": kind, "status": "not run within the phase budget"})
                continue
            while not path.is_file() and clock.remaining() > 5 and any(p.poll() is None for p in procs):
                time.sleep(1)
            if not path.is_file():
                rows.append({"model": model, "dataset": kind, "status": "replica not ready within the phase budget"})
                continue
            spec = {"work": str(work),
                    "argv": ["--device", device, "--datasets", f"synthetic:{kind}", "--models", model, "--epochs", "1",
                             "--scale", f"{scale:g}", "--out", str(folder), "--set", "grid_limit=1"]}
            try:
                subprocess.run([sys.executable, "-m", "benchmarks.experiments.gpu_check", "--child-bench", json.dumps(spec)],
                               timeout=max(5.0, clock.remaining()), capture_output=True, text=True)
            except subprocess.TimeoutExpired:
                rows.append({"model": model, "dataset": kind,
                             "status": "stopped: its epoch did not end within the phase budget"})
    recs = {}
    store = folder / "results.jsonl"
    for line in (store.read_text().splitlines() if store.is_file() else []):
        r = json.loads(line)
        recs[(r["model"], r["dataset_kind"])] = r
    table = []
    for kind in CATALOGUE:
        for model in models:
            r = recs.get((model, kind))
            if r is None:
                table.append(next((x for x in rows if (x["model"], x["dataset"]) == (model, kind)),
                                  {"model": model, "dataset": kind, "status": "no record"}))
                continue
            gpu = r.get("peak_gpu_memory_mb")
            table.append({"model": model, "dataset": r["dataset"], "status": r["status"],
                          "s/epoch (whole)": r.get("train_seconds_per_epoch"),
                          "eval s (valid / test)": f"{r.get('valid_eval_seconds')} / {r.get('eval_seconds')}"
                          if r["status"] == "ok" else None,
                          "peak GPU GiB": round(gpu / 1024, 2) if gpu is not None else None,
                          "note": " ".join((r.get("error") or "").split())[:160]})
    (out / "catalogue.md").write_text(
        f"## Catalogue scale on {device}\n\nOne whole epoch and one full evaluation (every user, valid and test) "
        f"per model on the full-scale replicas (scale {scale:g}), one process per job; peak = CUDA "
        f"max_memory_allocated.\n\n{_md(table)}\n")
    return table


def phase_estimate(device, out: Path, work: Path) -> None:
    from benchmarks.experiments import grid_estimate
    grid_estimate.main(["--stores", f"{work / 'speed'},{work / 'catalogue'}", "--throughput", str(out / "throughput.json"),
                        "--device-type", torch.device(device).type,
                        "--out", str(out / "grid_estimate.md")])


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny replicas, few models, one epoch (a CPU rehearsal)")
    ap.add_argument("--out", default="results/gpu", help="the tables (small; to be committed)")
    ap.add_argument("--work", default=None, help="stores, caches and replicas (default <out>/work; large)")
    ap.add_argument("--official-src", default=None, help="src folder of a ptkjw1997/DGMRec checkout (speed phase)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--models", default=None, help="comma-separated (default: every model; --smoke: four)")
    ap.add_argument("--budget", type=float, default=None, help="seconds in all (default 520; --smoke 240)")
    ap.add_argument("--child-replica", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-bench", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_replica:
        return _child_replica(args.child_replica)
    if args.child_bench:
        return _child_bench(args.child_bench)
    from benchmarks.run.devices import resolve_device
    from benchmarks.run.discovery import model_names as names
    try:
        device = str(resolve_device(args.device))
    except ValueError as exc:
        raise SystemExit(str(exc))
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"unknown phase(s) {unknown}; known: {', '.join(PHASES)}")
    if args.official_src and not (Path(args.official_src) / "main.py").is_file():
        raise SystemExit(f"{args.official_src}: not the official src folder (no main.py)")
    models = args.models.split(",") if args.models else (
        ["MFBPR", "LightGCN", "SGL", "DGMRec"] if args.smoke else [m for m in names() if not m.startswith("Test")])
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"  # kept for a second call, not committed
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(args.budget or (240.0 if args.smoke else 520.0), PHASES)
    scale = 0.02 if args.smoke else 1.0
    env = environment(device)
    (out / "environment.json").write_text(json.dumps(env, indent=1))
    procs = start_replicas(work, CATALOGUE, scale) if "catalogue" in phases else []
    timings = {}
    try:
        for phase in phases:
            budget = clock.begin(phase)
            print(f"== {phase}: budget {budget:.0f} s", flush=True)
            if phase == "correctness":
                phase_correctness(device, models, clock, out, args.smoke)
            elif phase == "throughput":
                phase_throughput(device, clock, out, work, args.smoke)
            elif phase == "speed":
                phase_speed(device, models, clock, out, work, args.smoke, args.official_src)
            elif phase == "catalogue":
                phase_catalogue(device, models[:2] if args.smoke else models, clock, out, work, scale, procs)
            elif phase == "estimate":
                phase_estimate(device, out, work)
            timings[phase] = round(clock.end(), 1)
            print(f"== {phase}: {timings[phase]} s", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    parts = [f"# GPU check\n\n{json.dumps(env)}\n\nphase seconds: {json.dumps(timings)}; total "
             f"{time.perf_counter() - clock.start:.0f} s{' (smoke run: tiny data, not a measurement)' if args.smoke else ''}\n"]
    for name in ("correctness.md", "throughput.md", "speed.md", "catalogue.md", "grid_estimate.md"):
        if (out / name).is_file():
            parts.append((out / name).read_text())
    (out / "summary.md").write_text("\n\n".join(parts))
    print(f"written to {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
