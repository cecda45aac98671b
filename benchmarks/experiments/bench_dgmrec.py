"""Benchmark: DGMRec cost on reference TikTok (vs the official figures) and peak memory at full scale.

    python -m benchmarks.experiments.bench_dgmrec [--parts tiktok,clothing,elec] [--epochs 3] [--threads N]
                                      [--max-batches N] [--cache-dir DIR]

Parts (each runs in its own subprocess, so every peak-memory figure is that part's alone):

* ``tiktok``: reference TikTok, missing protocol, the official best configuration (seed 999):
  training seconds per epoch and validation / test evaluation seconds, printed next to the
  official DGMRec figures stored in ``tiktok-official-results.json`` (43.79 s/epoch,
  2.1 / 1.37 s evaluation).
* ``clothing`` / ``elec``: full-scale synthetic replicas (``make_replica(kind, 1.0)``: 23,033
  items with 4096-d image features; 63,001 items, 192,403 users), missing protocol at 2/3,
  that dataset's best configuration: one training epoch and one evaluation (validation and
  test). Reports the peak resident memory of the process, dataset generation included.

Timings depend on the machine's load: each part also prints the fp32 matmul throughput
measured just before it, and the TikTok part the process CPU seconds per epoch (what the work
costs, whatever share of the cores the process got).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.experiments.bench_common import OFFICIAL_RESULTS, REFERENCE, official_records

PROJECT = Path(__file__).resolve().parents[2]
TARGETS_GIB = {"clothing": 8.0, "elec": 20.0}


def start_memory_guard(min_free_gib: float) -> None:
    """Exit (status 3) if the machine's MemAvailable drops below ``min_free_gib``: a benchmark must
    not push other processes on a shared machine into the OOM killer."""
    import os
    import threading

    def available_gib() -> float:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2 ** 20
        return float("inf")

    def watch():
        while True:
            if available_gib() < min_free_gib:
                print(f"aborted: machine memory available below {min_free_gib} GiB", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.2)

    if min_free_gib > 0 and Path("/proc/meminfo").is_file():
        threading.Thread(target=watch, daemon=True).start()


def matmul_gflops(n: int = 1024, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def run_part(part: str, args) -> dict:
    from benchmarks.run.discovery import registry_entry
    from models.cache import ArtifactCache
    from benchmarks.run.config import resolve
    from benchmarks.core.engine import Trainer, seed_everything
    from benchmarks.core.evaluation import Evaluator
    from benchmarks.run.jobs import PeakMemory
    from benchmarks.core.protocols import get_protocol

    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"part": part, "threads": torch.get_num_threads(), "gflops": round(matmul_gflops(), 1)}
    entry = registry_entry("DGMRec")
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        if part == "tiktok":
            from data_prep.dataset import load_folder
            ds = load_folder(args.data_root, "tiktok", source="reference", kind="tiktok")
            epochs = args.epochs
        else:
            from data_prep.synthetic import make_replica
            ds = make_replica(part, 1.0)
            epochs = 1
        out["data_seconds"] = round(time.perf_counter() - t0, 1)
        # TikTok: the evaluation runs once after the last epoch, so the process CPU time of the
        # run splits into training and evaluation; the Amazon replicas: one epoch, one evaluation.
        cfg = resolve(entry, ds.kind, {"epochs": epochs, "eval_step": epochs + 1 if part == "tiktok" else 1,
                                       "stopping_step": 100})
        protocol = get_protocol("missing")
        t0 = time.perf_counter()
        cache = ArtifactCache(args.cache_dir) if args.cache_dir else None
        task = protocol.build_task(ds, cfg, entry.cls, protocol.ratios(ds, cfg)[0], cache=cache)
        rng = seed_everything(999)
        model = entry.cls(cfg, task)
        out["setup_seconds"] = round(time.perf_counter() - t0, 1)
        cpu0 = time.process_time()
        if args.max_batches and part != "tiktok":
            result = truncated_epoch(model, task, cfg, rng, args.max_batches)
            out["max_batches"] = args.max_batches
        else:
            result = Trainer(model, task, cfg, rng).run()
        cpu_run = time.process_time() - cpu0
        if part == "tiktok":
            ev = Evaluator(task, topk=cfg["topk"], metrics=cfg["metrics"], batch_size=int(cfg["eval_batch_size"]))
            cpu_eval = {}
            for name, split in (("valid", task.valid), ("test", task.test)):
                c0 = time.process_time()
                ev.evaluate(model, split)
                cpu_eval[name] = time.process_time() - c0
            out["cpu_seconds_per_epoch"] = round((cpu_run - sum(cpu_eval.values())) / result.epochs_run, 2)
            out["cpu_eval_seconds"] = {k: round(v, 2) for k, v in cpu_eval.items()}
    out.update({
        "n_users": task.n_users, "n_items": task.n_items, "train_rows": int(len(task.train_users)),
        "epochs": result.epochs_run,
        "train_seconds": [round(s, 2) for s in result.train_seconds],
        "valid_eval_seconds": [round(s, 2) for s in result.valid_eval_seconds],
        "test_eval_seconds": [round(s, 2) for s in result.test_eval_seconds],
        "peak_rss_gib": round(mem.peak / 2 ** 30, 2),
        "batches_per_epoch": getattr(result, "n_batches", None),
        "mean_batch_seconds": round(sum(result.batch_seconds) / len(result.batch_seconds), 2)
        if getattr(result, "batch_seconds", None) else None,
        "test_recall@20": round(result.test.get("recall@20", float("nan")), 4),
    })
    return out


def truncated_epoch(model, task, cfg, rng, max_batches: int):
    """The engine's epoch cut after ``max_batches`` batches, then one validation and one test
    evaluation: same tensors, optimiser and hooks, so the same peak memory as a full epoch
    (every batch has the same shapes), in a fraction of the time on a loaded machine."""
    from benchmarks.core.engine import TrainResult
    from benchmarks.core.evaluation import Evaluator
    from benchmarks.core.sampling import BPRSampler

    optimizer = torch.optim.Adam(model.optimizer_parameters(), lr=float(cfg["learning_rate"]))
    sampler = BPRSampler(task, rng)
    result = TrainResult()
    t0 = time.perf_counter()
    model.train()
    model.pre_epoch(0)
    batch_seconds = []
    for i, (users, pos, neg) in enumerate(sampler.epoch(int(cfg["train_batch_size"]))):
        if i == max_batches:
            break
        tb = time.perf_counter()
        loss = model.calculate_loss(users, pos, neg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        batch_seconds.append(time.perf_counter() - tb)
    result.train_seconds.append(time.perf_counter() - t0)
    result.batch_seconds = batch_seconds
    result.n_batches = sampler.n_batches(int(cfg["train_batch_size"]))
    result.epochs_run = 1
    model.pre_evaluation()
    ev = Evaluator(task, topk=cfg["topk"], metrics=cfg["metrics"], batch_size=int(cfg["eval_batch_size"]))
    _, _, v = ev.evaluate(model, task.valid)
    result.test, _, t = ev.evaluate(model, task.test)
    result.valid_eval_seconds.append(v)
    result.test_eval_seconds.append(t)
    return result


def official_figures(data_root: str) -> dict | None:
    for rec in official_records(Path(data_root) / OFFICIAL_RESULTS.name):
        if rec.get("model") == "DGMRec" and rec.get("seed") == 999 and rec.get("train_seconds_per_epoch"):
            return rec
    return None


def report(res: dict, args) -> None:
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    print(f"\n== {res['part']}: {res['n_users']} users, {res['n_items']} items, {res['train_rows']} training rows; "
          f"torch threads {res['threads']}; matmul {res['gflops']} GFLOP/s at start")
    print(f"   data {res['data_seconds']} s, setup (task + model + graphs) {res['setup_seconds']} s")
    print(f"   train s/epoch (wall): {res['train_seconds']} (mean {mean(res['train_seconds']):.2f})")
    if "cpu_seconds_per_epoch" in res:
        print(f"   process CPU s/epoch: {res['cpu_seconds_per_epoch']}; CPU s of one evaluation: {res['cpu_eval_seconds']}")
    if res.get("max_batches"):
        print(f"   epoch cut after {res['max_batches']} of {res['batches_per_epoch']} batches "
              f"({res['mean_batch_seconds']} s per batch; a full epoch ≈ "
              f"{res['mean_batch_seconds'] * res['batches_per_epoch']:.0f} s)")
    print(f"   eval s: valid {res['valid_eval_seconds']}, test {res['test_eval_seconds']}")
    print(f"   peak RSS {res['peak_rss_gib']} GiB" +
          (f" (target < {TARGETS_GIB[res['part']]} GiB)" if res["part"] in TARGETS_GIB else ""))
    if res["part"] == "tiktok":
        off = official_figures(args.data_root)
        if off:
            ours = mean(res["train_seconds"])
            print(f"   official (seed 999): {off['train_seconds_per_epoch']} s/epoch "
                  f"(median {off.get('train_seconds_per_epoch_median')}), eval valid {off['valid_eval_seconds']} s / "
                  f"test {off['test_eval_seconds']} s, peak RSS {off.get('peak_rss_mb')} MB")
            print(f"   ratio ours/official s/epoch: {ours / off['train_seconds_per_epoch']:.2f} (target <= 0.5); "
                  f"eval valid {mean(res['valid_eval_seconds']) / off['valid_eval_seconds']:.2f}, "
                  f"test {mean(res['test_eval_seconds']) / off['test_eval_seconds']:.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="tiktok,clothing,elec")
    ap.add_argument("--data-root", default=str(REFERENCE))
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the TikTok part")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--max-batches", type=int, default=0,
                    help="Amazon parts: cut the epoch after this many batches (0: the whole epoch)")
    ap.add_argument("--min-free-gib", type=float, default=1.0,
                    help="abort a part when the machine's available memory falls below this (shared machines)")
    ap.add_argument("--cache-dir", default=None, help="artifact cache for the kNN graphs (reruns skip the build)")
    ap.add_argument("--single", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.single:
        start_memory_guard(args.min_free_gib)
        print("RESULT " + json.dumps(run_part(args.single, args)), flush=True)
        return
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        cmd = [sys.executable, "-m", "benchmarks.experiments.bench_dgmrec", "--single", part, "--data-root", args.data_root,
               "--min-free-gib", str(args.min_free_gib),
               "--epochs", str(args.epochs), "--threads", str(args.threads), "--max-batches", str(args.max_batches)]
        if args.cache_dir:
            cmd += ["--cache-dir", args.cache_dir]
        proc = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"\n== {part}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        report(json.loads(line[len("RESULT "):]), args)


if __name__ == "__main__":
    main()
