"""The manifest of dataset files: ``manifest.yaml`` beside this module, read and checked.

Every file a dataset folder ``<data-root>/<name>/`` needs is listed there with its sources
(plain URLs, the MMRec Google Drive folder, or none: the TikTok features are not public) and,
where one is published, its sha256 and its git blob id in the DGMRec release commit; a mask
also has the hash of its content (``dataset.mask_digest``), which is the same whichever file
format holds the groups.
"""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import DataError, UnknownDatasetError

MANIFEST_PATH = Path(__file__).with_name("manifest.yaml")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


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
