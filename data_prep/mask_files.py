"""Reading and writing missing-modality mask files without ever running code from them.

Two formats hold the same thing, a mapping from missing-modality group (``t``, ``v``, ``all``,
...) to item ids:

* ``missing_items_<ratio>.npy``, the official release's format: a ``.npy`` file of a 0-d
  object array whose item is a dict of numpy integer arrays (or a bare pickle of such a
  dict). Loading it with ``np.load(allow_pickle=True)`` would run whatever the pickle asks
  for, so it is read by a restricted unpickler instead: the opcodes are checked before any
  object is built, the only globals it resolves are numpy's array, dtype and scalar
  reconstructors (plus the latin-1 encoder protocol-2 pickles use for bytes), and even
  those are never called: each resolves to a stand-in that records its arguments. Numpy
  arrays are then built here from plain integers and bytes after checking dtype, shape and
  size. Anything else is refused with a DataError naming the file.
* ``missing_items_<ratio>.npz``: one integer array per group, no pickle at all. This is what
  ``python -m data_prep import`` writes (byte-for-byte deterministic).
"""
from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from .errors import DataError
from .modalities import MASK_KEYS

MASK_FILE_RE = re.compile(r"^missing_items_(.+)\.(npy|npz)$")
GROUP_ORDER = MASK_KEYS[3]  # every group name, in the order the npz writer uses

# Opcodes a pickled dict of numpy arrays needs: data, containers, memo, and the two that
# apply a (stand-in) global. Everything else (INST, OBJ, NEWOBJ, PERSID, EXT*, buffers, sets...)
# never occurs in such a file and is refused before unpickling starts.
_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
})
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
# Array element types a mask may hold; object arrays only as the .npy file's 0-d wrapper.
_NUMERIC_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})
_OBJECT_DTYPES = frozenset({"O4", "O8"})
_NPZ_MEMBER_LIMIT = 1 << 30  # bytes per group when the number of items is not known


class _Refused(Exception):
    """The pickle asks for something a mask file never holds."""


# --------------------------------------------------------------------------- stand-ins

class _Frozen:
    """No attributes can be set from the pickle (BUILD with a slot state would try)."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise _Refused(f"the pickle tries to set attribute {name!r} on {self!r}")


class _Global(_Frozen):
    """What an allowed global resolves to: calling it builds a stand-in, never the real thing."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args):
        if self.fn is None:
            raise _Refused(f"the pickle calls {self.name}")
        return self.fn(*args)

    def __repr__(self):
        return self.name


class _DType(_Frozen):
    """Stand-in for a numpy dtype: a plain numeric or object type, nothing structured."""

    __slots__ = ("code", "order", "_set")

    def __init__(self, code, align=False, copy=False):
        if not isinstance(code, str) or code not in _NUMERIC_DTYPES | _OBJECT_DTYPES:
            raise _Refused(f"dtype {code!r} (a mask holds integer ids)")
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "order", "=")
        object.__setattr__(self, "_set", False)

    def __setstate__(self, state):
        if self._set or not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise _Refused(f"an unexpected dtype state {_short(state)}")
        if state[1] not in ("<", ">", "|", "=") or any(s is not None for s in state[2:5]):
            raise _Refused(f"a structured or sub-array dtype state {_short(state)}")
        object.__setattr__(self, "order", state[1] if state[1] in "<>" else "=")
        object.__setattr__(self, "_set", True)

    @property
    def is_object(self) -> bool:
        return self.code in _OBJECT_DTYPES

    def real(self) -> np.dtype:
        return np.dtype(self.order + self.code)

    def __repr__(self):
        return f"dtype({self.order}{self.code})"


