"""Fuzzed loaders: random corruptions of .inter, feature and mask files, and hostile pickles.

Each corruption is one that changes the meaning of the file, so it must be refused with a
DataError naming the file; nothing may surface as a traceback from inside numpy or pandas,
and nothing may be accepted silently. Reordering columns (header included) is not a
corruption: it must load to the same data. A hostile mask pickle (``hostile.py``) must be
refused without its payload running; a randomly mutated mask pickle either loads as valid
masks or is refused, never anything else.
"""
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile import as_npy, mask_pickles
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep.dataset import load_folder
from data_prep.errors import DataError

ROWS = [(u, i, lab) for u in range(6) for i, lab in ((u % 5, 0), ((u + 1) % 5, 0), ((u + 2) % 5, 1), ((u + 3) % 5, 2))]
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    d = tmp_path_factory.mktemp("tpl") / "toy"
    d.mkdir()
    (d / "toy.inter").write_text("userID\titemID\tx_label\trating\n" +
                                 "".join(f"{u}\t{i}\t{lab}\t5\n" for u, i, lab in ROWS))
    rng = np.random.default_rng(0)
    np.save(d / "image_feat.npy", rng.random((5, 6)).astype(np.float32))
    np.save(d / "text_feat.npy", rng.random((5, 4)).astype(np.float32))
    np.save(d / "missing_items_0.4.npy", {"t": np.array([0]), "v": np.array([1]), "all": np.array([2])},
            allow_pickle=True)
    load_folder(d.parent, "toy")  # the template itself is valid
    return d


_counter = [0]


def fresh(template, tmp_path_factory):
    _counter[0] += 1
    root = tmp_path_factory.mktemp(f"f{_counter[0]}")
    shutil.copytree(template, root / "toy")
    return root, root / "toy"


def refused(root, fname):
    with pytest.raises(DataError) as exc:
        load_folder(root, "toy")
    assert fname in str(exc.value), str(exc.value)


@FUZZ
@given(data=st.data())
def test_truncated_inter(template, tmp_path_factory, data):
    root, d = fresh(template, tmp_path_factory)
    raw = (d / "toy.inter").read_bytes()
    line_ends = {i for i, b in enumerate(raw) if b == ord("\n")}
    # cut strictly inside a row (never right before its newline, which would leave a valid file)
    cut = data.draw(st.integers(1, len(raw) - 2).filter(lambda c: c not in line_ends and c - 1 not in line_ends
                                                         and c + 1 not in line_ends))
    (d / "toy.inter").write_bytes(raw[:cut])
    refused(root, "toy.inter")


@FUZZ
@given(row=st.integers(0, len(ROWS) - 1), field=st.integers(0, 2), junk=st.binary(min_size=1, max_size=12).filter(
    # at least one byte no number parser accepts (whitespace around a number is harmless)
    lambda b: any(c >= 0x80 or (chr(c).isalpha() and chr(c) not in "eE") or chr(c) in "#$%&@!?/*,;:" for c in b)))
def test_garbage_in_inter(template, tmp_path_factory, row, field, junk):
    root, d = fresh(template, tmp_path_factory)
    lines = (d / "toy.inter").read_bytes().split(b"\n")
    cells = lines[row + 1].split(b"\t")
    cells[field] = junk + cells[field]
    lines[row + 1] = b"\t".join(cells)
    (d / "toy.inter").write_bytes(b"\n".join(lines))
    refused(root, "toy.inter")


@FUZZ
@given(col=st.sampled_from(["userID", "itemID", "x_label"]), value=st.sampled_from(["nan", "", "1e400", "-3", "2.5",
                                                                                      "99999999999999999999999"]),
       row=st.integers(0, len(ROWS) - 1))
def test_bad_cell_in_inter(template, tmp_path_factory, col, value, row):
    root, d = fresh(template, tmp_path_factory)
    lines = (d / "toy.inter").read_text().splitlines()
    cells = lines[row + 1].split("\t")
    cells[["userID", "itemID", "x_label"].index(col)] = value
    lines[row + 1] = "\t".join(cells)
    (d / "toy.inter").write_text("\n".join(lines) + "\n")
    refused(root, "toy.inter")


