"""What a dataset folder holds and where it came from: hashes, ``CHECKSUMS.sha256`` and ``SOURCE``.

Each dataset folder gets a ``CHECKSUMS.sha256`` (``sha256sum -c`` format) and a ``SOURCE``
file (a YAML mapping; read it with :func:`read_source`) whose ``kind`` is ``real`` or
``reference`` (surrogate features), so results can be labelled by their data.
:func:`check_file` compares one file with its manifest entry and local record;
:func:`verify` does it for a whole folder (``python -m data_prep verify``).

A pickled mask ``missing_items_<ratio>.npy`` that was imported is held as plain arrays,
``missing_items_<ratio>.npz``; it is checked by content against the ``.npy``'s manifest entry.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from .dataset import dataset_files, mask_digest
from .errors import DataError
from .manifest import DatasetEntry, FileEntry, load_manifest
from .mask_files import MASK_FILE_RE, read_mask_groups

CHECKSUMS_NAME = "CHECKSUMS.sha256"
SOURCE_NAME = "SOURCE"
KINDS = ("real", "reference")


# --------------------------------------------------------------------------- hashes and records

def file_hashes(path: str | Path, git_blob: bool = False, chunk: int = 1 << 22) -> tuple[str, str | None]:
    """sha256 of a file and, if asked, its git blob id (both in one pass)."""
    path = Path(path)
    h = hashlib.sha256()
    g = None
    if git_blob:
        g = hashlib.sha1()
        g.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            if g is not None:
                g.update(block)
    return h.hexdigest(), (g.hexdigest() if g is not None else None)


def read_checksums(folder: str | Path) -> dict[str, str]:
    """The ``CHECKSUMS.sha256`` records of a folder (file name -> sha256); {} if none."""
    path = Path(folder) / CHECKSUMS_NAME
    if not path.is_file():
        return {}
    records = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line.strip())
        if m:
            records[m.group(2)] = m.group(1).lower()
    return records


def write_checksums(folder: str | Path, records: dict[str, str]) -> Path:
    text = "".join(f"{sha}  {name}\n" for name, sha in sorted(records.items()))
    return _write_text_atomic(Path(folder) / CHECKSUMS_NAME, text)


def read_source(folder: str | Path) -> dict:
    """The ``SOURCE`` record of a dataset folder ({} if absent): ``kind`` is real/reference."""
    path = Path(folder) / SOURCE_NAME
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def write_source(folder: Path, record: dict) -> Path:
    text = "# Provenance of this dataset folder, written by python -m data_prep.\n"
    text += yaml.safe_dump(record, sort_keys=False, default_flow_style=None, width=10_000)
    return _write_text_atomic(folder / SOURCE_NAME, text)


def _write_text_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- checking one file

@dataclass
class FileCheck:
    name: str
    status: str  # "ok", "ok-local", "unknown", "mismatch" or "missing"
    detail: str
    sha256: str | None = None
    expected: str | None = None
    release: bool | None = None  # True: is the manifest's file; False: known not to be it


def check_file(path: str | Path, entry: FileEntry | None, recorded: str | None = None) -> FileCheck:
    """Compare a file with the manifest entry (if any) and a local CHECKSUMS record (if any).

    ``ok``: matches the manifest's sha256 or the release's git blob; ``ok-local``: no
    published hash, but matches the local record; ``unknown``: nothing to compare with;
    ``mismatch``: differs from the manifest's sha256 or from the local record.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        return FileCheck(name, "missing", "not present" + (f"; from {entry.describe()}" if entry else ""))
    if entry is not None and name != entry.name:
        return _check_plain_mask(path, entry, recorded)
    want_blob = bool(entry is not None and not entry.sha256 and entry.git_blob_sha1)
    sha, blob = file_hashes(path, git_blob=want_blob)
    if entry is not None and entry.sha256:
        if sha == entry.sha256:
            return FileCheck(name, "ok", f"sha256 {sha[:16]}... matches the manifest", sha, entry.sha256, True)
        return FileCheck(name, "mismatch", f"sha256 {sha} does not match the manifest's {entry.sha256} "
                                           f"({entry.source.title})", sha, entry.sha256, False)
    release = None
    prefix = ""
    if want_blob:
        if blob == entry.git_blob_sha1:
            return FileCheck(name, "ok", f"git blob {blob[:12]} matches the DGMRec release (sha256 {sha[:16]}...)",
                             sha, None, True)
        release = False
        prefix = f"not the release file (git blob {blob[:12]}, release {entry.git_blob_sha1[:12]}); "
    if recorded:
        if recorded == sha:
            return FileCheck(name, "ok-local", prefix + f"matches {CHECKSUMS_NAME} (no published hash)", sha, recorded, release)
        return FileCheck(name, "mismatch", prefix + f"changed since recorded in {CHECKSUMS_NAME}: expected sha256 "
                                                    f"{recorded}, got {sha}", sha, recorded, release)
    what = "not in the manifest" if entry is None else "no published hash"
    return FileCheck(name, "unknown", prefix + f"{what}, not recorded; sha256 {sha}", sha, None, release)


