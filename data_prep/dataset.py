"""In-memory datasets in the official DGMRec / MMRec format, validated on load.

A dataset folder ``<root>/<name>/`` holds

* ``<name>.inter``: tab-separated with a header naming at least ``userID``, ``itemID`` and
  ``x_label`` (0 train, 1 valid, 2 test); other columns (rating, timestamp) are ignored;
* optionally ``<name>_del.inter``: the new-item split (training rows of new items removed);
* optionally ``new_items.npy``: the ids of the new items;
* optionally ``missing_items_<ratio>.npy``: a pickled dict from a missing-modality group
  (``t``, ``v``, ``all``; with audio also ``a``, ``tv``, ``ta``, ``va``) to item ids, read
  without running any code (``data_prep.mask_files``), or ``missing_items_<ratio>.npz``, the
  same groups as plain integer arrays;
* feature files ``image_feat.npy``, ``text_feat.npy`` and optionally ``audio_feat.npy``,
  whose row i is item i. The modalities of a dataset are the feature files present.

Nothing here applies a protocol: masking, imputation and splits for training live in
``benchmarks.core.protocols``. This module only guarantees that what it returns is consistent.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .mask_files import MASK_FILE_RE, read_mask_groups
from .modalities import MASK_KEYS, Modalities

# Modality code -> feature file, in the canonical modality order.
MODALITY_FILES = {"v": "image_feat.npy", "t": "text_feat.npy", "a": "audio_feat.npy"}
REQUIRED_COLUMNS = ("userID", "itemID", "x_label")


@dataclass
class Interactions:
    """Rows of an ``.inter`` file as parallel int arrays."""

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.users)

    def split(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        sel = self.labels == label
        return self.users[sel], self.items[sel]


@dataclass
class Dataset:
    """A validated dataset: interactions, features, masks and their fingerprints."""

    name: str  # what the user asked for, e.g. "tiktok" or "synthetic:tiktok"
    kind: str  # which dataset configuration applies ("tiktok", "baby", or the folder name)
    source: str  # "real", "reference" or "synthetic"
    n_users: int
    n_items: int
    inter: Interactions | None  # the full file; None when only the new-item split exists
    del_inter: Interactions | None = None
    new_items: np.ndarray | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # ratio -> groups
    # input -> sha256: a file's bytes, or for masks (``missing_items_<ratio>``) their content
    # (mask_digest), so that the .npy and the .npz of the same masks are the same data
    fingerprint: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def modalities(self) -> Modalities:
        """The modalities whose feature tables the dataset holds (none for interactions only)."""
        return Modalities(self.features)

    def fingerprint_digest(self) -> str:
        """One sha256 over the fingerprints of every input file."""
        h = hashlib.sha256()
        for key in sorted(self.fingerprint):
            h.update(f"{key}={self.fingerprint[key]};".encode())
        return h.hexdigest()

    def validate(self) -> "Dataset":
        """Check the cross-file invariants; raise DataError naming the offending file."""
        for m, x in self.features.items():
            _check_features(x, self.n_items, MODALITY_FILES[m])
        for ratio, groups in self.masks.items():
            mods = Modalities.resolve(self.features, groups)
            check_mask(groups, self.n_items, mods.count, f"missing_items_{ratio}.npy")
        if self.new_items is not None:
            _check_ids(self.new_items, self.n_items, "new_items.npy", "item")
        for inter in (self.inter, self.del_inter):
            if inter is not None:
                _check_inter_ranges(inter, self.n_users, self.n_items)
        return self


# --------------------------------------------------------------------------- fingerprints

def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_arrays(*arrays: np.ndarray) -> str:
    """Content hash of arrays (dtype, shape and bytes), for in-memory datasets and caches."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def mask_digest(groups: dict) -> str:
    """Content hash of mask groups, whatever file format held them: the non-empty groups by
    name, each as little-endian int64 ids in file order."""
    h = hashlib.sha256()
    for key in sorted(groups):
        ids = np.asarray(groups[key])
        if ids.size:
            h.update(f"{key}:{ids.size};".encode())
            h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- readers

