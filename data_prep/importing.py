"""``python -m data_prep import``: bring dataset folders that are already on disk into the data root.

:func:`import_dir` validates each folder with :func:`~data_prep.dataset.load_folder` and checks
every hash the manifest knows before anything is written, then copies (or symlinks) the files
one by one atomically and writes ``CHECKSUMS.sha256`` and ``SOURCE``. Pickled masks
(``missing_items_<ratio>.npy``) are not copied but written as ``missing_items_<ratio>.npz``
(plain integer arrays), so an imported folder holds no pickle; the manifest's ``mask_sha256``
(a content hash) still verifies them. A folder is labelled ``reference`` when anything in it
is not the public release (surrogate features, files the manifest does not know), else ``real``.
"""
from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .dataset import dataset_files, load_folder, sha256_file
from .errors import ChecksumError, DataError, DownloadError
from .manifest import Manifest, load_manifest
from .mask_files import MASK_FILE_RE, read_mask_groups, write_mask_npz
from .provenance import (CHECKSUMS_NAME, KINDS, SOURCE_NAME, FileCheck, check_file, manifest_entry,
                         plain_mask_name, read_checksums, read_source, timestamp, write_checksums, write_source)
from .shared import reference_root


@dataclass
class _ImportPlan:
    name: str
    folder: Path
    files: list[tuple[Path, FileCheck]]
    kind: str
    reasons: list[str] = field(default_factory=list)


def _is_dataset_folder(folder: Path) -> bool:
    return folder.is_dir() and ((folder / f"{folder.name}.inter").is_file() or (folder / f"{folder.name}_del.inter").is_file())


def _is_reference_location(folder: Path) -> bool:
    """Inside the shared reference folder (surrogate features): what is imported from there is
    labelled ``reference``."""
    try:
        folder.resolve().relative_to(reference_root().resolve())
        return True
    except ValueError:
        return False


def import_dir(src: str | Path, data_root: str | Path = "data", names: Iterable[str] | None = None,
               link: bool = False, kind: str | None = None, log: Callable[[str], None] | None = print) -> list[str]:
    """Import the dataset folders of ``src`` into ``<data_root>/<name>/``; return their names.

    ``src`` is a folder of dataset folders in the official format (or one dataset folder).
    Each is validated with ``load_folder`` and every hash the manifest knows is checked
    before anything is written; then the files are copied (or symlinked with ``link``) one
    by one atomically, and ``CHECKSUMS.sha256`` and ``SOURCE`` are written. ``kind``
    overrides the real/reference label that is otherwise inferred.
    """
    log = log or (lambda _msg: None)
    if kind is not None and kind not in KINDS:
        raise DownloadError(f"kind must be one of {KINDS}, got {kind!r}")
    manifest = load_manifest()
    src = Path(src)
    if not src.is_dir():
        raise DataError(src, "import source folder not found")
    if _is_dataset_folder(src):
        found = {src.name: src}
    else:
        found = {d.name: d for d in sorted(src.iterdir()) if _is_dataset_folder(d)}
    if names is not None:
        if isinstance(names, str):
            names = names.split(",")
        names = [n.strip() for n in names if n.strip()]
        absent = [n for n in names if n not in found]
        if absent:
            raise DataError(src, f"no dataset folder {', '.join(absent)} here; found: {', '.join(found) or 'none'}")
        found = {n: found[n] for n in names}
    if not found:
        raise DataError(src, "no dataset folder found (expected <dir>/<name>/ holding <name>.inter or <name>_del.inter)")
    root = Path(data_root)
    plans = [_plan_import(manifest, folder, root / n, kind) for n, folder in found.items()]  # all checks first
    for plan in plans:
        _apply_import(plan, root / plan.name, link, log)
    return [p.name for p in plans]


