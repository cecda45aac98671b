"""Get dataset folders onto disk with verified content: download, import and verify.

Every file a dataset folder ``<data-root>/<name>/`` needs is listed in ``manifest.yaml``
with its source and, where one is published, its sha256 (or the git blob id of the
DGMRec release commit). Three entry points, also reachable as ``python -m data_prep``:

* :func:`download` fetches the missing files of one dataset (pooch for plain URLs, gdown
  for the MMRec Google Drive folder) into a temporary folder inside the dataset folder,
  checks size and hash, and only then moves each file into place with ``os.replace``.
  A mismatch or a truncated file raises :class:`ChecksumError` and leaves nothing behind.
  Files without a published hash are refused unless ``allow_unverified`` is set, in which
  case their computed sha256 goes into ``CHECKSUMS.sha256``. Without network the call
  fails within a few seconds (:class:`OfflineError`) and says which files to place where.
* :func:`import_dir` copies (or symlinks) dataset folders that are already on disk, after
  validating them with :func:`~data_prep.dataset.load_folder` and checking every hash the
  manifest knows. Pickled masks (``missing_items_<ratio>.npy``) are not copied but written
  as ``missing_items_<ratio>.npz`` (plain integer arrays), so an imported folder holds no
  pickle; the manifest's ``mask_sha256`` (a content hash) still verifies them.
* :func:`verify` recomputes the hashes of a dataset folder.

Each dataset folder gets a ``CHECKSUMS.sha256`` (``sha256sum -c`` format) and a ``SOURCE``
file (YAML mapping; read it with :func:`read_source`) whose ``kind`` is ``real`` or
``reference`` (surrogate features), so results can be labelled by their data.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import yaml

from .dataset import MODALITY_FILES, Dataset, dataset_files, load_folder, mask_digest, read_inter, sha256_file
from .errors import DataError
from .mask_files import MASK_FILE_RE, read_mask_groups, write_mask_npz
from .shared import reference_root

MANIFEST_PATH = Path(__file__).with_name("manifest.yaml")
CHECKSUMS_NAME = "CHECKSUMS.sha256"
SOURCE_NAME = "SOURCE"
PROBE_TIMEOUT = 3.0  # seconds for the connectivity probe
DEFAULT_TIMEOUT = 60.0  # seconds without a byte before a download is abandoned
KINDS = ("real", "reference")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")

Log = Callable[[str], None]


# --------------------------------------------------------------------------- errors

class DownloadError(Exception):
    """A dataset could not be fetched or accepted; the message says what to do instead."""


class UnknownDatasetError(DownloadError):
    pass


class OfflineError(DownloadError):
    """No connection: the message lists the files to place by hand and where."""


class UnverifiedError(DownloadError):
    """A file has no published hash and ``allow_unverified`` was not given."""


class UnavailableError(DownloadError):
    """A file has no public source (the TikTok features)."""


class ChecksumError(DataError):
    """A file's content differs from the hash it must have."""

    def __init__(self, path, problem: str, expected: str | None = None, actual: str | None = None):
        super().__init__(path, problem)
        self.expected = expected
        self.actual = actual


class _SourceFailed(Exception):
    """One source could not deliver a file (404, not in the Drive folder...); try the next."""


class _HashMismatch(Exception):
    def __init__(self, actual: str | None):
        super().__init__(actual)
        self.actual = actual


# --------------------------------------------------------------------------- manifest

@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "url", "gdrive-folder" or "unavailable"
    title: str
    page: str = ""
    url: str = ""  # template with {dataset} and {file}
    folder_id: str = ""
    path: str = ""  # path template inside the Drive folder
    commit: str = ""
    note: str = ""

    def file_url(self, dataset: str, file: str) -> str:
        return self.url.format(dataset=dataset, file=file)

    def drive_path(self, dataset: str, file: str) -> str:
        return self.path.format(dataset=dataset, file=file)

    def hosts(self) -> list[tuple[str, int]]:
        if self.kind == "url":
            u = urllib.parse.urlsplit(self.url)
            return [(u.hostname, u.port or (443 if u.scheme == "https" else 80))]
        if self.kind == "gdrive-folder":
            return [("drive.google.com", 443)]
        return []

    def where(self, dataset: str, file: str) -> str:
        """Where a person can get the file, in words."""
        if self.kind == "url":
            return self.file_url(dataset, file)
        if self.kind == "gdrive-folder":
            return f"Google Drive folder {self.page}, file {self.drive_path(dataset, file)}"
        return f"{self.title}: {self.page}"