class _Array(_Frozen):
    """Stand-in for an ndarray: shape, dtype and raw bytes (numeric) or a list (object)."""

    __slots__ = ("shape", "dtype", "fortran", "data")

    def __init__(self):
        for k in self.__slots__:
            object.__setattr__(self, k, None)

    def __setstate__(self, state):
        if self.dtype is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused(f"an unexpected array state {_short(state)}")
        shape, dtype, fortran, data = state[-4:]
        if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
            raise _Refused(f"an array shape {_short(shape)}")
        if not isinstance(dtype, _DType) or not isinstance(fortran, bool):
            raise _Refused(f"an array state {_short(state)}")
        size = math.prod(shape)
        if dtype.is_object:
            if not isinstance(data, list) or len(data) != size:
                raise _Refused("an object array whose items are not a list of its size")
        elif not isinstance(data, (bytes, bytearray)) or len(data) != size * dtype.real().itemsize:
            raise _Refused(f"a {dtype} array of shape {shape} whose data is not {size} items of raw bytes")
        for k, v in zip(self.__slots__, (shape, dtype, fortran, data)):
            object.__setattr__(self, k, v)

    def real(self) -> np.ndarray:
        """The numeric array, built by numpy from the checked bytes."""
        if self.dtype is None:
            raise _Refused("an array without state")
        if self.dtype.is_object:
            raise _Refused("a nested object array (mask groups must be integer id arrays)")
        x = np.frombuffer(bytes(self.data), dtype=self.dtype.real())
        return x.reshape(self.shape, order="F" if self.fortran else "C").copy()


class _Scalar(_Frozen):
    """Stand-in for a numpy scalar (an element of a list of ids)."""

    __slots__ = ("value",)

    def __init__(self, dtype, data=None):
        if not isinstance(dtype, _DType) or dtype.is_object or not isinstance(data, bytes) \
                or len(data) != dtype.real().itemsize:
            raise _Refused(f"a numpy scalar of {dtype!r} from {_short(data)}")
        object.__setattr__(self, "value", np.frombuffer(data, dtype=dtype.real())[0].item())


def _reconstruct(subtype, shape, typecode):
    # numpy's pickles create an empty array here and fill it in with BUILD (_Array.__setstate__)
    if not (isinstance(subtype, _Global) and subtype.name == "numpy.ndarray") or shape != (0,) \
            or typecode not in (b"b", "b"):
        raise _Refused(f"an array reconstruction from {_short((subtype, shape, typecode))}")
    return _Array()


def _frombuffer(buf, dtype, shape, order):
    # protocol-5 pickles of numpy arrays
    arr = _Array()
    if not isinstance(dtype, _DType) or dtype.is_object or order not in ("C", "F"):
        raise _Refused(f"an array from buffer with {_short((dtype, shape, order))}")
    arr.__setstate__((1, shape, dtype, order == "F", buf))
    return arr


def _latin1(text, encoding="latin1"):
    # protocol-2 pickles spell bytes as codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {_short((text, encoding))}")
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], object]:
    out = {("numpy", "ndarray"): None, ("numpy", "dtype"): _DType, ("_codecs", "encode"): _latin1}
    for mod in _NUMPY_CORE:
        out[(mod, "_reconstruct")] = _reconstruct
        out[(mod, "scalar")] = _Scalar
    for mod in _NUMPY_NUMERIC:
        out[(mod, "_frombuffer")] = _frombuffer
    return out


_ALLOWED = _allowed()


class _MaskUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise _Refused(f"the pickle references {module}.{name}")
        return _Global(f"{module}.{name}", _ALLOWED[(module, name)])

    def persistent_load(self, pid):
        raise _Refused("the pickle asks for a persistent object")


def _short(obj, limit: int = 80) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- reading

def _check_opcodes(data: bytes) -> None:
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name not in _OPCODES:
                raise _Refused(f"the pickle uses opcode {op.name} (at byte {pos})")
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                if (module, name) not in _ALLOWED:
                    raise _Refused(f"the pickle references {module}.{name}")
    except ValueError as exc:  # unknown opcode, truncated argument, no STOP
        raise _Refused(f"not a valid pickle ({exc})") from None


def _unpickle(data: bytes):
    _check_opcodes(data)  # before any object is built
    try:
        return _MaskUnpickler(io.BytesIO(data)).load()
    except _Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - a stand-in called wrongly, a truncated or odd pickle
        raise _Refused(f"an unexpected pickle ({type(exc).__name__}: {exc})") from None


def _group_ids(key, value) -> np.ndarray:
    if isinstance(value, _Array):
        return value.real()
    if isinstance(value, (list, tuple)):
        items = []
        for x in value:
            if isinstance(x, _Scalar):
                x = x.value
            if type(x) not in (int, float, bool):
                raise DataError(None, f"group {key!r} holds {type(x).__name__} items (expected a flat list of "
                                      f"item ids)")
            items.append(x)
        return np.asarray(items) if items else np.zeros(0, np.int64)
    raise DataError(None, f"group {key!r} is a {type(value).__name__} (expected an array or list of item ids)")