@FUZZ
@given(perm=st.permutations([0, 1, 2, 3]))
def test_shuffled_columns_load_the_same(template, tmp_path_factory, perm):
    root, d = fresh(template, tmp_path_factory)
    base = load_folder(template.parent, "toy")
    lines = [line.split("\t") for line in (d / "toy.inter").read_text().splitlines()]
    (d / "toy.inter").write_text("".join("\t".join(cells[p] for p in perm) + "\n" for cells in lines))
    ds = load_folder(root, "toy")
    assert (ds.inter.users == base.inter.users).all() and (ds.inter.items == base.inter.items).all()
    assert (ds.inter.labels == base.inter.labels).all()


@FUZZ
@given(kind=st.sampled_from(["truncate", "garbage", "strings", "object", "1d", "3d", "transpose", "nan", "inf",
                             "empty", "extra_rows"]), fname=st.sampled_from(["image_feat.npy", "text_feat.npy"]),
       cut=st.floats(0.05, 0.95))
def test_corrupt_features(template, tmp_path_factory, kind, fname, cut):
    root, d = fresh(template, tmp_path_factory)
    path = d / fname
    x = np.load(path)
    if kind == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[:max(1, int(cut * len(raw)))])
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 3)
    elif kind == "strings":
        np.save(path, x.astype(str))
    elif kind == "object":
        np.save(path, np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    elif kind == "1d":
        np.save(path, x[:, 0])
    elif kind == "3d":
        np.save(path, x[:, :, None])
    elif kind == "transpose":
        np.save(path, x.T)
    elif kind in ("nan", "inf"):
        x[int(cut * 4), 0] = np.nan if kind == "nan" else -np.inf
        np.save(path, x)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "extra_rows":
        np.save(path, np.vstack([x, x]))
    refused(root, fname)


@FUZZ
@given(kind=st.sampled_from(["list", "int", "str", "huge", "negative", "garbage", "truncated", "float_ids",
                             "nested", "unknown_key"]))
def test_corrupt_masks(template, tmp_path_factory, kind):
    root, d = fresh(template, tmp_path_factory)
    path = d / "missing_items_0.4.npy"
    payload = {"list": [1, 2], "int": 7, "str": "t,v", "huge": {"t": np.array([10 ** 12])},
               "negative": {"v": np.array([-1])}, "float_ids": {"t": np.array([0.5])},
               "nested": {"t": [[0, 1], [2]]}, "unknown_key": {"x": np.array([0])}}.get(kind)
    if kind == "garbage":
        path.write_bytes(b"\x93NUMPY garbage \x00\xff" * 4)
    elif kind == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    refused(root, "missing_items_0.4.npy")


@FUZZ
@given(case=st.sampled_from(sorted(mask_pickles(Path("x")))), wrapped=st.booleans(),
       ratio=st.sampled_from(["0.4", "0.9"]))
def test_hostile_mask_pickles(template, tmp_path_factory, case, wrapped, ratio):
    root, d = fresh(template, tmp_path_factory)
    sentinel = root / "PWNED"
    raw = mask_pickles(sentinel)[case]
    (d / f"missing_items_{ratio}.npy").write_bytes(as_npy(raw) if wrapped else raw)
    refused(root, f"missing_items_{ratio}.npy")
    assert not sentinel.exists()


@FUZZ
@given(data=st.data(), n=st.integers(1, 4))
def test_mutated_mask_pickles_load_or_are_refused(template, tmp_path_factory, data, n):
    root, d = fresh(template, tmp_path_factory)
    path = d / "missing_items_0.4.npy"
    raw = bytearray(path.read_bytes())
    for _ in range(n):  # overwrite, insert or delete single bytes anywhere (header included)
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw.insert(i, data.draw(st.integers(0, 255)))
        else:
            del raw[i]
    path.write_bytes(bytes(raw))
    try:
        ds = load_folder(root, "toy")
    except DataError as exc:
        assert "missing_items_0.4.npy" in str(exc), str(exc)
    else:  # a mutation that kept a valid mask (an id changed within range, say): it passed every check
        assert set(ds.masks["0.4"]) == {"t", "v", "all"}
