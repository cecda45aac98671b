"""More seeds of the official implementation on the reference TikTok data.

    python -m benchmarks.experiments.official_runs --official-src /path/to/DGMRec/src \\
        --models BM3,SimGCL --seeds 42,2023 --out benchmarks/experiments/reference/tiktok-official-extra-seeds.json

Runs the official code itself (the ``src`` folder of a ``ptkjw1997/DGMRec`` checkout) for each
(model, seed) with the settings of that model's record in the official results file
(``config_override``, 15 epochs), one process per run in a private copy of ``src`` with the
reference files linked in, parses the official log (per-epoch loss and seconds, validation and
test metrics, the test metrics at the best validation epoch) and writes the records, in the
official file's schema, into ``--out`` (a rerun replaces the record of the same model and seed).
``benchmarks.experiments.fidelity`` pools them with the official file's own runs. What is
changed in the copy (device calls, stand-ins for unused imports) and why more seeds are
needed: docs/fidelity.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.experiments.bench_common import EXTRA_SEEDS, OFFICIAL_RESULTS, REFERENCE, official_records, parse_seeds
from benchmarks.experiments.fidelity import official_setting
from data_prep.errors import DataError

_EPOCH = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s, train loss: ([-\d.eE+na]+)\]")
_EVAL = re.compile(r"epoch (\d+) evaluating \[time: ([\d.]+)s")
_METRIC = re.compile(r"([a-z]+@\d+): ([-\d.]+)")
_DEVICE = 'torch.device("cuda" if torch.cuda.is_available() else "cpu")'
# Only the names the official code imports at module level: the raw-image paths that use them
# are never taken with pre-extracted features.
_STUBS = {
    "torchvision/__init__.py": "",
    "torchvision/transforms/__init__.py": "from . import functional\n",
    "torchvision/transforms/functional.py":
        "def pad(*a, **k):\n    raise NotImplementedError('stand-in: raw images are not used')\n"
        "def resize(*a, **k):\n    raise NotImplementedError('stand-in: raw images are not used')\n",
    "lmdb.py": "def open(*a, **k):\n    raise NotImplementedError('stand-in: raw images are not used')\n",
    # SLMRec imports KMeans and never calls it
    "sklearn/__init__.py": "",
    "sklearn/cluster.py": "class KMeans:\n    def __init__(self, *a, **k):\n"
                          "        raise NotImplementedError('stand-in: not used by the official models')\n",
}


def _metrics(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in _METRIC.findall(line)}


def parse_log(text: str) -> dict:
    """Curve, best epoch and best valid/test metrics of one single-setting official run log."""
    lines = text.splitlines()
    curve, current, evals = [], None, []
    best_epoch = None
    final_valid = final_test = None
    for i, line in enumerate(lines):
        m = _EPOCH.search(line)
        if m:
            current = {"epoch": int(m.group(1)), "train_loss": float(m.group(3)), "seconds": float(m.group(2))}
            curve.append(current)
            continue
        m = _EVAL.search(line)
        if m:
            evals.append(float(m.group(2)))
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.rstrip().endswith("INFO valid result:") and current is not None:
            current["valid"] = _metrics(nxt)
        elif line.rstrip().endswith("INFO test result:") and current is not None:
            current["test"] = _metrics(nxt)
        elif "Best validation results updated" in line and current is not None:
            best_epoch = current["epoch"]
        elif "INFO best valid result:" in line:
            final_valid = _metrics(line)
        elif "INFO test result: " in line and _METRIC.search(line):
            final_test = _metrics(line)
    if not curve or final_test is None:
        raise ValueError("the log holds no finished run (no epoch lines or no final test result)")
    seconds = [c["seconds"] for c in curve]
    return {
        "best_epoch": best_epoch,
        "valid": final_valid,
        "test": final_test,
        "train_seconds_per_epoch": round(sum(seconds) / len(seconds), 2),
        # as ours (engine.TrainResult): the median over the epochs, which leaves out a slow first epoch
        "train_seconds_per_epoch_median": round(float(statistics.median(seconds)), 3),
        "valid_eval_seconds": round(sum(evals) / len(evals), 3) if evals else None,
        "curve": [{"epoch": c["epoch"], "train_loss": c["train_loss"],
                   "valid_recall@20": c.get("valid", {}).get("recall@20"),
                   "test_recall@20": c.get("test", {}).get("recall@20"),
                   "test_ndcg@20": c.get("test", {}).get("ndcg@20")} for c in curve],
    }


def official_settings(official_file: Path) -> dict[str, dict]:
    """Each model's official seed-999 run record (its ``config_override`` and grid setting)."""
    out = {}
    for rec in official_records(official_file):
        if rec.get("seed") == 999 and rec.get("config_override") is not None:
            out[rec["model"]] = rec
    return out


