"""More seeds of the official implementation on the reference TikTok data.

    python -m benchmarks.official_runs --official-src /path/to/DGMRec/src \\
        --models BM3,SimGCL --seeds 42,2023 --out benchmarks/reference/tiktok-official-extra-seeds.json

The official results file (``tiktok-official-results.json``) holds one seed for most models, and a
single run on TikTok moves by 5-30% with the seed, so a mean over our seeds cannot be held against
it with any power. This script runs the official code itself (a checkout of ptkjw1997/DGMRec,
its ``src`` folder) on the same data, with the same per-model settings (each model's
``config_override`` in the official file, 15 epochs), for further seeds, and writes records in the
official file's schema; ``benchmarks.fidelity`` pools them with the official file's own runs.

Each (model, seed) is one process on a private copy of ``src`` (the official code writes logs
into its working folder and reads data from ``../data/<dataset>``), with the reference files
linked in and, as for the official results file, the code's hard-coded ``.cuda()`` calls sent
to the available device (nothing else is changed). The official code imports ``torchvision``
and ``lmdb`` for raw-image pipelines and ``sklearn`` for a KMeans it never calls; when they are
not installed, empty stand-ins are put on its path. The records are parsed from the official
log: per-epoch loss, training seconds, validation and test metrics, and the test metrics at the
best validation epoch (the official trainer's strict improvement rule). Reruns replace the
record of the same model and seed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_common import EXTRA_SEEDS, OFFICIAL_RESULTS, REFERENCE, official_records, parse_seeds
from benchmarks.fidelity import official_setting
from data_prep.errors import DataError

_EPOCH = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s, train loss: ([-\d.eE+na]+)\]")
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
    curve, current = [], None
    best_epoch = None
    final_valid = final_test = None
    for i, line in enumerate(lines):
        m = _EPOCH.search(line)
        if m:
            current = {"epoch": int(m.group(1)), "train_loss": float(m.group(3)), "seconds": float(m.group(2))}
            curve.append(current)
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
    return {
        "best_epoch": best_epoch,
        "valid": final_valid,
        "test": final_test,
        "train_seconds_per_epoch": round(sum(c["seconds"] for c in curve) / len(curve), 2),
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


def run_one(official_src: Path, data_dir: Path, model: str, seed: int, override: dict,
            timeout: float | None = None) -> dict:
    """Run the official code for one model and seed; the parsed record (``status`` ok or failed)."""
    root = workspace(official_src, data_dir, "tiktok")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "stubs"), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "main.py", "-m", model, "-d", "tiktok", "--seed", f"[{seed}]",
           "--config_override", json.dumps(override)]
    started = time.time()
    record = {"model": model, "dataset": "tiktok", "protocol": "missing", "seed": seed,
              "epochs": override.get("epochs"), "config_override": override,
              "source": "official code run by benchmarks.official_runs", "status": "failed"}
    try:
        proc = subprocess.run(cmd, cwd=root / "src", env=env, capture_output=True, text=True, timeout=timeout)
        logs = sorted((root / "src" / "log").rglob("*.log"))
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
