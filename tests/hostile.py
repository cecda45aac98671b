"""Hostile pickles for the loader tests.

Every payload, if it were ever unpickled by a plain loader, would create ``sentinel`` (a
path the test puts inside its own tmp_path) and do nothing else; the tests assert that the
file never appears. ``test_hostile_files.test_payloads_are_live`` shows each one really does
create it when unpickled the unsafe way, so an absent sentinel means the loader refused.
"""
from __future__ import annotations

import builtins
import io
import logging
import os
import pickle
import shlex
import subprocess
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format


class Reduce:
    """An object whose pickle is the call ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(sentinel: Path) -> dict[str, object]:
    """Objects whose unpickling creates ``sentinel``, one per way in."""
    s = str(sentinel)
    return {
        "os.system": Reduce(os.system, f"touch {shlex.quote(s)}"),
        "builtins.eval": Reduce(builtins.eval, f"open({s!r}, 'w').close()"),
        "subprocess": Reduce(subprocess.call, ["touch", s]),
        # an importable class outside the allowed set, whose construction opens (creates) the file
        "class": Reduce(logging.FileHandler, s),
    }


def hand_written(sentinel: Path) -> dict[str, bytes]:
    """Pickles written opcode by opcode, one per way a pickle names and calls a callable."""
    cmd = f"touch {shlex.quote(str(sentinel))}".encode()
    return {
        # protocol 0: GLOBAL os.system, MARK, STRING, TUPLE, REDUCE
        "GLOBAL": b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        # protocol 0: INST calls the function with the marked arguments
        "INST": b"(S'" + cmd + b"'\nios\nsystem\n.",
        # protocol 4: STACK_GLOBAL from two strings, TUPLE1, REDUCE
        "STACK_GLOBAL": b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c" + bytes([len(cmd)]) + cmd + b"\x85R.",
        # OBJ: MARK, the class, its arguments, build an instance (this class creates the file)
        "OBJ": b"(clogging\nFileHandler\nS'" + str(sentinel).encode() + b"'\no.",
    }


def abuses() -> dict[str, bytes]:
    """Pickles that misuse what a mask file may hold (numpy's globals) or ask for outside objects."""
    return {
        # an allowed global through a refused opcode: NEWOBJ on numpy.ndarray
        "NEWOBJ": b"\x80\x02cnumpy\nndarray\n)\x81.",
        # the array reconstructor asked to build something other than an ndarray
        "reconstruct_other": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85C\x01b\x87R.",
        # BUILD with a slot state, setting an attribute on an allowed global
        "BUILD_attrs": b"\x80\x02cnumpy\ndtype\nN}X\x02\x00\x00\x00fnX\x01\x00\x00\x00xs\x86b.",
        # a structured dtype (whose fields could hold objects) through the dtype state
        "dtype_fields": b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00i8\x85R(K\x03X\x01\x00\x00\x00<N"
                        b"X\x01\x00\x00\x00a\x85}J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.",
        # an extension code resolves through copyreg's registry
        "EXT1": b"\x80\x02\x82\x01.",
        # a persistent id asks the loader for an outside object
        "PERSID": b"Pfoo\n.",
    }


def mask_pickles(sentinel: Path) -> dict[str, bytes]:
    """Pickled mask dicts carrying each payload: as a group, as the whole file, inside a nested
    object array; plus a nested object array of plain ids, the hand-written pickles and the
    abuses of numpy's globals."""
    out = {}
    for name, p in payloads(sentinel).items():
        out[f"group:{name}"] = pickle.dumps({"t": p, "v": np.array([1]), "all": np.array([2])}, protocol=3)
        out[f"top:{name}"] = pickle.dumps(p, protocol=4)
        out[f"nested:{name}"] = pickle.dumps({"t": np.array([p, 1], dtype=object)}, protocol=3)
    out["nested:plain"] = pickle.dumps({"t": np.array([np.array([0]), 1], dtype=object)}, protocol=3)
    out.update({f"opcodes:{k}": v for k, v in hand_written(sentinel).items()})
    out.update({f"abuse:{k}": v for k, v in abuses().items()})
    return out


def as_npy(pickled: bytes) -> bytes:
    """A pickle behind the header of a 0-d object array: the file np.save writes for a dict."""
    f = io.BytesIO()
    npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
    return f.getvalue() + pickled
