"""The results store: ``<results-dir>/results.jsonl``, one JSON object per finished job.

Appends are atomic with respect to other writers (an exclusive ``flock`` around one
``write`` of a whole line, then ``fsync``), so parallel workers never interleave records and
a killed writer leaves at most one incomplete last line. Readers skip such a line (and say
so) instead of failing; the next append starts on a fresh line. Per-user test metric vectors
go to ``<results-dir>/per_user/<job_id>.npz``; the features a DGMRec job generated, when a job
of another model imputes with them, to ``<results-dir>/generated/<job_id>.npz``. Both hold plain
numeric arrays, read back with ``allow_pickle=False``, so a results folder from another machine
can be reported on without running anything from it; job ids are plain names, never paths.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from data_prep.errors import DataError

RESULTS_FILE = "results.jsonl"
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]+$")  # no "/": the file stays in per_user/
GROUP_SEP = "__"  # per-user files: "<item group>__<metric>"; generated files: "<modality>__ids" / "__rows"


class ResultStore:
    def __init__(self, results_dir: str | Path):
        self.dir = Path(results_dir)
        self.path = self.dir / RESULTS_FILE
        self.per_user_dir = self.dir / "per_user"
        self.generated_dir = self.dir / "generated"

    def append(self, record: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, sort_keys=True, default=_json_default) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size:
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":  # a writer died mid-line: close that line off
                    line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def records(self, warn: bool = True) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        with open(self.path, "rb") as f:
            for n, raw in enumerate(f, 1):
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    if warn:
                        print(f"warning: {self.path}:{n}: skipping an incomplete record "
                              f"(a writer was interrupted)", file=sys.stderr)
                    continue
                if isinstance(rec, dict) and "job_id" in rec:
                    out.append(rec)
        return out

    def finished_ids(self, retry_failed: bool = False) -> set[str]:
        done = set()
        for rec in self.records():
            if rec.get("status") == "ok" or (rec.get("status") == "failed" and not retry_failed):
                done.add(rec["job_id"])
        return done

    def result_path(self, kind: str, job_id: str) -> Path:
        """``<kind>/<job_id>.npz`` (``per_user`` or ``generated``); a job id that is not a plain name
        (``../x``) is refused."""
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise DataError(self.path, f"job id {job_id!r:.80} is not a plain name (letters, digits, '.', '_' and '-')")
        return self.dir / kind / f"{job_id}.npz"

    def per_user_path(self, job_id: str) -> Path:
        return self.result_path("per_user", job_id)

    def save_per_user(self, job_id: str, users: np.ndarray, vectors: dict[str, np.ndarray], groups=None) -> str:
        """``users`` and one vector per metric; with ``groups`` (``evaluation.GroupMetrics``) also
        ``<group>__users`` and ``<group>__<metric>`` for every item group."""
        arrays = {"users": users, **{k.replace("@", "_at_"): v for k, v in vectors.items()}}
        for g, vec in (groups.vectors.items() if groups is not None else ()):
            if len(groups.users[g]):
                arrays[f"{g}{GROUP_SEP}users"] = groups.users[g]
                arrays.update({f"{g}{GROUP_SEP}{k.replace('@', '_at_')}": v for k, v in vec.items()})
        return self._save_npz(self.per_user_path(job_id), arrays)

    def load_per_user(self, job_id: str) -> dict[str, np.ndarray]:
        return {k.replace("_at_", "@"): v for k, v in self._load_npz(self.per_user_path(job_id)).items()}

    def save_generated(self, job_id: str, generated: dict) -> str:
        """The features a job generated, ``{modality: (item ids, rows)}`` (the ``generated`` imputation)."""
        arrays = {}
        for m, (ids, feats) in generated.items():
            arrays[f"{m}{GROUP_SEP}ids"] = np.asarray(ids, dtype=np.int64)
            arrays[f"{m}{GROUP_SEP}rows"] = np.asarray(feats, dtype=np.float32)
        return self._save_npz(self.result_path("generated", job_id), arrays)

    def load_generated(self, job_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        z = self._load_npz(self.result_path("generated", job_id))
        mods = sorted({k.split(GROUP_SEP)[0] for k in z})
        return {m: (z[f"{m}{GROUP_SEP}ids"], z[f"{m}{GROUP_SEP}rows"]) for m in mods}

    def has_generated(self, job_id: str) -> bool:
        return self.result_path("generated", job_id).is_file()

    def _save_npz(self, path: Path, arrays: dict) -> str:
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return str(path.relative_to(self.dir))

    @staticmethod
    def _load_npz(path: Path) -> dict[str, np.ndarray]:
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise ValueError("not an .npz archive")
                return {k: z[k] for k in z.files}  # object arrays raise ValueError
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - object arrays (ValueError), BadZipFile, unsupported zip features
            raise DataError(path, f"not a result file of plain arrays: {exc}") from None


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