@dataclass(frozen=True)
class FileEntry:
    dataset: str
    name: str
    source: Source
    alternatives: tuple[Source, ...] = ()
    sha256: str | None = None
    size: int | None = None
    git_blob_sha1: str | None = None  # of the file in the commit of a source that has one
    mask_sha256: str | None = None  # a mask file's content (dataset.mask_digest), whatever its format
    note: str = ""

    @property
    def sources(self) -> tuple[Source, ...]:
        return (self.source, *self.alternatives)

    @property
    def public(self) -> bool:
        return any(s.kind != "unavailable" for s in self.sources)

    @property
    def verifiable(self) -> bool:
        return bool(self.sha256 or self.git_blob_sha1)

    def describe(self) -> str:
        """One line: where the file comes from and how it is checked."""
        if not self.public:
            return self.source.title
        parts = [self.sources[0].where(self.dataset, self.name)]
        parts += [f"or {s.where(self.dataset, self.name)}" for s in self.sources[1:] if s.kind != "unavailable"]
        if self.sha256:
            check = f"sha256 {self.sha256}"
        elif self.git_blob_sha1:
            check = f"git blob {self.git_blob_sha1} in the DGMRec release; no published sha256"
        else:
            check = "no published hash"
        return f"{' '.join(parts)} ({check})"


@dataclass
class DatasetEntry:
    name: str
    title: str
    files: dict[str, FileEntry]
    note: str = ""


@dataclass
class Manifest:
    sources: dict[str, Source]
    datasets: dict[str, DatasetEntry]
    path: Path | None = None

    def dataset(self, name: str) -> DatasetEntry:
        if name not in self.datasets:
            raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(self.datasets)}")
        return self.datasets[name]


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and check ``manifest.yaml``; a broken manifest raises DataError naming it."""
    path = Path(path or MANIFEST_PATH)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(path, f"cannot read the manifest: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), dict) or not isinstance(raw.get("datasets"), dict):
        raise DataError(path, "the manifest needs the mappings 'sources' and 'datasets'")
    sources = {}
    for sname, s in raw["sources"].items():
        if not isinstance(s, dict) or s.get("kind") not in ("url", "gdrive-folder", "unavailable"):
            raise DataError(path, f"source {sname!r}: kind must be url, gdrive-folder or unavailable")
        known = {k: str(s[k]).strip() for k in ("title", "page", "url", "folder_id", "path", "commit", "note") if s.get(k)}
        sources[sname] = Source(name=sname, kind=s["kind"], **known)
    datasets = {}
    for dname, d in raw["datasets"].items():
        files = {}
        for fname, f in ((d or {}).get("files") or {}).items():
            where = f"dataset {dname!r} file {fname!r}"
            src_names = [f.get("source"), *(f.get("alternatives") or [])]
            unknown = [s for s in src_names if s not in sources]
            if unknown:
                raise DataError(path, f"{where}: unknown source(s) {unknown}")
            sha = f.get("sha256")
            blob = f.get("git_blob_sha1")
            if sha is not None and not _HEX64.match(str(sha)):
                raise DataError(path, f"{where}: sha256 must be 64 lowercase hex digits or null")
            if blob is not None and not _HEX40.match(str(blob)):
                raise DataError(path, f"{where}: git_blob_sha1 must be 40 lowercase hex digits or null")
            content = f.get("mask_sha256")
            if content is not None and not _HEX64.match(str(content)):
                raise DataError(path, f"{where}: mask_sha256 must be 64 lowercase hex digits or null")
            files[fname] = FileEntry(
                dataset=dname, name=fname, source=sources[src_names[0]],
                alternatives=tuple(sources[s] for s in src_names[1:]),
                sha256=sha, size=f.get("size"), git_blob_sha1=blob, mask_sha256=content,
                note=str(f.get("note") or ""),
            )
        datasets[dname] = DatasetEntry(dname, str(d.get("title", "")), files, str(d.get("note") or ""))
    return Manifest(sources, datasets, path)


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


def _write_source(folder: Path, record: dict) -> Path:
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


def _now() -> str:
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


def _plain_name(name: str) -> str:
    """The name a pickled mask file gets in the plain format (other names are unchanged)."""
    m = MASK_FILE_RE.match(name)
    return f"missing_items_{m.group(1)}.npz" if m and m.group(2) == "npy" else name


def _manifest_entry(ds: DatasetEntry | None, name: str) -> FileEntry | None:
    """The manifest entry of a file, a plain .npz mask sharing its pickled .npy's entry."""
    if ds is None:
        return None
    m = MASK_FILE_RE.match(name)
    if m and m.group(2) == "npz":
        return ds.files.get(f"missing_items_{m.group(1)}.npy")
    return ds.files.get(name)


