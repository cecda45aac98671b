"""Runs of an official implementation on a reference dataset folder, one process per (model, seed).

    python -m benchmarks.experiments.official_runs --source CHECKOUT --data-dir ../shared/data/reference/baby \\
        --models FREEDOM --seeds 999,42,2023 --epochs 15 [--set key=value] [--device cpu] [--out FILE]

``CHECKOUT`` is a work tree or a git directory of ``ptkjw1997/DGMRec`` (the release the paper's
baselines follow) or of ``enoche/MMRec``; which one is told by its files. The dataset is the
folder's name, its modalities the feature files in it. Each run is the official ``main.py`` in a
private copy of ``src`` with the folder's files linked in, with the settings of
``official_settings`` (DGMRec release: its best file, missing ratio 0.666 or 0.6 on TikTok, mean
imputation; MMRec: every feature present, each grid key of its model YAML pinned to ours or to
``--set``, MMRec's own schedule); MMRec's DRAGON also gets the user graph its preprocessing
script makes (``user_graph``). The official log is parsed (per-epoch loss and seconds,
validation and test metrics, the test metrics at the best validation epoch), with the process's
peak memory, into records written to ``--out`` (default: ``reference/<code base>-<dataset>.json``
beside this module; DGMRec release runs on TikTok go to ``tiktok-official-extra-seeds.json``,
which ``fidelity`` pools with the official results file). A rerun replaces the record of the
same code base, dataset, model and seed. ``benchmarks.experiments.fidelity --records FILE``
compares ours with them; docs/fidelity.md says how.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.experiments.bench_common import EXTRA_SEEDS, OFFICIAL_RESULTS, REFERENCE, official_records, parse_seeds
from benchmarks.experiments.official_checkout import (DGMREC, MMREC, CheckoutError, data_folder, official_yaml,
                                                      open_checkout, workspace)
from benchmarks.experiments.official_settings import (MEAN_IMPUTATION, SettingError, best_override, effective,
                                                      ensure_mmrec_dataset_yaml, mmrec_model_yaml, our_settings,
                                                      release_override, release_ratio)
from benchmarks.experiments.user_graph import USER_GRAPH, needs_user_graph, user_graph_file
from data_prep.errors import DataError
from data_prep.modalities import Modalities

_EPOCH = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s, train loss: ([-\d.eE+na]+)\]")
_EVAL = re.compile(r"epoch (\d+) evaluating \[time: ([\d.]+)s")
_METRIC = re.compile(r"([a-z]+@\d+): ([-\d.]+)")
REFERENCE_RECORDS = Path(__file__).resolve().parent / "reference"


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
import official_compat  # noqa: E402,F401
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



def figure_setting(model: str, dataset: str, official_file: Path = OFFICIAL_RESULTS) -> dict:
    """The grid setting of the DGMRec release's published TikTok figure of ``model`` (its
    seed-999 record in the official results file); empty elsewhere."""
    from benchmarks.experiments.fidelity import official_setting
    if dataset != "tiktok":
        return {}
    for rec in official_records(official_file):
        if rec["model"] == model and rec.get("seed") == 999 and rec.get("protocol") == "missing":
            return official_setting(rec)
    return {}


def run_one(official_src: Path, data_dir: Path, model: str, seed: int, override: dict,
            timeout: float | None = None, dataset: str = "tiktok", device: str | None = None,
            codebase: str = DGMREC, ratio: float | None = None, extra_data: dict | None = None) -> dict:
    """Run the official code (``official_src``: the ``src`` folder of a checkout of ``codebase``)
    for one model and seed on ``dataset`` (the folder ``data_dir``) on ``device`` (auto: the
    first GPU when one is visible); the parsed record (``status`` ok or failed), with the
    process's peak memory. DGMRec release: ``override`` is its ``--config_override`` and
    ``ratio`` its ``--missing_ratio`` (None: the dataset YAML's); MMRec: ``override`` is the
    model YAML written into the copy (MMRec's main takes no settings), ``extra_data`` files
    linked into the dataset folder."""
    root = workspace(official_src, data_dir, dataset, extra_data)
    src = root / "src"
    (src / "_peak_launcher.py").write_text(_LAUNCHER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "stubs"), env.get("PYTHONPATH", "")) if p)
    env["OFFICIAL_PEAK_FILE"] = str(root / "peak.json")
    gpu = gpu_arg(device)
    if codebase == MMREC:
        import yaml
        # MMRec's configurator shows it GPU 0 whenever use_gpu is on
        (src / "configs" / "model" / f"{model}.yaml").write_text(
            yaml.safe_dump(dict(override, seed=[seed], use_gpu=gpu != ""), sort_keys=False))
        ensure_mmrec_dataset_yaml(src / "configs", dataset)
        cmd = [sys.executable, "_peak_launcher.py", "-m", model, "-d", dataset]
    else:
        cmd = [sys.executable, "_peak_launcher.py", "-m", model, "-d", dataset, "-g", gpu,
               "--seed", f"[{seed}]", "--config_override", json.dumps(override)]
        if ratio is not None:
            cmd += ["--missing_modal", "1", "--missing_ratio", str(ratio), "--missing_imputation", f"[{MEAN_IMPUTATION}]"]
    started = time.time()
    record = {"model": model, "dataset": dataset, "codebase": codebase, "protocol": "missing", "seed": seed,
              "epochs": override.get("epochs"), "config_override": override,
              "source": "official code run by benchmarks.experiments.official_runs", "status": "failed"}
    try:
        proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=timeout)
        logs = sorted((src / "log").rglob("*.log"))
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


def official_override(official_src: Path, model: str, dataset: str, ours: dict, epochs: int) -> dict:
    """The official settings for a timing run of ``model`` on ``dataset`` with the setting ours
    trains: the official best file (``configs/best/<model>_<dataset>.json``) with every
    hyper-parameter (a grid in the official code) pinned to our value where we have the key,
    else to its first official value, so one official run trains exactly one setting; ``epochs``
    epochs, validation every epoch and no early stop, as the cost benchmark runs ours."""
    src = Path(official_src)
    override = best_override(src, model, dataset)
    spec = official_yaml(src / "configs" / "model" / f"{model}.yaml")
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


def record_key(rec: dict) -> tuple:
    """What a rerun replaces: the same code base, dataset, model and seed (records written
    before MMRec was run here are the DGMRec release's)."""
    return rec.get("codebase", DGMREC), rec.get("dataset"), rec["model"], rec.get("seed")


def merge(path: Path, new: list[dict]) -> list[dict]:
    """The records of ``path`` with ``new`` replacing those of the same key (``record_key``)."""
    keys = {record_key(r) for r in new}
    merged = [r for r in official_records(path) if record_key(r) not in keys] + new
    merged.sort(key=lambda r: (r.get("dataset") or "", r["model"], r.get("seed", 0)))
    return merged


def write_records(out: Path, new: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    # one record per line: small diffs when seeds are added
    tmp.write_text("[\n" + ",\n".join(json.dumps(r) for r in merge(out, new)) + "\n]\n")
    tmp.replace(out)  # each finished run is kept, whatever happens to the next


def default_out(codebase: str, dataset: str) -> Path:
    if codebase == DGMREC and dataset == "tiktok":
        return EXTRA_SEEDS
    return REFERENCE_RECORDS / f"{codebase}-{dataset}.json"


def main(argv=None) -> int:
    from benchmarks.run.config import ConfigError, parse_sets
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="a work tree or git directory of ptkjw1997/DGMRec or enoche/MMRec")
    ap.add_argument("--models", required=True, help="comma-separated official model names")
    ap.add_argument("--seeds", default="999,42,2023")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--data-dir", default=str(REFERENCE / "tiktok"))
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="key=value: pin an official setting (a grid key, or any key of the official model), "
                         "for every model of --models")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--out", default=None, help="records file (default: see above)")
    ap.add_argument("--cache-dir", default="cache", help="where MMRec's generated user graph is kept")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    args = ap.parse_args(argv)
    try:
        folder = data_folder(args.data_dir)
        sets = parse_sets(args.sets)
    except (ValueError, ConfigError) as exc:
        raise SystemExit(str(exc)) from None
    seeds = parse_seeds(args.seeds)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        return _run(args, folder, sets, seeds, models)
    except CheckoutError as exc:
        raise SystemExit(str(exc)) from None


def _run(args, folder, sets: dict, seeds: list[int], models: list[str]) -> int:
    with open_checkout(args.source) as checkout:
        out = Path(args.out) if args.out else default_out(checkout.codebase, folder.name)
        plans = []
        for model in models:
            try:
                plans.append((model, *settings_for(checkout, folder, model, sets, args.epochs)))
            except SettingError as exc:
                raise SystemExit(str(exc)) from None
        # the modalities the official models read: MMRec's have no audio input
        mods = folder.modalities if checkout.codebase == DGMREC else Modalities(m for m in folder.modalities if m != "a")
        if checkout.codebase == MMREC and folder.modalities.has_audio:
            print("note: MMRec has no audio input; audio_feat.npy is not used", flush=True)
        for model, override, pinned, ratio in plans:
            extra = {}
            if needs_user_graph(checkout.codebase, model, folder):
                print(f"{model}: {USER_GRAPH} made by MMRec's preprocessing script (kept in {args.cache_dir})", flush=True)
                extra[USER_GRAPH] = user_graph_file(checkout, folder, args.cache_dir, args.timeout)
            schedule, settings = effective(checkout.src, model, folder.name, checkout.codebase, override)
            print(f"{model} ({checkout.codebase}, {folder.name}): pinned "
                  + (", ".join(f"{k}={override[k]} ({w})" for k, w in pinned.items()) or "nothing")
                  + f"; schedule {schedule}", flush=True)
            for seed in seeds:
                rec = run_one(checkout.src, folder.path, model, seed, override, args.timeout, dataset=folder.name,
                              device=args.device, codebase=checkout.codebase, ratio=ratio, extra_data=extra)
                rec.update(official_commit=checkout.commit, missing_ratio=ratio or 0.0, modalities=list(mods),
                           schedule=schedule, settings=settings, pinned=pinned, sets=sets, device=args.device)
                rec = {k: v for k, v in rec.items() if v is not None}
                write_records(out, [rec])
                test = rec.get("test") or {}
                print(f"{model} seed {seed}: {rec['status']} R@20 {test.get('recall@20')} N@20 {test.get('ndcg@20')} "
                      f"({rec['wall_seconds']} s){'  ' + rec['error'][:300] if rec.get('error') else ''}", flush=True)
    print(f"records in {out}")
    return 0


def settings_for(checkout, folder, model: str, sets: dict, epochs: int) -> tuple[dict, dict, float | None]:
    """(the run's override, the pinned keys with where each came from, the DGMRec release's
    missing ratio or None for MMRec) of ``model`` on ``folder``."""
    ours = our_settings(checkout.codebase, model, folder.name)
    if checkout.codebase == MMREC:
        return (*mmrec_model_yaml(checkout.src, model, folder.name, ours, sets, epochs), None)
    figure = figure_setting(model, folder.name)
    override, pinned = release_override(checkout.src, model, folder.name, ours, sets, epochs, figure)
    return override, pinned, release_ratio(folder.name)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DataError as exc:
        raise SystemExit(str(exc))
