"""``python -m data_prep download``: fetch the missing files of one dataset, verified.

:func:`download` fetches the files of ``<data-root>/<name>/`` that ``manifest.yaml`` lists and
the folder lacks (pooch for plain URLs, gdown for the MMRec Google Drive folder) into a
temporary folder inside the dataset folder, checks size and hash, and only then moves each
file into place with ``os.replace``. A mismatch or a truncated file raises
:class:`ChecksumError` and leaves nothing behind. Files without a published hash are refused
unless ``allow_unverified`` is set, in which case their computed sha256 goes into
``CHECKSUMS.sha256``. Without network the call fails within a few seconds
(:class:`OfflineError`) and says which files to place where.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .dataset import MODALITY_FILES, Dataset, dataset_files, load_folder, read_inter
from .errors import (ChecksumError, DataError, DownloadError, OfflineError, UnavailableError,
                     UnverifiedError)
from .manifest import DatasetEntry, FileEntry, Source, load_manifest
from .mask_files import MASK_FILE_RE, read_mask_groups
from .network import (DEFAULT_TIMEOUT, PROBE_TIMEOUT, HashMismatch, SourceFailed, fetch_gdrive, fetch_url,
                      is_network_error, probe)
from .provenance import (CHECKSUMS_NAME, FileCheck, check_file, file_hashes, plain_mask_name, present_path,
                         read_checksums, read_source, timestamp, write_checksums, write_source)
from .shared import reference_root

Log = Callable[[str], None]


def download(name: str, data_root: str | Path = "data", allow_unverified: bool = False,
             timeout: float = DEFAULT_TIMEOUT, probe_timeout: float = PROBE_TIMEOUT,
             log: Log | None = print) -> Dataset:
    """Make ``<data_root>/<name>/`` complete and verified; return the loaded dataset.

    Files already present with the right hash are kept. Raises UnknownDatasetError,
    OfflineError, ChecksumError, UnverifiedError, UnavailableError or DataError.
    """
    log = log or (lambda _msg: None)
    entry = load_manifest().dataset(name)
    root = Path(data_root)
    folder = root / name
    if folder.exists() and not folder.is_dir():
        raise DataError(folder, "exists but is not a folder")
    created = [d for d in (root, folder) if not d.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _download(entry, root, folder, allow_unverified, timeout, probe_timeout, log)
    except BaseException:
        for d in reversed(created):  # leave no empty folder behind that this call made
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise


def _download(ds: DatasetEntry, root: Path, folder: Path, allow_unverified: bool, timeout: float,
              probe_timeout: float, log: Log) -> Dataset:
    name = ds.name
    previous = read_source(folder)
    if previous.get("kind") == "reference":
        raise DownloadError(f"{folder} holds reference data (surrogate features, from {previous.get('origin', '?')}); "
                            f"downloading would mix real and reference files. Remove that folder or choose another "
                            f"--data-root to download the real dataset")
    records = read_checksums(folder)
    accepted: dict[str, str] = {}  # file -> sha256 of the manifest files now in place
    verified: set[str] = set()  # checked against a hash the manifest publishes
    fetched: set[str] = set()  # downloaded from the manifest's sources in this run
    todo: list[FileEntry] = []
    unavailable: list[FileEntry] = []
    unverified_present: list[tuple[FileEntry, FileCheck]] = []
    for fe in ds.files.values():
        path = present_path(folder, fe.name)  # an imported mask is the plain .npz
        chk = check_file(path, fe, records.get(path.name))
        if chk.status == "ok":
            accepted[path.name] = chk.sha256
            verified.add(path.name)
            log(f"{path}: present, {chk.detail}")
        elif chk.status == "missing":
            (todo if fe.public else unavailable).append(fe)
        elif chk.release is False or (chk.status == "mismatch" and fe.public):
            log(f"{path}: {chk.detail}; fetching a fresh copy")
            todo.append(fe)
        elif chk.status == "mismatch":  # differs from its local record, and nobody can re-fetch it
            raise ChecksumError(path, chk.detail, chk.expected, chk.sha256)
        elif chk.status == "ok-local":
            accepted[path.name] = chk.sha256
            log(f"{path}: present, {chk.detail}; keeping it")
        elif allow_unverified:  # "unknown": present, no hash to compare with, not recorded
            accepted[path.name] = chk.sha256
            log(f"{path}: present, UNVERIFIED (no published hash), accepted; sha256 {chk.sha256}")
        else:
            unverified_present.append((fe, chk))
    if unverified_present:
        lines = [f"  {folder / fe.name}: {chk.detail}" for fe, chk in unverified_present]
        raise UnverifiedError(
            f"{name}: present file(s) cannot be verified (no published hash):\n" + "\n".join(lines)
            + f"\nrerun with --allow-unverified to accept them and record their sha256 in {folder / CHECKSUMS_NAME}, "
              f"or import the folder with `python -m data_prep import <dir>`")

    # Files without any published hash are not even downloaded without --allow-unverified.
    fetchable = [fe for fe in todo if fe.verifiable or allow_unverified]
    blocked = [fe for fe in todo if fe not in fetchable]
    deferred: list[FileEntry] = []
    reachable: set | None = None
    if fetchable:
        hosts = {h for fe in fetchable for s in fe.sources for h in s.hosts()}
        reachable = probe(sorted(hosts), probe_timeout)
        if not reachable:
            raise OfflineError(_offline_message(
                name, folder, todo + unavailable,
                f"this machine is offline (no connection to {', '.join(f'{h}:{p}' for h, p in sorted(hosts))} "
                f"within {probe_timeout:g} s)"))
        deferred = [fe for fe in fetchable if not any(h in reachable for s in fe.sources for h in s.hosts())]
        fetchable = [fe for fe in fetchable if fe not in deferred]
    for i, fe in enumerate(fetchable):
        try:
            sha, ok = _fetch_one(fe, folder, allow_unverified, timeout, log, reachable)
        except Exception as exc:
            if not is_network_error(exc):
                raise
            rest = fetchable[i:] + deferred + blocked + unavailable
            raise OfflineError(_offline_message(name, folder, rest,
                                                f"the connection failed while downloading {fe.name} ({exc})")) from None
        accepted[fe.name] = records[fe.name] = sha
        fetched.add(fe.name)
        if ok:
            verified.add(fe.name)
        if plain_mask_name(fe.name) != fe.name:  # a bad plain copy of this mask is replaced by the download
            (folder / plain_mask_name(fe.name)).unlink(missing_ok=True)
            records.pop(plain_mask_name(fe.name), None)
            accepted.pop(plain_mask_name(fe.name), None)
        write_checksums(folder, {**records, **accepted})  # after each file: an interruption loses nothing
    if accepted:
        write_checksums(folder, {**records, **accepted})
    present = sorted(p.name for p in dataset_files(folder, name).values())
    kind = previous.get("kind", "real")
    if present:
        kind = "real" if set(present) <= verified | fetched else previous.get("kind", "real")
        write_source(folder, {
            "kind": kind,
            "dataset": name,
            "origin": f"python -m data_prep download {name}",
            "sources": sorted({s.page for fe in ds.files.values() for s in fe.sources if s.kind != "unavailable"}),
            "date": timestamp(),
            "reason": "files from the manifest's public sources" if kind == "real" else "kept the previous label",
            "verified": [n for n in present if n in verified],
            "unverified": [n for n in present if n not in verified],
        })
    if deferred:
        hosts = sorted({f"{h}:{p}" for fe in deferred for s in fe.sources for h, p in s.hosts()})
        raise OfflineError(_offline_message(name, folder, deferred + blocked + unavailable,
                                            f"cannot reach {', '.join(hosts)} (within {probe_timeout:g} s)"))
    if blocked:
        lines = [f"  {folder / fe.name}  <- {fe.describe()}" for fe in blocked]
        raise UnverifiedError(
            f"{name}: refusing to download file(s) that have no published sha256:\n" + "\n".join(lines)
            + f"\nrerun with --allow-unverified to download them and record their sha256 in {folder / CHECKSUMS_NAME},"
              f" or place them by hand and use `python -m data_prep import <dir>`")
    dataset = load_folder(root, name, source=kind, kind=name)
    if unavailable:
        lines = [f"  {folder / fe.name}" for fe in unavailable]
        note = unavailable[0].source.note or unavailable[0].source.title
        raise UnavailableError(
            f"{name}: the public files are in place and valid, but these have no public source:\n" + "\n".join(lines)
            + f"\n{note}\nPlace them in {folder}/ by hand, or import a complete folder with "
              f"`python -m data_prep import <dir>` (e.g. the surrogate features: "
              f"`python -m data_prep import {reference_root()} --names {name}`)")
    log(f"{folder}: complete ({kind} data; {len(present)} files; {dataset.n_users} users, {dataset.n_items} items)")
    return dataset


def _offline_message(name: str, folder: Path, entries: list[FileEntry], reason: str) -> str:
    lines = [f"cannot download {name!r}: {reason}.", f"Place these files by hand in {folder}/:"]
    width = max((len(str(folder / fe.name)) for fe in entries), default=0)
    for fe in entries:
        lines.append(f"  {str(folder / fe.name):<{width}}  <- {fe.describe()}")
    for note in dict.fromkeys(fe.source.note for fe in entries if not fe.public and fe.source.note):
        lines.append(f"Note: {note}")
    lines.append(f"Then rerun `python -m data_prep download {name} --data-root {folder.parent}` (files in place are "
                 f"checked, not fetched; add --allow-unverified for files without a published hash), or put the files "
                 f"in <dir>/{name}/ and run `python -m data_prep import <dir> --data-root {folder.parent}`, which "
                 f"validates them, checks their hashes and copies them into {folder}/.")
    return "\n".join(lines)


def _fetch_one(fe: FileEntry, folder: Path, allow_unverified: bool, timeout: float, log: Log,
               reachable: set | None = None) -> tuple[str, bool]:
    """Fetch one file from its (reachable) sources into ``folder``; return (sha256, verified)."""
    target = folder / fe.name
    failures = []
    for src in fe.sources:
        if src.kind == "unavailable":
            continue
        if reachable is not None and not any(h in reachable for h in src.hosts()):
            failures.append(f"{src.name}: host not reachable")
            continue
        tmpdir = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
        tmp = tmpdir / fe.name
        try:
            log(f"{target}: downloading from {src.where(fe.dataset, fe.name)}")
            try:
                if src.kind == "url":
                    fetch_url(src.file_url(fe.dataset, fe.name), tmp, fe.sha256, timeout)
                else:
                    fetch_gdrive(src.folder_id, src.drive_path(fe.dataset, fe.name), tmp, timeout)
            except HashMismatch as exc:
                raise ChecksumError(target, f"checksum mismatch: sha256 expected {fe.sha256}, got {exc.actual} "
                                            f"(from {src.where(fe.dataset, fe.name)}); nothing was written",
                                    fe.sha256, exc.actual) from None
            except SourceFailed as exc:
                failures.append(str(exc))
                log(f"{target}: {exc}")
                continue
            except Exception as exc:
                if is_network_error(exc) or isinstance(exc, (DownloadError, DataError)):
                    raise
                how = "truncated" if "IncompleteRead" in repr(exc) else "failed"
                raise DownloadError(f"{target}: download {how} ({type(exc).__name__}: {exc}) from "
                                    f"{src.where(fe.dataset, fe.name)}; nothing was written") from exc
            if not tmp.is_file():
                failures.append(f"{src.name}: nothing was downloaded")
                continue
            sha, verified = _accept(fe, src, tmp, target, allow_unverified)
            os.replace(tmp, target)
            state = "verified" if verified else "UNVERIFIED (no published hash), recorded in " + CHECKSUMS_NAME
            log(f"{target}: downloaded, {state}; sha256 {sha}")
            return sha, verified
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    raise DownloadError(f"{target}: could not be downloaded from any source: " + "; ".join(failures))


def _accept(fe: FileEntry, src: Source, tmp: Path, target: Path, allow_unverified: bool) -> tuple[str, bool]:
    """Check a downloaded file against the manifest; raise unless it may go into place."""
    size = tmp.stat().st_size
    sha, blob = file_hashes(tmp, git_blob=bool(fe.git_blob_sha1 and not fe.sha256))
    if fe.size is not None and size != fe.size:
        how = "truncated" if size < fe.size else "longer than expected"
        raise ChecksumError(target, f"download {how}: got {size} bytes, expected {fe.size}; sha256 expected "
                                    f"{fe.sha256}, got {sha}; nothing was written", fe.sha256, sha)
    if fe.sha256:
        if sha != fe.sha256:
            raise ChecksumError(target, f"checksum mismatch: sha256 expected {fe.sha256}, got {sha} "
                                        f"(from {src.where(fe.dataset, fe.name)}); nothing was written", fe.sha256, sha)
        return sha, True
    if fe.git_blob_sha1:
        if blob == fe.git_blob_sha1:
            return sha, True
        if src.commit:  # the blob id is this source's own: anything else is a corrupt download
            raise ChecksumError(target, f"checksum mismatch: git blob expected {fe.git_blob_sha1}, got {blob} "
                                        f"(sha256 {sha}; from {src.where(fe.dataset, fe.name)}); nothing was written",
                                fe.git_blob_sha1, blob)
    if not allow_unverified:
        raise UnverifiedError(f"{target}: the copy from {src.where(fe.dataset, fe.name)} cannot be verified "
                              f"(sha256 {sha}); rerun with --allow-unverified to accept it")
    _check_structure(tmp, fe, target)
    return sha, False


def _check_structure(path: Path, fe: FileEntry, target: Path) -> None:
    """Cheap sanity check of an unverified download, so a truncated file is not accepted."""
    try:
        if fe.name.endswith(".inter"):
            read_inter(path)
        elif fe.name in MODALITY_FILES.values():
            x = np.load(path, mmap_mode="r", allow_pickle=False)
            if x.ndim != 2:
                raise ValueError(f"expected a 2-D array, got shape {x.shape}")
        elif MASK_FILE_RE.match(fe.name):
            read_mask_groups(path)  # the restricted reader: nothing in the file is run
        elif fe.name.endswith(".npy"):
            np.load(path, allow_pickle=False)
    except DataError as exc:
        raise DownloadError(f"{target}: downloaded file is not valid ({exc.problem}); nothing was written") from None
    except Exception as exc:  # noqa: BLE001 - any read failure means a corrupt or truncated file
        raise DownloadError(f"{target}: downloaded file is truncated or corrupt ({exc}); nothing was written") from None
