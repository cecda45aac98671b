"""Content-addressed cache for derived artefacts (kNN graphs, adjacencies, masks).

Keys are sha256 digests of a JSON description of the artefact: its kind, its parameters
and the content hashes of every input it was built from. Artefacts live in a cache folder
(never beside the raw data), one file per key, written atomically. A masked run and an
unmasked run have different input hashes and therefore can never share an artefact.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class ArtifactCache:
    def __init__(self, root: str | Path | None, memory: bool = True):
        self.root = Path(root) if root is not None else None
        self._memory: dict[str, object] = {} if memory else None
        self.hits = 0
        self.misses = 0
        self.log: list[tuple[str, str, str]] = []  # (kind, key, "hit"|"miss"): lets tests audit reads

    def key(self, kind: str, description: dict) -> str:
        return f"{kind}-{digest({'kind': kind, **description})[:32]}"

    def get_or_build(self, kind: str, description: dict, build):
        key = self.key(kind, description)
        if self._memory is not None and key in self._memory:
            self.hits += 1
            self.log.append((kind, key, "hit"))
            return self._memory[key]
        path = self.root / f"{key}.pt" if self.root is not None else None
        if path is not None and path.is_file():
            try:
                value = torch.load(path, weights_only=False)
                self.hits += 1
                self.log.append((kind, key, "hit"))
                if self._memory is not None:
                    self._memory[key] = value
                return value
            except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, never trusted
                path.unlink(missing_ok=True)
        self.misses += 1
        self.log.append((kind, key, "miss"))
        value = build()
        if path is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".tmp")
            os.close(fd)
            try:
                torch.save(value, tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        if self._memory is not None:
            self._memory[key] = value
        return value