def pinned_override(rec: dict) -> dict:
    """An official run's ``config_override`` with each grid key pinned to the setting its
    figure comes from, so that one run covers exactly that setting."""
    return dict(rec["config_override"], **{k: [v] for k, v in official_setting(rec).items()})


def workspace(official_src: Path, data_dir: Path, dataset: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="official-run-"))
    shutil.copytree(official_src, root / "src", ignore=shutil.ignore_patterns("__pycache__", "log", "saved"))
    # As for the official results file: hard-coded .cuda() calls go to the available device.
    for path in (root / "src").rglob("*.py"):
        text = path.read_text()
        if ".cuda()" in text:
            path.write_text(text.replace(".cuda()", f".to({_DEVICE})"))
    target = root / "data" / dataset
    target.mkdir(parents=True)
    for f in data_dir.iterdir():
        (target / f.name).symlink_to(f.resolve())
    stubs = root / "stubs"
    for rel, body in _STUBS.items():
        top = rel.split("/")[0].removesuffix(".py")
        if importlib.util.find_spec(top) is None:
            (stubs / rel).parent.mkdir(parents=True, exist_ok=True)
            (stubs / rel).write_text(body)
    return root


# Runs the official main.py in its own process and, when the process ends, writes its peak
# memory (resident, and CUDA's max_memory_allocated when CUDA was used) to $OFFICIAL_PEAK_FILE.
_LAUNCHER = """import atexit, json, os, resource, runpy, sys


def _peak():
    rec = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        rec["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        rec["gpu"] = torch.cuda.get_device_name()
    with open(os.environ["OFFICIAL_PEAK_FILE"], "w") as f:
        json.dump(rec, f)


atexit.register(_peak)
sys.argv = ["main.py"] + sys.argv[1:]
runpy.run_path("main.py", run_name="__main__")
"""


def gpu_arg(device: str | None) -> str:
    """The official ``--gpu_id``: its configurator sets CUDA_VISIBLE_DEVICES to it (the default
    '1' hides the only GPU of a one-GPU machine, so the run silently goes to the CPU); '' hides
    every GPU (a CPU run)."""
    dev = str(device or "auto")
    if dev == "cpu":
        return ""
    if dev.startswith("cuda:"):
        return dev.split(":", 1)[1]
    import torch
    return "0" if torch.cuda.is_available() else ""