def _present_path(folder: Path, name: str) -> Path:
    """Where a manifest file is in a folder: itself, or a pickled mask's plain .npz import."""
    path, plain = folder / name, folder / _plain_name(name)
    return plain if plain != path and not path.exists() and plain.is_file() else path


# --------------------------------------------------------------------------- network

def probe(hosts: Iterable[tuple[str, int]], timeout: float = PROBE_TIMEOUT) -> set[tuple[str, int]]:
    """The hosts that accept a TCP connection within ``timeout`` seconds (all probed at once).

    DNS lookups run in the probing threads, so a hanging resolver cannot stall the
    caller beyond ``timeout``. With an HTTPS proxy configured, the proxy is probed instead.
    """
    hosts = list(dict.fromkeys(hosts))
    proxy = urllib.request.getproxies().get("https")
    targets = {}
    for h in hosts:
        if proxy and not urllib.request.proxy_bypass(h[0]):
            p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            targets[h] = (p.hostname, p.port or 80)
        else:
            targets[h] = h
    reachable: set = set()
    lock = threading.Lock()

    def attempt(host):
        try:
            socket.create_connection(targets[host], timeout=timeout).close()
        except (OSError, UnicodeError):
            return
        with lock:
            reachable.add(host)

    threads = [threading.Thread(target=attempt, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return set(reachable)


def _is_network_error(exc: BaseException | None) -> bool:
    try:
        import requests
        net = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    except ImportError:  # pragma: no cover - requests comes with pooch and gdown
        net = ()
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (socket.gaierror, socket.timeout, TimeoutError, ConnectionError, *net)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def fetch_url(url: str, dest: Path, known_sha256: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download ``url`` to ``dest`` with pooch (checking ``known_sha256`` if given)."""
    import pooch
    import requests

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # pooch logs every download and unknown hash at INFO/WARNING
    try:
        pooch.retrieve(url, known_hash=f"sha256:{known_sha256}" if known_sha256 else None, fname=dest.name,
                       path=dest.parent, downloader=pooch.HTTPDownloader(timeout=timeout, progressbar=False))
    except ValueError as exc:
        if "does not match the known hash" in str(exc):
            m = re.search(r"but got ([0-9a-fA-F]{64})", str(exc))
            raise _HashMismatch(m.group(1).lower() if m else None) from None
        raise
    except requests.exceptions.HTTPError as exc:
        raise _SourceFailed(f"{url}: {exc}") from exc
    finally:
        logger.setLevel(level)
    return dest


@functools.lru_cache(maxsize=8)
def _drive_listing(folder_id: str, timeout: float) -> tuple:
    import gdown

    return tuple(gdown.download_folder(id=folder_id, skip_download=True, quiet=True, timeout=timeout))


def fetch_gdrive(folder_id: str, rel_path: str, dest: Path, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download the file at ``rel_path`` inside a public Google Drive folder to ``dest`` (gdown)."""
    import gdown

    want = rel_path.strip("/")
    try:
        listing = _drive_listing(folder_id, timeout)
    except gdown.exceptions.DownloadError as exc:
        if _is_network_error(exc):
            raise
        raise _SourceFailed(f"cannot list Google Drive folder {folder_id}: {exc}") from exc
    paths = {f.path.replace("\\", "/").strip("/"): f for f in listing}
    hit = paths.get(want) or next((f for p, f in paths.items() if p.endswith("/" + want)), None)
    if hit is None:
        near = [p for p in paths if want.split("/")[0] in p][:8] or list(paths)[:8]
        raise _SourceFailed(f"Google Drive folder {folder_id} has no {want} (it holds e.g. {near}); "
                            f"the folder layout may have changed")
    try:
        gdown.download(id=hit.id, output=str(dest), quiet=False, timeout=timeout)
    except gdown.exceptions.DownloadError as exc:
        if _is_network_error(exc):
            raise
        raise _SourceFailed(f"Google Drive file {hit.id} ({want}): {exc}") from exc
    if not dest.is_file():
        raise _SourceFailed(f"Google Drive file {hit.id} ({want}) was not written")
    return dest


# --------------------------------------------------------------------------- download

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
        path = _present_path(folder, fe.name)  # an imported mask is the plain .npz
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
            if not _is_network_error(exc):
                raise
            rest = fetchable[i:] + deferred + blocked + unavailable
            raise OfflineError(_offline_message(name, folder, rest,
                                                f"the connection failed while downloading {fe.name} ({exc})")) from None
        accepted[fe.name] = records[fe.name] = sha
        fetched.add(fe.name)
        if ok:
            verified.add(fe.name)
        if _plain_name(fe.name) != fe.name:  # a bad plain copy of this mask is replaced by the download
            (folder / _plain_name(fe.name)).unlink(missing_ok=True)
            records.pop(_plain_name(fe.name), None)
            accepted.pop(_plain_name(fe.name), None)
        write_checksums(folder, {**records, **accepted})  # after each file: an interruption loses nothing
    if accepted:
        write_checksums(folder, {**records, **accepted})
    present = sorted(p.name for p in dataset_files(folder, name).values())
    kind = previous.get("kind", "real")
    if present:
        kind = "real" if set(present) <= verified | fetched else previous.get("kind", "real")
        _write_source(folder, {
            "kind": kind,
            "dataset": name,
            "origin": f"python -m data_prep download {name}",
            "sources": sorted({s.page for fe in ds.files.values() for s in fe.sources if s.kind != "unavailable"}),
            "date": _now(),
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
            except _HashMismatch as exc:
                raise ChecksumError(target, f"checksum mismatch: sha256 expected {fe.sha256}, got {exc.actual} "
                                            f"(from {src.where(fe.dataset, fe.name)}); nothing was written",
                                    fe.sha256, exc.actual) from None
            except _SourceFailed as exc:
                failures.append(str(exc))
                log(f"{target}: {exc}")
                continue
            except Exception as exc:
                if _is_network_error(exc) or isinstance(exc, (DownloadError, DataError)):
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


# --------------------------------------------------------------------------- import

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
               link: bool = False, kind: str | None = None, log: Log | None = print) -> list[str]:
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
        fe = _manifest_entry(ds, path.name)
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
        incoming = {_plain_name(p.name) for p, _ in files}  # a mask in either format replaces both
        stale = sorted(p.name for p in dataset_files(dest, name).values() if _plain_name(p.name) not in incoming)
        if stale:
            raise DataError(dest, f"already holds {', '.join(stale)}, which importing {folder} would not replace "
                                  f"(a mix of two sources); remove them or the folder first")
    return _ImportPlan(name, folder, files, kind or auto, reasons)


def _apply_import(plan: _ImportPlan, dest: Path, link: bool, log: Log) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    written = {}  # name in dest -> (sha256, verified)
    for path, chk in plan.files:
        target = dest / _plain_name(path.name)
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
    _write_source(dest, {
        "kind": plan.kind,
        "dataset": plan.name,
        "origin": str(plan.folder.resolve()),
        "method": "import (symlink)" if link else "import (copy)",
        "date": _now(),
        "reason": "; ".join(plan.reasons) if plan.reasons else "every file is a manifest file from a public source",
        "verified": sorted(n for n, (_, ok) in written.items() if ok),
        "unverified": sorted(n for n, (_, ok) in written.items() if not ok),
    })
    log(f"{dest}: imported as {plan.kind} data" + (f" ({'; '.join(plan.reasons)})" if plan.reasons else ""))


# --------------------------------------------------------------------------- verify

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
    checks = [(_present_path(folder, n), fe) for n, fe in (ds.files.items() if ds else ())]
    seen = {p.name for p, _ in checks} | set(ds.files if ds else ())
    extra = {p.name for p in dataset_files(folder, name).values()} | set(records)
    checks += [(folder / n, _manifest_entry(ds, n)) for n in sorted(extra - seen)]
    return [check_file(p, fe, records.get(p.name)) for p, fe in checks]
