"""The user-user graph file that MMRec's DRAGON (and DualGNN) read, made by MMRec's own script.

MMRec ships no such file: its ``preprocessing/dualgnn-gen-u-u-matrix.py`` builds it from the
training interactions of a dataset (for each user, the users sharing training items, by how
many, at most 200). That script is run here as it is, on a private copy of the checkout's
``preprocessing`` and ``src/configs`` beside the dataset folder's interaction file, and its
output is kept in the cache under the interaction file's digest: it takes a few minutes on
Baby, and every run of the same data reads the same file.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.experiments.official_checkout import MMREC, Checkout, DataFolder
from benchmarks.experiments.official_settings import ensure_mmrec_dataset_yaml
from data_prep.dataset import sha256_file

USER_GRAPH = "user_graph_dict.npy"
SCRIPT = "dualgnn-gen-u-u-matrix.py"
# official models that load USER_GRAPH from the dataset folder
READS_USER_GRAPH = {(MMREC, "DRAGON"), (MMREC, "DualGNN")}


def needs_user_graph(codebase: str, model: str, folder: DataFolder) -> bool:
    return (codebase, model) in READS_USER_GRAPH and not (folder.path / USER_GRAPH).is_file()


def user_graph_file(checkout: Checkout, folder: DataFolder, cache_dir: str | Path, timeout: float | None = None) -> Path:
    """The user graph of ``folder``'s training interactions: from the cache, else made by
    MMRec's script (an error with the script's output when it fails)."""
    inter = folder.path / f"{folder.name}.inter"
    target = Path(cache_dir) / "official" / f"{folder.name}-{sha256_file(inter)[:16]}" / USER_GRAPH
    if target.is_file():
        return target
    script = checkout.root / "preprocessing" / SCRIPT
    if not script.is_file():
        raise FileNotFoundError(f"{script}: MMRec's user-graph script is not in the checkout")
    tmp = Path(tempfile.mkdtemp(prefix="official-user-graph-"))
    try:
        shutil.copytree(checkout.root / "preprocessing", tmp / "preprocessing")
        shutil.copytree(checkout.src / "configs", tmp / "src" / "configs")
        ensure_mmrec_dataset_yaml(tmp / "src" / "configs", folder.name)
        data = tmp / "data" / folder.name
        data.mkdir(parents=True)
        (data / inter.name).symlink_to(inter.resolve())
        # the script prints a line per user: only its end is kept, for an error message
        proc = subprocess.run([sys.executable, SCRIPT, "-d", folder.name], cwd=tmp / "preprocessing",
                              capture_output=True, text=True, timeout=timeout)
        made = data / USER_GRAPH
        if proc.returncode != 0 or not made.is_file():
            raise RuntimeError(f"{SCRIPT} failed (exit code {proc.returncode}): {proc.stderr.strip()[-1500:]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(made), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
