"""Content-addressed cache for derived artefacts (kNN graphs, adjacencies, masks).

Keys are sha256 digests of a JSON description of the artefact: its kind, its parameters
and the content hashes of every input it was built from. Artefacts live in a cache folder
(never beside the raw data), one file per key, written atomically. A masked run and an
unmasked run have different input hashes and therefore can never share an artefact.

An entry is a plain ``.npz`` (numeric arrays and a JSON layout, read with
``allow_pickle=False``): a cache folder may come from another machine or user, and loading
it must never run code. The values it holds are numeric arrays, scipy CSR matrices, and
lists, tuples and string-keyed dicts of them. An entry that cannot be read back as such
(damaged, foreign, or hostile) is rebuilt and overwritten, with a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

LAYOUT = "__layout__"  # the npz member holding the JSON description of the value


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
        path = self.root / f"{key}.npz" if self.root is not None else None
        if path is not None and path.is_file():
            try:
                value = load_entry(path)
                self.hits += 1
                self.log.append((kind, key, "hit"))
                if self._memory is not None:
                    self._memory[key] = value
                return value
            except Exception as exc:  # noqa: BLE001 - a damaged or foreign entry is rebuilt, never trusted
                print(f"warning: artefact cache: {path} cannot be loaded ({type(exc).__name__}: {exc}); "
                      f"rebuilding it", file=sys.stderr, flush=True)
        self.misses += 1
        self.log.append((kind, key, "miss"))
        value = build()
        if path is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".tmp")
            os.close(fd)
            try:
                save_entry(value, tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        if self._memory is not None:
            self._memory[key] = value
        return value


# --------------------------------------------------------------------------- entry format

def save_entry(value, path: str | Path) -> None:
    """Write a cache value as a plain .npz: its arrays plus a JSON layout saying how they nest."""
    arrays: dict[str, np.ndarray] = {}
    layout = _encode(value, arrays)
    arrays[LAYOUT] = np.frombuffer(json.dumps(layout).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_entry(path: str | Path):
    """Read a value written by ``save_entry``; ValueError (or an I/O error) for anything else."""
    with zipfile.ZipFile(path) as zf:  # stored members only: nothing can inflate beyond the file's size
        packed = [i.filename for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise ValueError(f"compressed member(s) {packed[:3]} (the cache writes none)")
    with np.load(path, allow_pickle=False) as z:
        if not hasattr(z, "files"):
            raise ValueError("not an .npz archive")
        arrays = {k: z[k] for k in z.files}  # object arrays raise here (allow_pickle=False)
    if LAYOUT not in arrays:
        raise ValueError(f"no {LAYOUT} member")
    layout = json.loads(arrays.pop(LAYOUT).tobytes().decode())
    return _decode(layout, arrays)


def _encode(value, arrays: dict) -> dict:
    def put(a: np.ndarray) -> str:
        if a.dtype.hasobject:
            raise TypeError("the artefact cache stores numeric arrays only, not object arrays")
        name = f"a{len(arrays)}"
        arrays[name] = a
        return name

    if isinstance(value, np.ndarray):
        return {"type": "array", "array": put(value)}
    if isinstance(value, sp.csr_matrix):
        return {"type": "csr", "shape": list(value.shape), "data": put(value.data),
                "indices": put(value.indices), "indptr": put(value.indptr)}
    if isinstance(value, (list, tuple)):
        return {"type": type(value).__name__, "items": [_encode(v, arrays) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"type": "dict", "items": {k: _encode(v, arrays) for k, v in value.items()}}
    raise TypeError(f"the artefact cache stores arrays, CSR matrices and lists/tuples/dicts of them, "
                    f"not {type(value).__name__}")


def _decode(layout, arrays: dict):
    if not isinstance(layout, dict):
        raise ValueError(f"a malformed layout entry {layout!r:.80}")
    kind = layout.get("type")

    def get(field: str) -> np.ndarray:
        name = layout.get(field)
        if not isinstance(name, str) or name not in arrays:
            raise ValueError(f"the layout names a missing array {name!r:.40}")
        return arrays[name]

    if kind == "array":
        return get("array")
    if kind == "csr":
        shape = layout.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int and n >= 0 for n in shape)):
            raise ValueError(f"a malformed CSR shape {shape!r:.40}")
        m = sp.csr_matrix((get("data"), get("indices"), get("indptr")), shape=tuple(shape))
        m.check_format(full_check=True)  # indices within the shape, indptr monotone
        return m
    if kind in ("list", "tuple") and isinstance(layout.get("items"), list):
        items = [_decode(v, arrays) for v in layout["items"]]
        return items if kind == "list" else tuple(items)
    if kind == "dict" and isinstance(layout.get("items"), dict):
        return {k: _decode(v, arrays) for k, v in layout["items"].items()}
    raise ValueError(f"a malformed layout entry of type {kind!r:.40}")