def read_inter(path: str | Path) -> Interactions:
    """Read and validate one ``.inter`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        df = pd.read_csv(path, sep="\t", header=0)
    except pd.errors.EmptyDataError:
        raise DataError(path, "file is empty (expected a header 'userID itemID x_label' and rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(path, f"not a tab-separated file with a header: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; found columns {list(df.columns)} "
                              f"(the header must name {list(REQUIRED_COLUMNS)}, tab-separated)")
    if len(df) == 0:
        raise DataError(path, "has a header but no rows")
    with open(path, "rb") as f:
        f.seek(-1, 2)
        if f.read(1) != b"\n":
            raise DataError(path, "does not end with a newline: the file looks truncated (if it is complete, "
                                  "add a final newline)")
    cols = {}
    for c in REQUIRED_COLUMNS:
        s = df[c]
        if s.isna().any():
            row = int(np.flatnonzero(s.isna().to_numpy())[0]) + 2
            raise DataError(path, f"column {c} has an empty or non-numeric value (line {row})")
        if not pd.api.types.is_integer_dtype(s):
            numeric = pd.to_numeric(s, errors="coerce")
            with np.errstate(invalid="ignore"):
                bad = numeric.isna() | ~np.isfinite(numeric) | (numeric != np.floor(numeric)) | \
                    (numeric.abs() >= 2 ** 53)
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(path, f"column {c} has a non-integer value {s.iloc[row]!r} (line {row + 2})")
            s = numeric
        v = s.to_numpy(dtype=np.int64)
        if (v < 0).any():
            row = int(np.flatnonzero(v < 0)[0])
            raise DataError(path, f"column {c} has a negative value {v[row]} (line {row + 2})")
        cols[c] = v
    labels = cols["x_label"]
    bad = ~np.isin(labels, (0, 1, 2))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(path, f"x_label must be 0 (train), 1 (valid) or 2 (test); found {labels[row]} (line {row + 2})")
    for label, split in ((0, "train"), (1, "valid"), (2, "test")):
        if not (labels == label).any():
            raise DataError(path, f"the {split} split (x_label={label}) is empty")
    inter = Interactions(cols["userID"], cols["itemID"], labels.astype(np.int8), str(path))
    _check_id_scale(inter)
    return inter


def read_features(path: str | Path, n_items: int | None = None) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as exc:  # pickled object arrays, truncated headers, garbage
        raise DataError(path, f"not a numeric .npy array: {exc}") from None
    except (OSError, EOFError) as exc:
        raise DataError(path, f"cannot be read as a .npy file: {exc}") from None
    if not isinstance(x, np.ndarray):
        raise DataError(path, "not a single .npy array")
    _check_features(x, n_items, path)
    return np.ascontiguousarray(x, dtype=np.float32)


def read_mask(path: str | Path, n_items: int, n_modalities: int) -> dict[str, np.ndarray]:
    """A mask file (official pickled ``.npy`` or plain ``.npz``), checked against the dataset."""
    return check_mask(read_mask_groups(path, n_items), n_items, n_modalities, path)


def read_item_ids(path: str | Path, n_items: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        ids = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(path, f"not a numeric .npy array of item ids: {exc}") from None
    return _check_ids(ids, n_items, path, "item")


# --------------------------------------------------------------------------- checks

def _check_features(x: np.ndarray, n_items: int | None, path) -> None:
    if x.ndim != 2:
        raise DataError(path, f"features must be a 2-D array (items x dims), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(path, f"features must be numeric, got dtype {x.dtype}")
    if n_items is not None and x.shape[0] != n_items:
        raise DataError(path, f"has {x.shape[0]} rows but the dataset has {n_items} items (row i must be item i)")
    if x.shape[1] == 0:
        raise DataError(path, "features have zero columns")
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            rows = np.flatnonzero(~finite)
            raise DataError(path, f"{len(rows)} row(s) contain NaN or infinite values, first at item {rows[0]}")


def _check_ids(ids, n_items: int, path, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise DataError(path, f"{what} ids must be a 1-D array, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        if np.issubdtype(ids.dtype, np.floating) and np.all(np.isfinite(ids)) and np.all(ids == np.floor(ids)):
            ids = ids.astype(np.int64)
        else:
            raise DataError(path, f"{what} ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    bad = (ids < 0) | (ids >= n_items)
    if bad.any():
        raise DataError(path, f"{what} id {ids[bad][0]} out of range [0, {n_items})")
    if len(np.unique(ids)) != len(ids):
        raise DataError(path, f"duplicate {what} ids")
    return ids


def check_mask(groups: dict, n_items: int, n_modalities: int, path) -> dict[str, np.ndarray]:
    allowed = MASK_KEYS.get(n_modalities)
    if allowed is None:
        raise DataError(path, f"masks need 2 or 3 modalities, the dataset has {n_modalities}")
    unknown = [k for k in groups if k not in allowed]
    if unknown:
        raise DataError(path, f"unknown mask key(s) {unknown}; a {n_modalities}-modality mask has keys {list(allowed)}")
    out, seen = {}, np.zeros(n_items, dtype=bool)
    for key in allowed:
        ids = _check_ids(groups.get(key, np.zeros(0, np.int64)), n_items, path, f"mask group {key!r} item")
        if seen[ids].any():
            raise DataError(path, f"mask groups overlap: item {ids[seen[ids]][0]} is in group {key!r} and an earlier one")
        seen[ids] = True
        out[key] = ids
    return out


def _check_inter_ranges(inter: Interactions, n_users: int, n_items: int) -> None:
    if inter.users.max() >= n_users:
        raise DataError(inter.source, f"user id {inter.users.max()} out of range [0, {n_users})")
    if inter.items.max() >= n_items:
        raise DataError(inter.source, f"item id {inter.items.max()} out of range [0, {n_items}) "
                                      f"(the feature files have {n_items} rows)")


def _check_contiguous(ids: np.ndarray, path, what: str) -> int:
    uniq = np.unique(ids)
    if uniq[-1] != len(uniq) - 1:
        gap = int(np.flatnonzero(uniq != np.arange(len(uniq)))[0])
        raise DataError(path, f"{what} ids are not contiguous: id {gap} never occurs but the largest id is {uniq[-1]} "
                              f"(ids must be 0..n-1, as after MMRec re-indexing)")
    return len(uniq)


def _check_id_scale(inter: Interactions) -> None:
    """Ids far beyond the number of rows cannot come from a re-indexed file (and would make
    every per-item array absurdly large)."""
    for ids, what in ((inter.users, "user"), (inter.items, "item")):
        if ids.max() >= len(inter) + 1:
            raise DataError(inter.source, f"{what} id {ids.max()} exceeds the number of rows ({len(inter)}): "
                                          f"ids must be re-indexed to 0..n-1")


# --------------------------------------------------------------------------- folder loader

def _mask_file_keys(path: Path, n_items: int) -> tuple[str, ...]:
    """The group names of a mask file; none when it cannot be read (``read_mask`` then says why)."""
    try:
        return tuple(read_mask_groups(path, n_items))
    except DataError:
        return ()


def dataset_files(folder: Path, name: str) -> dict[str, Path]:
    """The dataset files present in a folder (by role)."""
    files = {}
    for role, fname in (("inter", f"{name}.inter"), ("del_inter", f"{name}_del.inter"), ("new_items", "new_items.npy")):
        if (folder / fname).is_file():
            files[role] = folder / fname
    for m, fname in MODALITY_FILES.items():
        if (folder / fname).is_file():
            files[f"feat_{m}"] = folder / fname
    for p in sorted(folder.glob("missing_items_*.np[yz]")):
        role = f"mask_{MASK_FILE_RE.match(p.name).group(1)}"
        if role in files:
            raise DataError(p, f"two mask files for one ratio ({files[role].name} and {p.name}, the pickled and the "
                               f"plain format): keep one")
        files[role] = p
    return files


def load_folder(root: str | Path, name: str, source: str = "real", kind: str | None = None) -> Dataset:
    """Load ``<root>/<name>/`` in the official format and validate everything."""
    folder = Path(root) / name
    if not folder.is_dir():
        raise DataError(folder, "dataset folder not found (expected <data-root>/<name>/ with <name>.inter and feature files)")
    files = dataset_files(folder, name)
    if "inter" not in files and "del_inter" not in files:
        raise DataError(folder / f"{name}.inter", "file not found (nor a new-item split "
                                                  f"{name}_del.inter); a dataset needs its interaction file")
    inter = read_inter(files["inter"]) if "inter" in files else None
    del_inter = read_inter(files["del_inter"]) if "del_inter" in files else None
    primary = inter if inter is not None else del_inter
    # Counting follows the official loader: max id + 1 over all rows of the full file.
    # Only the full file must use every user id; a new-item split legitimately loses some.
    n_users = _check_contiguous(primary.users, primary.source, "user") if inter is not None \
        else int(primary.users.max()) + 1
    n_items = int(primary.items.max()) + 1
    if del_inter is not None:
        n_users = max(n_users, int(del_inter.users.max()) + 1)
        n_items = max(n_items, int(del_inter.items.max()) + 1)
    features = {m: read_features(files[f"feat_{m}"], n_items) for m in MODALITY_FILES if f"feat_{m}" in files}
    if "feat_a" in files and not ("feat_v" in files and "feat_t" in files):
        raise DataError(files["feat_a"], "an audio feature file needs image_feat.npy and text_feat.npy beside it")
    if len(features) == 1:
        m = next(iter(features))
        raise DataError(files[f"feat_{m}"], "a multi-modal dataset needs at least image_feat.npy and text_feat.npy")
    masks = {}
    for role, path in files.items():
        if role.startswith("mask_"):
            # A folder without feature files has the modalities its masks speak of.
            mods = Modalities.resolve(features, () if features else _mask_file_keys(path, n_items))
            masks[role[5:]] = read_mask(path, n_items, mods.count)
    new_items = read_item_ids(files["new_items"], n_items) if "new_items" in files else None
    fingerprint = {p.name: sha256_file(p) for role, p in files.items() if not role.startswith("mask_")}
    fingerprint.update({f"missing_items_{ratio}": mask_digest(groups) for ratio, groups in masks.items()})
    ds = Dataset(
        name=name, kind=kind or name, source=source, n_users=n_users, n_items=n_items,
        inter=inter, del_inter=del_inter, new_items=new_items, features=features, masks=masks,
        fingerprint=fingerprint,
        description=f"{source} data from {folder}",
    )
    return ds.validate()
