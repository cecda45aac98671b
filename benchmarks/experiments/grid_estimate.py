"""Wall time of the paper's whole grid on one GPU, from measured seconds per epoch.

    python -m benchmarks.experiments.grid_estimate --stores results/gpu/speed,results/gpu/catalogue \\
        --throughput results/gpu/throughput.json --out results/gpu/grid_estimate.md

The grid is every registered model x baby, sports, clothing, tiktok x 5 seeds x the ``missing``
and ``new_items`` protocols, every setting of each model's grid. A job trains
``E = min(epochs, B + (stopping_step + 1) x eval_step)`` epochs, B its best validation epoch
(the median ``best_epoch`` of the runs in ``--from-store``, else ``--best-epoch``), and costs
``E x (s/epoch) + (E / eval_step) x (validation + test seconds) + setup``, with the seconds from
the GPU records in ``--stores`` (a dataset without a record scaled from the nearest measured one
by interactions). The sum is divided by the measured speed-up of K jobs per GPU
(``--throughput``) and printed beside the no-early-stop bound. docs/cost.md says where each
number comes from.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tabulate import tabulate

GRID_DATASETS = ("baby", "sports", "clothing", "tiktok")
GRID_PROTOCOLS = ("missing", "new_items")
GRID_SEEDS = 5
DEFAULT_BEST_EPOCH = 100


def epochs_run(epochs: int, eval_step: int, stopping_step: int, best_epoch: float) -> float:
    """Epochs an early-stopped run trains when its best validation epoch is ``best_epoch``."""
    return float(min(epochs, best_epoch + (stopping_step + 1) * eval_step))


def measured_costs(stores: list[str | Path], device_type: str = "cuda") -> dict:
    """(model, dataset kind) -> seconds per epoch, per evaluation (valid + test) and of setup, from
    the ``ok`` records of result stores made on ``device_type`` (whole epochs only; the latest
    record wins)."""
    out = {}
    for folder in stores:
        path = Path(folder) / "results.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            device = str(r.get("environment", {}).get("device", ""))
            if r.get("status") != "ok" or "epoch_capped" in r or not device.startswith(device_type):
                continue
            s = r.get("train_seconds_per_epoch_median") or r.get("train_seconds_per_epoch")
            if s is None:
                continue
            out[(r["model"], r["dataset_kind"])] = {
                "s_epoch": float(s), "eval_s": float(r.get("valid_eval_seconds") or 0) + float(r.get("eval_seconds") or 0),
                "setup_s": float(r.get("setup_seconds") or 0), "source": f"measured ({r['dataset']})",
                "gpu": r.get("environment", {}).get("gpu")}
    return out


def recorded_best_epochs(stores: list[str | Path]) -> dict:
    """(model, dataset kind) -> median best epoch of finished, early-stopped full-schedule runs."""
    found: dict = {}
    for folder in stores:
        path = Path(folder) / "results.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            r = json.loads(line) if line.strip() else {}
            if r.get("status") == "ok" and r.get("stopped_early") and r.get("best_epoch") is not None:
                found.setdefault((r["model"], r["dataset_kind"]), []).append(r["best_epoch"])
    return {k: float(statistics.median(v)) for k, v in found.items()}


def _cost_for(model: str, kind: str, costs: dict):
    from data_prep.synthetic import REAL_SHAPES
    if (model, kind) in costs:
        return costs[(model, kind)]
    n_mod = len(REAL_SHAPES[kind]["dims"])
    have = [k for (m, k) in costs if m == model and k in REAL_SHAPES and len(REAL_SHAPES[k]["dims"]) == n_mod]
    if not have:
        return None
    base = min(have, key=lambda k: abs(REAL_SHAPES[k]["inters"] - REAL_SHAPES[kind]["inters"]))
    f = REAL_SHAPES[kind]["inters"] / REAL_SHAPES[base]["inters"]
    c = costs[(model, base)]
    return {"s_epoch": c["s_epoch"] * f, "eval_s": c["eval_s"] * f, "setup_s": c["setup_s"],
            "source": f"scaled from {base} x{f:.2f} (interactions)"}


def estimate(costs: dict, best_epochs: dict | None = None, best_epoch: float = DEFAULT_BEST_EPOCH,
             models: list[str] | None = None, datasets=GRID_DATASETS, protocols=GRID_PROTOCOLS,
             seeds: int = GRID_SEEDS) -> tuple[list[dict], dict]:
    """Per (model, dataset) rows of the grid and the totals (seconds, early-stopped and upper bound)."""
    from benchmarks.run.discovery import registry_entry
    from benchmarks.run.config import expand_grid, resolve
    from benchmarks.core.protocols import get_protocol
    from benchmarks.run.discovery import model_names as names
    best_epochs = best_epochs or {}
    rows, total, upper, missing = [], 0.0, 0.0, []
    for model in models or [m for m in names() if not m.startswith("Test")]:
        entry = registry_entry(model)
        n_protocols = sum(get_protocol(p).accepts(entry.cls) for p in protocols)
        for kind in datasets:
            cfg = resolve(entry, kind, {}, quick=False)
            settings = expand_grid(cfg, entry.cls.list_params)
            c = _cost_for(model, kind, costs)
            jobs = len(settings) * seeds * n_protocols
            if c is None:
                missing.append(f"{model}/{kind}")
                rows.append({"model": model, "dataset": kind, "jobs": jobs, "source": "not measured"})
                continue
            b = best_epochs.get((model, kind), best_epoch)
            job_s = job_upper = 0.0
            for s in settings:
                epochs, step, stop = int(s["epochs"]), int(s["eval_step"]), int(s["stopping_step"])
                e = epochs_run(epochs, step, stop, b)
                job_s += e * c["s_epoch"] + (e / step) * c["eval_s"] + c["setup_s"]
                job_upper += epochs * c["s_epoch"] + (epochs / step) * c["eval_s"] + c["setup_s"]
            seconds, bound = job_s * seeds * n_protocols, job_upper * seeds * n_protocols
            total += seconds
            upper += bound
            rows.append({"model": model, "dataset": kind, "settings": len(settings), "jobs": jobs,
                         "s/epoch": round(c["s_epoch"], 4), "eval s": round(c["eval_s"], 3),
                         "best epoch": ("recorded " if (model, kind) in best_epochs else "assumed ") + f"{b:g}",
                         "hours": round(seconds / 3600, 3), "hours, no early stop": round(bound / 3600, 3),
                         "source": c["source"]})
    return rows, {"seconds": total, "upper_seconds": upper, "not_measured": missing}


def report(rows, totals, speedups: dict, best_epoch: float) -> str:
    table = tabulate(rows, headers="keys", tablefmt="github", floatfmt=".4g", missingval="–")
    lines = [f"**Wall time of the paper's grid on one GPU**: {len(GRID_DATASETS)} datasets x {GRID_SEEDS} seeds x "
             f"{' + '.join(GRID_PROTOCOLS)}, every grid setting. Epochs per run: min(epochs, B + (stopping_step + 1)"
             f" x eval_step), B the recorded median best epoch or the assumption B = {best_epoch:g}.", "", table, ""]
    for k in sorted(speedups, key=int):
        s = speedups[k]
        lines.append(f"* {k} job(s) per GPU (measured speed-up x{s:.2f}): {totals['seconds'] / s / 3600:.1f} h "
                     f"({totals['seconds'] / s / 86400:.2f} days); no early stop {totals['upper_seconds'] / s / 3600:.1f} h")
    if not speedups:
        lines.append(f"* one job at a time: {totals['seconds'] / 3600:.1f} h; no early stop "
                     f"{totals['upper_seconds'] / 3600:.1f} h")
    if totals["not_measured"]:
        lines.append(f"* not in the sum (no GPU record to scale from): {', '.join(totals['not_measured'])}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from benchmarks.experiments.bench_common import publish
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", required=True, help="comma-separated result folders with GPU records")
    ap.add_argument("--throughput", default=None, help="JSON {K: speed-up} from gpu_check's throughput phase")
    ap.add_argument("--from-store", default=None, help="comma-separated stores of full-schedule runs (best epochs)")
    ap.add_argument("--best-epoch", type=float, default=DEFAULT_BEST_EPOCH)
    ap.add_argument("--device-type", default="cuda", help="use records made on this kind of device")
    ap.add_argument("--out", default="results/gpu/grid_estimate.md")
    args = ap.parse_args(argv)
    costs = measured_costs(args.stores.split(","), args.device_type)
    best = recorded_best_epochs(args.from_store.split(",")) if args.from_store else {}
    speedups = {}
    if args.throughput and Path(args.throughput).is_file():
        speedups = {str(k): float(v) for k, v in json.loads(Path(args.throughput).read_text())["speedup"].items()}
    rows, totals = estimate(costs, best, args.best_epoch)
    publish(report(rows, totals, speedups, args.best_epoch), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
