"""The results store: ``<results-dir>/results.jsonl``, one JSON object per finished job.

Appends are atomic with respect to other writers (an exclusive ``flock`` around one
``write`` of a whole line, then ``fsync``), so parallel workers never interleave records and
a killed writer leaves at most one incomplete last line. Readers skip such a line (and say
so) instead of failing; the next append starts on a fresh line. Per-user test metric vectors
go to ``<results-dir>/per_user/<job_id>.npz``: plain numeric arrays, read back with
``allow_pickle=False``, so a results folder from another machine can be reported on without
running anything from it; job ids are plain names, never paths.
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


class ResultStore:
    def __init__(self, results_dir: str | Path):
        self.dir = Path(results_dir)
        self.path = self.dir / RESULTS_FILE
        self.per_user_dir = self.dir / "per_user"

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

    def per_user_path(self, job_id: str) -> Path:
        """``per_user/<job_id>.npz``; a job id that is not a plain name (``../x``) is refused."""
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise DataError(self.path, f"job id {job_id!r:.80} is not a plain name (letters, digits, '.', '_' and '-')")
        return self.per_user_dir / f"{job_id}.npz"

    def save_per_user(self, job_id: str, users: np.ndarray, vectors: dict[str, np.ndarray]) -> str:
        path = self.per_user_path(job_id)
        self.per_user_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.per_user_dir, suffix=".npz.tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, users=users, **{k.replace("@", "_at_"): v for k, v in vectors.items()})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return str(path.relative_to(self.dir))

    def load_per_user(self, job_id: str) -> dict[str, np.ndarray]:
        path = self.per_user_path(job_id)
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise ValueError("not an .npz archive")
                return {k.replace("_at_", "@"): z[k] for k in z.files}  # object arrays raise ValueError
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - object arrays (ValueError), BadZipFile, unsupported zip features
            raise DataError(path, f"not a per-user metric file of plain arrays: {exc}") from None


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