def _npy_header(f) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy header; ValueError for anything unreadable."""
    try:
        version = npy_format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version}")
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        return read_header(f)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's header parser can fail in tokenize, etc.
        raise ValueError(f"unreadable .npy header ({type(exc).__name__}: {exc})") from None


def _read_pickled(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        head = f.read(6)
        f.seek(0)
        if head == npy_format.MAGIC_PREFIX:
            shape, _, dtype = _npy_header(f)
            if dtype != object or shape != ():
                raise DataError(path, f"expected a pickled dict from missing-modality group to item ids (a 0-d "
                                      f"object array), got a {dtype} array of shape {shape}")
        data = f.read()
    try:
        obj = _unpickle(data)
        if isinstance(obj, _Array) and obj.dtype is not None and obj.dtype.is_object and obj.shape == ():
            obj = obj.data[0]  # the 0-d object array np.save writes around the dict
    except _Refused as exc:
        raise DataError(path, f"refused to load: {exc}; a mask file holds only a dict of integer id arrays or "
                              f"lists (nothing in the file was run)") from None
    if not isinstance(obj, dict):
        what = "ndarray" if isinstance(obj, _Array) else type(obj).__name__
        raise DataError(path, f"expected a pickled dict from missing-modality group to item ids, got {what}")
    groups = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise DataError(path, f"mask group names must be strings, got {_short(key)}")
        try:
            groups[key] = _group_ids(key, value)
        except _Refused as exc:
            raise DataError(path, f"refused to load group {key!r}: {exc}") from None
        except DataError as exc:
            raise DataError(path, exc.problem) from None
        except ValueError as exc:
            raise DataError(path, f"group {key!r} is not an array of item ids: {exc}") from None
    return groups


def _read_npz(path: Path, n_items: int | None) -> dict[str, np.ndarray]:
    # ids are unique and below n_items, so a member never needs more than 8 bytes per item
    limit = 8 * n_items + 4096 if n_items is not None else _NPZ_MEMBER_LIMIT
    try:
        with zipfile.ZipFile(path) as zf:
            groups = {}
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                if not info.filename.endswith(".npy") or not key or "/" in key:
                    raise DataError(path, f"unexpected member {info.filename!r} (expected <group>.npy per group)")
                if info.file_size > limit:
                    raise DataError(path, f"group {key!r} is {info.file_size} bytes uncompressed, more than "
                                          f"{limit} (an id array of every item)")
                try:
                    groups[key] = _plain_array(zf.read(info))
                except ValueError as exc:  # object arrays, bad headers, short data
                    raise DataError(path, f"group {key!r} is not a plain numeric array: {exc}") from None
            return groups
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, unsupported zip features (NotImplementedError), I/O
        raise DataError(path, f"cannot be read as an .npz archive of item id arrays: {exc}") from None


def _plain_array(raw: bytes) -> np.ndarray:
    """A numeric array from the bytes of a .npy file, its size checked against the bytes present."""
    f = io.BytesIO(raw)
    shape, fortran, dtype = _npy_header(f)
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"dtype {dtype} (a mask holds integer ids, never objects)")
    data = f.read()
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"the header promises shape {shape} of {dtype}, the data has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def read_mask_groups(path: str | Path, n_items: int | None = None) -> dict[str, np.ndarray]:
    """The groups of a mask file (either format) as arrays, unchecked; DataError if unreadable.

    ``n_items`` (if known) bounds how much an ``.npz`` member may decompress to.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.suffix == ".npz":
        return _read_npz(path, n_items)
    try:
        return _read_pickled(path)
    except (OSError, EOFError) as exc:
        raise DataError(path, f"cannot be read as a .npy file: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(path, f"cannot be read as a .npy file: {exc}") from None


# --------------------------------------------------------------------------- writing

def write_mask_npz(f, groups: dict[str, np.ndarray]) -> None:
    """Write groups to an open binary file as an ``.npz`` of int64 arrays, no pickle.

    Fixed member order, timestamps and no compression: the same groups give the same bytes.
    """
    order = sorted(groups, key=lambda k: (GROUP_ORDER.index(k) if k in GROUP_ORDER else len(GROUP_ORDER), k))
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in order:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            npy_format.write_array(buf, np.ascontiguousarray(groups[key], dtype=np.int64), allow_pickle=False)
            zf.writestr(info, buf.getvalue())