def _plan_import(manifest: Manifest, folder: Path, dest: Path, kind: str | None) -> _ImportPlan:
    name = folder.name
    if dest.exists() and dest.resolve() == folder.resolve():
        raise DataError(folder, f"is already the destination {dest}; nothing to import")
    load_folder(folder.parent, name, source=kind or "reference")  # raises DataError naming the bad file
    ds = manifest.datasets.get(name)
    recorded = read_checksums(folder)
    files = []
    reasons = []
    if _is_reference_location(folder):
        reasons.append(f"the folder is the shared reference data ({folder.resolve()}), with surrogate features")
    if read_source(folder).get("kind") == "reference":
        reasons.append(f"its {SOURCE_NAME} file says kind: reference")
    if ds is None:
        reasons.append(f"{name!r} is not a dataset of the manifest")
    for path in sorted(dataset_files(folder, name).values(), key=lambda p: p.name):
        fe = manifest_entry(ds, path.name)
        chk = check_file(path, fe, recorded.get(path.name))
        if chk.status == "mismatch":
            what = "the manifest" if fe is not None and fe.sha256 else f"its {CHECKSUMS_NAME}"
            raise ChecksumError(path, f"refusing to import: content differs from {what}: {chk.detail}",
                                chk.expected, chk.sha256)
        if ds is not None and fe is None:
            reasons.append(f"{path.name} is not in the manifest")
        elif chk.release is False:
            reasons.append(f"{path.name} is not the release file")
        elif fe is not None and not fe.public and chk.status != "ok":
            reasons.append(f"{path.name} has no public source")
        files.append((path, chk))
    auto = "reference" if reasons else "real"
    if kind == "real" and _is_reference_location(folder):
        raise DataError(folder, "is the shared reference data (surrogate features); it cannot be labelled real")
    if dest.is_dir():
        incoming = {plain_mask_name(p.name) for p, _ in files}  # a mask in either format replaces both
        stale = sorted(p.name for p in dataset_files(dest, name).values() if plain_mask_name(p.name) not in incoming)
        if stale:
            raise DataError(dest, f"already holds {', '.join(stale)}, which importing {folder} would not replace "
                                  f"(a mix of two sources); remove them or the folder first")
    return _ImportPlan(name, folder, files, kind or auto, reasons)


def _apply_import(plan: _ImportPlan, dest: Path, link: bool, log: Callable[[str], None]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    written = {}  # name in dest -> (sha256, verified)
    for path, chk in plan.files:
        target = dest / plain_mask_name(path.name)
        tmp = dest / f".{target.name}.import-{secrets.token_hex(4)}.part"
        try:
            if target.name != path.name:  # a pickled mask: written again as plain arrays, never linked
                with open(tmp, "wb") as f:
                    write_mask_npz(f, read_mask_groups(path))
            elif link:
                os.symlink(path.resolve(), tmp)
            else:
                shutil.copyfile(path, tmp)
                copied = sha256_file(tmp)
                if copied != chk.sha256:
                    raise DownloadError(f"{target}: the copy of {path} has sha256 {copied}, the source {chk.sha256}")
            os.replace(tmp, target)
        finally:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
        written[target.name] = (sha256_file(target) if target.name != path.name else chk.sha256, chk.status == "ok")
        if MASK_FILE_RE.match(target.name):  # the pickled copy of this mask from an earlier import
            pickled = target.with_suffix(".npy")
            if pickled.is_file() or pickled.is_symlink():
                pickled.unlink()
        state = "verified against the manifest" if chk.status == "ok" else f"not verifiable, sha256 {chk.sha256} recorded"
        how = "converted to plain arrays (no pickle) from" if target.name != path.name else \
            "linked to" if link else "copied from"
        log(f"{target}: {how} {path} ({state})")
    write_checksums(dest, {n: sha for n, (sha, _) in written.items()})
    write_source(dest, {
        "kind": plan.kind,
        "dataset": plan.name,
        "origin": str(plan.folder.resolve()),
        "method": "import (symlink)" if link else "import (copy)",
        "date": timestamp(),
        "reason": "; ".join(plan.reasons) if plan.reasons else "every file is a manifest file from a public source",
        "verified": sorted(n for n, (_, ok) in written.items() if ok),
        "unverified": sorted(n for n, (_, ok) in written.items() if not ok),
    })
    log(f"{dest}: imported as {plan.kind} data" + (f" ({'; '.join(plan.reasons)})" if plan.reasons else ""))
