"""A checkout of an official code base and the private copies it runs in.

Two code bases are run here: the DGMRec release (``ptkjw1997/DGMRec``, which the paper's
baselines follow; it ships per-dataset best settings in ``src/configs/best/``) and MMRec
(``enoche/MMRec``, where the newer multi-modal models live; it has no best files and keeps a
``preprocessing/`` folder). A checkout is given as a work tree or as a git directory (its
``HEAD`` is exported into a temporary tree). Each official run gets a private copy of ``src``
with the dataset folder's files linked in, so that nothing the official code writes (logs,
cached graphs) touches the checkout or the shared data.
"""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data_prep.dataset import MODALITY_FILES
from data_prep.modalities import Modalities

DGMREC = "dgmrec-release"
MMREC = "mmrec"
CODEBASES = (DGMREC, MMREC)

_DEVICE = 'torch.device("cuda" if torch.cuda.is_available() else "cpu")'
# Text the official code runs differently on the CPU than on CUDA, and the text that runs on both as
# on CUDA. MMRec's DRAGON and DualGNN build result_embed as nn.Parameter(...).to(device): on CUDA
# that is a copy, a plain tensor their forward later replaces; on the CPU it is the parameter
# itself, which refuses a plain tensor. A clone is the plain tensor on both (same values, same draws).
_AS_ON_CUDA = (("np.random.randn(num_user + num_item, dim_x)))).to(self.device)\n",
                "np.random.randn(num_user + num_item, dim_x)))).to(self.device).clone()\n"),)
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
    # MMRec's sparse kNN graphs (MGCN, SMORE) take their row sums with torch_scatter's scatter_add
    # on 1-d edge weights: the same sum by torch itself
    "torch_scatter.py": "import torch\n\n\ndef scatter_add(src, index, dim=-1, out=None, dim_size=None):\n"
                        "    if src.dim() != 1 or out is not None:\n"
                        "        raise NotImplementedError('stand-in: 1-d sums into a new tensor only')\n"
                        "    n = int(index.max()) + 1 if dim_size is None else dim_size\n"
                        "    return torch.zeros(n, dtype=src.dtype, device=src.device).scatter_add_(0, index, src)\n",
    # PGL imports it for its global mode only (the SVD of the user-item graph); the local mode never calls it
    "sparsesvd.py": "def sparsesvd(*a, **k):\n    raise NotImplementedError('stand-in: sparsesvd is not installed')\n",
}

# Written into every private copy and imported before the official code runs: library calls the
# official code makes that current versions removed, restored with their old meaning.
COMPAT_MODULE = "official_compat"
_COMPAT = """import numpy as np
import scipy.sparse as sp

# scipy 1.12 removed dok_matrix._update, an unchecked dict update that MMRec's graph builders call
if not hasattr(sp.dok_matrix, "_update"):
    sp.dok_matrix._update = lambda self, data: self._dict.update(data)
# numpy 1.24 removed np.float, an alias of the builtin float, which MMRec's metrics use
if not hasattr(np, "float"):
    np.float = float
"""


@dataclass(frozen=True)
class Checkout:
    root: Path            # a work tree: ``src/`` (and for MMRec ``preprocessing/``) below it
    codebase: str         # DGMREC or MMREC
    commit: str | None

    @property
    def src(self) -> Path:
        return self.root / "src"


class CheckoutError(ValueError):
    pass


def codebase_of(root: Path) -> str:
    """Which code base a work tree is, by its files."""
    root = Path(root)
    if not (root / "src" / "main.py").is_file():
        raise CheckoutError(f"{root}: not a checkout of ptkjw1997/DGMRec or enoche/MMRec (no src/main.py)")
    return DGMREC if (root / "src" / "configs" / "best").is_dir() else MMREC


def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


@contextlib.contextmanager
def open_checkout(source: str | Path):
    """The checkout at ``source``: a work tree (its root, or its ``src`` folder) used as it is, or
    a git directory whose ``HEAD`` is exported to a temporary tree for the duration."""
    source = Path(source)
    if _is_git_dir(source):
        tmp = Path(tempfile.mkdtemp(prefix="official-checkout-"))
        try:
            git = ["git", "--git-dir", str(source)]
            top = subprocess.run(git + ["ls-tree", "--name-only", "HEAD"], capture_output=True, text=True, check=True)
            wanted = [p for p in ("src", "preprocessing") if p in top.stdout.split()]
            archive = subprocess.run(git + ["archive", "HEAD", *wanted], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
            commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True)
            yield Checkout(tmp, codebase_of(tmp), commit.stdout.strip())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    root = source.parent if source.name == "src" and (source / "main.py").is_file() else source
    codebase = codebase_of(root)
    git = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    yield Checkout(root, codebase, git.stdout.strip() if git.returncode == 0 else None)


@dataclass(frozen=True)
class DataFolder:
    """A dataset folder: its name is the dataset's (``<name>.inter`` inside), its modalities the
    feature files present."""
    path: Path
    name: str
    modalities: Modalities


def data_folder(path: str | Path) -> DataFolder:
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such dataset folder")
    name = path.resolve().name
    if not (path / f"{name}.inter").is_file():
        raise ValueError(f"{path}: no {name}.inter (a dataset folder is named after its interaction file)")
    return DataFolder(path, name, Modalities(m for m, f in MODALITY_FILES.items() if (path / f).is_file()))


def official_yaml(path: Path) -> dict:
    """An official YAML file (its loader reads ``1e-04`` as a number; PyYAML's safe loader does not)."""
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


def workspace(official_src: Path, data_dir: Path, dataset: str, extra_data: dict[str, Path] | None = None) -> Path:
    """A private copy of ``official_src`` beside ``data/<dataset>``, which links the folder's
    files (and ``extra_data``: name -> file, e.g. a generated user graph); stand-ins for unused
    imports that are not installed, and ``COMPAT_MODULE``, go to ``stubs/``."""
    root = Path(tempfile.mkdtemp(prefix="official-run-"))
    shutil.copytree(official_src, root / "src", ignore=shutil.ignore_patterns("__pycache__", "log", "saved"))
    # Hard-coded .cuda() calls go to the available device, so that the code runs on a CPU too.
    for path in (root / "src").rglob("*.py"):
        text = path.read_text()
        new = text.replace(".cuda()", f".to({_DEVICE})")
        for old, as_on_cuda in _AS_ON_CUDA:
            new = new.replace(old, as_on_cuda)
        if new != text:
            path.write_text(new)
    target = root / "data" / dataset
    target.mkdir(parents=True)
    for f in Path(data_dir).iterdir():
        (target / f.name).symlink_to(f.resolve())
    for name, f in (extra_data or {}).items():
        (target / name).symlink_to(Path(f).resolve())
    stubs = root / "stubs"
    stubs.mkdir()
    (stubs / f"{COMPAT_MODULE}.py").write_text(_COMPAT)
    for rel, body in _STUBS.items():
        top = rel.split("/")[0].removesuffix(".py")
        if importlib.util.find_spec(top) is None:
            (stubs / rel).parent.mkdir(parents=True, exist_ok=True)
            (stubs / rel).write_text(body)
    return root