def run_one(official_src: Path, data_dir: Path, model: str, seed: int, override: dict,
            timeout: float | None = None, dataset: str = "tiktok", device: str | None = None) -> dict:
    """Run the official code for one model and seed on ``dataset`` (the folder ``data_dir``) on
    ``device`` (auto: the first GPU when one is visible); the parsed record (``status`` ok or
    failed), with the process's peak memory."""
    root = workspace(official_src, data_dir, dataset)
    (root / "src" / "_peak_launcher.py").write_text(_LAUNCHER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "stubs"), env.get("PYTHONPATH", "")) if p)
    env["OFFICIAL_PEAK_FILE"] = str(root / "peak.json")
    cmd = [sys.executable, "_peak_launcher.py", "-m", model, "-d", dataset, "-g", gpu_arg(device),
           "--seed", f"[{seed}]", "--config_override", json.dumps(override)]
    started = time.time()
    record = {"model": model, "dataset": dataset, "protocol": "missing", "seed": seed,
              "epochs": override.get("epochs"), "config_override": override,
              "source": "official code run by benchmarks.experiments.official_runs", "status": "failed"}
    try:
        proc = subprocess.run(cmd, cwd=root / "src", env=env, capture_output=True, text=True, timeout=timeout)
        logs = sorted((root / "src" / "log").rglob("*.log"))
        if (root / "peak.json").is_file():
            record.update(json.loads((root / "peak.json").read_text()))
        if proc.returncode != 0 or not logs:
            record["error"] = f"exit code {proc.returncode}: {proc.stderr.strip()[-1500:]}"
        else:
            record.update(parse_log(logs[-1].read_text()))
            record["status"] = "ok"
    except subprocess.TimeoutExpired:
        record["error"] = f"timed out after {timeout} s"
    except ValueError as exc:
        record["error"] = str(exc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    record["wall_seconds"] = round(time.time() - started, 1)
    return record


def _official_yaml(path: Path) -> dict:
    """An official model YAML (its loader reads ``1e-04`` as a number; PyYAML's safe loader does not)."""
    import yaml

    def number(v):
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return v
        return [number(x) for x in v] if isinstance(v, list) else v
    doc = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return {k: number(v) for k, v in (doc or {}).items()}


def official_override(official_src: Path, model: str, dataset: str, ours: dict, epochs: int) -> dict:
    """The official settings for a timing run of ``model`` on ``dataset`` with the setting ours
    trains: the official best file (``configs/best/<model>_<dataset>.json``) with every
    hyper-parameter (a grid in the official code) pinned to our value where we have the key,
    else to its first official value, so one official run trains exactly one setting; ``epochs``
    epochs, validation every epoch and no early stop, as the cost benchmark runs ours."""
    src = Path(official_src)
    best_file = src / "configs" / "best" / f"{model}_{dataset}.json"
    override = json.loads(best_file.read_text()) if best_file.is_file() else {}
    spec = _official_yaml(src / "configs" / "model" / f"{model}.yaml")
    keys = [k for k in spec.get("hyper_parameters", []) if k not in ("seed", "missing_imputation")]
    for k in keys:  # grid keys: the official code iterates over a list of values
        if k in ours:
            override[k] = [ours[k]]
        else:
            v = override.get(k, spec.get(k))
            override[k] = v[:1] if isinstance(v, list) else [v]
    for k in override:  # plain settings keep their form (DGMRec's n_mm_layers is one number)
        if k not in keys and k in ours:
            override[k] = ours[k]
    override.update(epochs=int(epochs), eval_step=1, stopping_step=10 ** 6)
    return override


def merge(path: Path, new: list[dict]) -> list[dict]:
    """The records of ``path`` with ``new`` replacing those of the same model and seed."""
    old = official_records(path)
    keys = {(r["model"], r["seed"]) for r in new}
    merged = [r for r in old if (r["model"], r.get("seed")) not in keys] + new
    merged.sort(key=lambda r: (r["model"], r.get("seed", 0)))
    return merged


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-src", required=True, help="the src folder of a ptkjw1997/DGMRec checkout")
    ap.add_argument("--models", required=True, help="comma-separated official model names")
    ap.add_argument("--seeds", default="42,2023")
    ap.add_argument("--data-dir", default=str(REFERENCE / "tiktok"))
    ap.add_argument("--official", default=str(OFFICIAL_RESULTS), help="where each model's settings come from")
    ap.add_argument("--out", default=str(EXTRA_SEEDS))
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    args = ap.parse_args(argv)
    src, data_dir = Path(args.official_src), Path(args.data_dir)
    if not (src / "main.py").is_file():
        raise SystemExit(f"{src}: not the official src folder (no main.py)")
    if not data_dir.is_dir():
        raise SystemExit(f"{data_dir}: reference TikTok folder not found")
    if not Path(args.official).is_file():
        raise SystemExit(f"{args.official}: official results not found (they give each model's settings)")
    seeds = parse_seeds(args.seeds)
    settings = official_settings(Path(args.official))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in settings]
    if unknown:
        raise SystemExit(f"no seed-999 settings in {args.official} for: {', '.join(unknown)}")
    out = Path(args.out)
    git = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = git.stdout.strip() if git.returncode == 0 else None
    for model in models:
        base = settings[model]
        override = pinned_override(base)
        for seed in seeds:
            rec = run_one(src, data_dir, model, seed, override, args.timeout)
            rec["official_commit"] = commit
            rec = {k: v for k, v in rec.items() if v is not None}
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            # one record per line: small diffs when seeds are added
            tmp.write_text("[\n" + ",\n".join(json.dumps(r) for r in merge(out, [rec])) + "\n]\n")
            tmp.replace(out)  # each finished run is kept, whatever happens to the next
            test = rec.get("test") or {}
            print(f"{model} seed {seed}: {rec['status']} R@20 {test.get('recall@20')} N@20 {test.get('ndcg@20')} "
                  f"({rec['wall_seconds']} s){'  ' + rec['error'][:300] if rec.get('error') else ''}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DataError as exc:
        raise SystemExit(str(exc))
