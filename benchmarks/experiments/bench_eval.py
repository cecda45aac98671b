"""Benchmark: LightGCN training seconds per epoch and full-ranking evaluation seconds.

    python -m benchmarks.experiments.bench_eval [--data-root ../shared/data/reference] [--dataset tiktok] [--repeats 5]

Prints, for the test split of the missing protocol, the evaluator's seconds per full
pass and the seconds of a bare ``users @ items.T`` plus ``topk`` of the same shapes (the
floor any full-ranking evaluator pays), and their ratio: what masking, hit lookup and
metric computation add on top of scoring. Falls back to the synthetic TikTok replica
when the reference data is not there.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.run.discovery import registry_entry
from benchmarks.run.config import resolve
from benchmarks.core.engine import Trainer, seed_everything
from benchmarks.core.evaluation import Evaluator
from benchmarks.run.jobs import DatasetRef, load_dataset, resolve_dataset
from benchmarks.core.protocols import get_protocol

DEFAULT_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "reference"


def bare_scoring_seconds(user_emb: torch.Tensor, item_emb: torch.Tensor, batch: int, k: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for lo in range(0, len(user_emb), batch):
            torch.topk(user_emb[lo:lo + batch] @ item_emb.T, k, dim=1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(DEFAULT_ROOT))
    ap.add_argument("--dataset", default="tiktok")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    ref, _ = resolve_dataset(args.dataset, args.data_root, 1.0)
    ds = load_dataset(DatasetRef(ref.name, ref.kind, ref.source, ref.root, 1.0))
    entry = registry_entry("LightGCN")
    cfg = resolve(entry, ds.kind, {"epochs": args.epochs, "eval_step": args.epochs + 1})
    protocol = get_protocol("missing")
    task = protocol.build_task(ds, cfg, entry.cls, protocol.ratios(ds, cfg)[0])
    rng = seed_everything(999)
    model = entry.cls(cfg, task)
    result = Trainer(model, task, cfg, rng).run()
    train_s = statistics.median(result.train_seconds)
    ev = Evaluator(task, topk=cfg["topk"], metrics=cfg["metrics"], batch_size=int(cfg["eval_batch_size"]))
    eval_times = [ev.evaluate(model, task.test)[2] for _ in range(args.repeats)]
    eval_s = statistics.median(eval_times)
    model.eval()
    with torch.no_grad():
        users, items = model.propagate()
    test_users = users[torch.from_numpy(task.test.users)]
    bare = bare_scoring_seconds(test_users, items, int(cfg["eval_batch_size"]), max(cfg["topk"]), args.repeats)
    print(f"dataset {ds.name} ({ds.source}): {task.n_users} users, {task.n_items} items, "
          f"{len(task.train_users)} training rows, {len(task.test)} test users; torch threads {torch.get_num_threads()}")
    print(f"LightGCN train seconds/epoch (median of {args.epochs}): {train_s:.3f}")
    print(f"full-ranking evaluation seconds (test, median of {args.repeats}): {eval_s:.3f}")
    print(f"bare matmul + top-{max(cfg['topk'])} of the same shapes: {bare:.3f}")
    print(f"ratio evaluation / bare: {eval_s / bare:.2f}")


if __name__ == "__main__":
    main()