def _check_plain_mask(path: Path, entry: FileEntry, recorded: str | None) -> FileCheck:
    """A ``missing_items_<ratio>.npz`` against the manifest entry of the pickled ``.npy``: by content."""
    sha = file_hashes(path)[0]
    if not entry.mask_sha256:  # nothing published about the content: only the local record can tell
        return check_file(path, None, recorded)
    try:
        digest = mask_digest(read_mask_groups(path))
    except DataError as exc:
        return FileCheck(path.name, "mismatch", f"unreadable: {exc.problem}", sha, entry.mask_sha256, False)
    if digest == entry.mask_sha256:
        return FileCheck(path.name, "ok", f"masks match the manifest's {entry.name} (content sha256 {digest[:16]}...)",
                         sha, entry.mask_sha256, True)
    return FileCheck(path.name, "mismatch", f"masks differ from the manifest's {entry.name}: content sha256 {digest} "
                                            f"is not {entry.mask_sha256}", sha, entry.mask_sha256, False)


def plain_mask_name(name: str) -> str:
    """The name a pickled mask file gets in the plain format (other names are unchanged)."""
    m = MASK_FILE_RE.match(name)
    return f"missing_items_{m.group(1)}.npz" if m and m.group(2) == "npy" else name


def manifest_entry(ds: DatasetEntry | None, name: str) -> FileEntry | None:
    """The manifest entry of a file, a plain .npz mask sharing its pickled .npy's entry."""
    if ds is None:
        return None
    m = MASK_FILE_RE.match(name)
    if m and m.group(2) == "npz":
        return ds.files.get(f"missing_items_{m.group(1)}.npy")
    return ds.files.get(name)


def present_path(folder: Path, name: str) -> Path:
    """Where a manifest file is in a folder: itself, or a pickled mask's plain .npz import."""
    path, plain = folder / name, folder / plain_mask_name(name)
    return plain if plain != path and not path.exists() and plain.is_file() else path


# --------------------------------------------------------------------------- a whole folder

def verify(name: str, data_root: str | Path = "data") -> list[FileCheck]:
    """Recompute the hashes of ``<data_root>/<name>/`` against the manifest and CHECKSUMS.sha256.

    One FileCheck per file: the manifest's files (``missing`` when absent; a pickled mask that
    was imported as its plain ``.npz`` is checked as that file), then the other dataset files
    present and any recorded in CHECKSUMS.sha256.
    """
    folder = Path(data_root) / name
    if not folder.is_dir():
        raise DataError(folder, f"dataset folder not found; get it with `python -m data_prep download {name}` "
                                f"or `python -m data_prep import <dir>`")
    ds = load_manifest().datasets.get(name)
    records = read_checksums(folder)
    checks = [(present_path(folder, n), fe) for n, fe in (ds.files.items() if ds else ())]
    seen = {p.name for p, _ in checks} | set(ds.files if ds else ())
    extra = {p.name for p in dataset_files(folder, name).values()} | set(records)
    checks += [(folder / n, manifest_entry(ds, n)) for n in sorted(extra - seen)]
    return [check_file(p, fe, records.get(p.name)) for p, fe in checks]
