"""Hostile files: nothing in a data folder, a cache or a results folder is ever run.

Each hostile pickle (``hostile.py``) would create a sentinel file inside the test's tmp_path
if anything unpickled it the unsafe way (``test_payloads_are_live`` shows that it does). Every
loader must refuse it with an error naming the file, and the sentinel must never appear.
"""
import io
import json
import pickle
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from hostile import as_npy, hand_written, mask_pickles, payloads

from models.cache import ArtifactCache, load_entry, save_entry
from benchmarks.run.config import ConfigError, parse_sets
from benchmarks.run.ray_backend import RayBackend
from benchmarks.run.store import ResultStore
from data_prep import download as dl
from data_prep import manifest as manifest_module
from data_prep.dataset import load_folder, read_mask
from data_prep.errors import DataError, DownloadError
from data_prep.importing import import_dir
from data_prep.manifest import load_manifest
from data_prep.mask_files import read_mask_groups, write_mask_npz
from data_prep.provenance import read_source

ROOT = Path(__file__).resolve().parents[1]
ROWS = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2), (1, 1, 0), (1, 2, 0), (1, 0, 1), (1, 3, 2), (2, 3, 0), (2, 0, 1),
        (2, 1, 2)]
MASK = "missing_items_0.5.npy"
MASK_CASES = sorted(mask_pickles(Path("unused")))


@pytest.fixture
def sentinel(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a hostile payload ran"


def toy_folder(root: Path, name: str = "toy", features: bool = True) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / f"{name}.inter").write_text("userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{lab}\n" for u, i, lab in ROWS))
    if features:
        rng = np.random.default_rng(0)
        np.save(d / "image_feat.npy", rng.random((4, 5)).astype(np.float32))
        np.save(d / "text_feat.npy", rng.random((4, 3)).astype(np.float32))
    return d


# --------------------------------------------------------------------------- the payloads are real

@pytest.mark.parametrize("name", [*payloads(Path("x")), *hand_written(Path("x"))])
def test_payloads_are_live(tmp_path, name):
    """Unpickled the unsafe way, each payload creates its sentinel: so its absence elsewhere means refusal."""
    target = tmp_path / "PWNED"
    objs = payloads(target)
    raw = pickle.dumps(objs[name]) if name in objs else hand_written(target)[name]
    pickle.loads(raw)
    assert target.exists()


def test_the_old_mask_loader_ran_the_payload(tmp_path):
    target = tmp_path / "PWNED"
    path = tmp_path / MASK
    path.write_bytes(as_npy(mask_pickles(target)["group:os.system"]))
    np.load(path, allow_pickle=True)  # what data_prep.dataset did before
    assert target.exists()


# --------------------------------------------------------------------------- masks

@pytest.mark.parametrize("wrapped", [True, False], ids=["npy", "bare-pickle"])
@pytest.mark.parametrize("case", MASK_CASES)
def test_hostile_mask_is_refused(tmp_path, sentinel, case, wrapped):
    d = toy_folder(tmp_path / "data")
    raw = mask_pickles(sentinel)[case]
    (d / MASK).write_bytes(as_npy(raw) if wrapped else raw)
    with pytest.raises(DataError) as exc:
        load_folder(tmp_path / "data", "toy")
    msg = str(exc.value)
    assert str(d / MASK) in msg and "refused to load" in msg, msg


def test_hostile_mask_in_a_folder_without_features(tmp_path, sentinel):
    """The release's folders have no feature files: the mask decides the number of modalities."""
    d = toy_folder(tmp_path / "data", features=False)
    (d / MASK).write_bytes(as_npy(mask_pickles(sentinel)["top:builtins.eval"]))
    with pytest.raises(DataError, match="refused to load: the pickle references builtins.eval"):
        load_folder(tmp_path / "data", "toy")


@pytest.mark.parametrize("kind", ["object member", "pickle renamed"])
def test_hostile_plain_mask_is_refused(tmp_path, sentinel, kind):
    d = toy_folder(tmp_path / "data")
    path = d / "missing_items_0.5.npz"
    if kind == "object member":  # np.savez pickles object arrays; the reader never unpickles
        np.savez(path, t=np.array([payloads(sentinel)["os.system"]], dtype=object), v=np.array([1]))
    else:
        path.write_bytes(mask_pickles(sentinel)["group:subprocess"])
    with pytest.raises(DataError) as exc:
        load_folder(tmp_path / "data", "toy")
    assert str(path) in str(exc.value)


def test_run_all_refuses_a_hostile_mask_before_anything_runs(tmp_path, sentinel):
    """The reported case: a TikTok-format folder whose mask pickle calls os.system."""
    d = toy_folder(tmp_path / "data", name="tiktok", features=False)
    (d / "missing_items_0.6.npy").write_bytes(as_npy(mask_pickles(sentinel)["group:os.system"]))
    cmd = [sys.executable, "run_all.py", "--datasets", "tiktok", "--data-root", str(tmp_path / "data"),
           "--models", "LightGCN", "--set", "epochs=1", "--no-progress", "--results-dir", str(tmp_path / "res"),
           "--cache-dir", str(tmp_path / "cache")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stderr.startswith("error: ") and str(d / "missing_items_0.6.npy") in out.stderr
    assert "posix.system" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "res").exists()


def test_import_refuses_a_hostile_mask_and_writes_nothing(tmp_path, sentinel):
    d = toy_folder(tmp_path / "src")
    (d / MASK).write_bytes(as_npy(mask_pickles(sentinel)["nested:class"]))
    with pytest.raises(DataError, match="logging.FileHandler"):
        import_dir(tmp_path / "src", tmp_path / "data", log=None)
    assert not (tmp_path / "data").exists()


def test_unverified_download_of_a_hostile_mask_is_refused(tmp_path, sentinel, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    (served / MASK).write_bytes(as_npy(mask_pickles(sentinel)["top:subprocess"]))
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("sources:\n  web: {kind: url, title: web, url: 'https://example.org/{dataset}/{file}', page: p}\n"
                        f"datasets:\n  toy:\n    title: toy\n    files:\n      {MASK}: {{source: web, sha256: null}}\n")
    monkeypatch.setattr(manifest_module, "MANIFEST_PATH", manifest)
    monkeypatch.setattr(dl, "probe", lambda hosts, timeout=3.0: set(hosts))
    monkeypatch.setattr(dl, "fetch_url", lambda url, dest, known_sha256=None, timeout=60.0:
                        shutil.copyfile(served / url.rsplit("/", 1)[-1], dest))
    with pytest.raises(DownloadError, match="not valid") as exc:
        dl.download("toy", tmp_path / "data", allow_unverified=True, log=None)
    assert str(tmp_path / "data" / "toy" / MASK) in str(exc.value) and "subprocess.call" in str(exc.value)
    assert not (tmp_path / "data" / "toy" / MASK).exists()


def test_official_and_reference_masks_load_bit_identically(shared_data):
    release, reference = shared_data
    paths = sorted(release.glob("*/missing_items_*.npy")) + sorted(reference.glob("*/missing_items_*.npy"))
    assert len(paths) == 9  # 6 release files, 3 reference copies
    for path in paths:
        trusted = np.load(path, allow_pickle=True).item()  # these are the trusted release files
        got = read_mask_groups(path)
        assert list(got) == list(trusted), path
        for key, ids in trusted.items():
            assert (got[key].dtype, got[key].shape) == (ids.dtype, ids.shape) and got[key].tobytes() == ids.tobytes()
        buf = io.BytesIO()  # the plain format holds the same ids
        write_mask_npz(buf, got)
        with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:
            assert sorted(z.files) == sorted(trusted) and all(np.array_equal(z[k], trusted[k]) for k in trusted)
    for path in sorted(reference.glob("tiktok/missing_items_*.npy")):
        checked = read_mask(path, 6710, 3)
        trusted = np.load(path, allow_pickle=True).item()
        assert all(np.array_equal(checked[k], trusted[k]) for k in trusted)


# --------------------------------------------------------------------------- the artefact cache

def _graph() -> sp.csr_matrix:
    return sp.csr_matrix(np.array([[0, 1.5, 0], [1.5, 0, 2.0], [0, 2.0, 0]], np.float32))


def _hostile_entry(case: str, path: Path, sentinel: Path) -> None:
    objs = payloads(sentinel)
    if case.startswith("pickle:"):  # what torch.save / pickle.dump wrote before
        path.write_bytes(pickle.dumps({"graph": objs[case.split(":")[1]]}))
    elif case.startswith("object member:"):
        np.savez(path, __layout__=np.frombuffer(b'{"type": "array", "array": "a0"}', np.uint8),
                 a0=np.array([objs[case.split(":")[1]]], dtype=object))
    elif case == "bad csr":  # plain arrays, but indices outside the matrix
        np.savez(path, __layout__=np.frombuffer(json.dumps({"type": "csr", "shape": [3, 3], "data": "a0",
                                                            "indices": "a1", "indptr": "a2"}).encode(), np.uint8),
                 a0=np.ones(2, np.float32), a1=np.array([0, 99], np.int32), a2=np.array([0, 1, 2, 2], np.int32))
    elif case == "missing array":
        np.savez(path, __layout__=np.frombuffer(b'{"type": "array", "array": "a7"}', np.uint8))
    elif case == "compressed":
        np.savez_compressed(path, __layout__=np.frombuffer(b'{"type": "array", "array": "a0"}', np.uint8),
                            a0=np.zeros(10 ** 6))
    elif case == "truncated":
        save_entry(_graph(), path)
        path.write_bytes(path.read_bytes()[:100])


CACHE_CASES = [*(f"pickle:{n}" for n in payloads(Path("x"))), *(f"object member:{n}" for n in payloads(Path("x"))),
               "bad csr", "missing array", "compressed", "truncated"]


@pytest.mark.parametrize("case", CACHE_CASES)
def test_hostile_cache_entry_is_rebuilt_not_trusted(tmp_path, sentinel, capsys, case):
    root = tmp_path / "cache"
    root.mkdir()
    cache = ArtifactCache(root)
    path = root / f"{cache.key('g', {'k': 1})}.npz"
    _hostile_entry(case, path, sentinel)
    built = []
    value = cache.get_or_build("g", {"k": 1}, lambda: built.append(1) or _graph())
    assert built == [1] and (value != _graph()).nnz == 0
    err = capsys.readouterr().err
    assert f"warning: artefact cache: {path} cannot be loaded" in err and "rebuilding" in err
    # overwritten by a good entry: a fresh cache reads it back without building
    again = ArtifactCache(root)
    back = again.get_or_build("g", {"k": 1}, lambda: pytest.fail("a good entry was rebuilt"))
    assert isinstance(back, sp.csr_matrix) and (back != _graph()).nnz == 0 and again.hits == 1


def test_cache_entries_round_trip_what_the_cache_holds(tmp_path):
    value = {"masks": {"t": np.array([3, 1], np.int64), "all": np.zeros(0, np.int64)},
             "graphs": [_graph(), sp.csr_matrix((2, 5), dtype=np.float32)],
             "edges": (np.array([[0, 1], [2, 3]], np.int64),)}
    save_entry(value, tmp_path / "e.npz")
    back = load_entry(tmp_path / "e.npz")
    assert list(back) == ["masks", "graphs", "edges"] and list(back["masks"]) == ["t", "all"]
    for k, ids in value["masks"].items():
        assert back["masks"][k].dtype == ids.dtype and np.array_equal(back["masks"][k], ids)
    for g, h in zip(value["graphs"], back["graphs"]):
        assert type(h) is sp.csr_matrix and h.dtype == g.dtype and h.shape == g.shape and (g != h).nnz == 0
    assert isinstance(back["edges"], tuple) and np.array_equal(back["edges"][0], value["edges"][0])
    with pytest.raises(TypeError, match="object arrays"):
        save_entry(np.array([{"a": 1}], dtype=object), tmp_path / "o.npz")
    with pytest.raises(TypeError, match="not set"):
        save_entry({1, 2}, tmp_path / "s.npz")


# --------------------------------------------------------------------------- results store and Ray

def test_hostile_per_user_file_is_refused(tmp_path, sentinel):
    store = ResultStore(tmp_path)
    store.per_user_dir.mkdir()
    path = store.per_user_dir / "abc123.npz"
    np.savez(path, users=np.arange(3), recall_at_20=np.array([payloads(sentinel)["builtins.eval"]], dtype=object))
    with pytest.raises(DataError) as exc:
        store.load_per_user("abc123")
    assert str(path) in str(exc.value) and "plain arrays" in str(exc.value)


def test_job_ids_are_names_not_paths(tmp_path):
    store = ResultStore(tmp_path / "res")
    np.savez(tmp_path / "elsewhere.npz", users=np.arange(3))
    for bad in ("../elsewhere", "/tmp/x", "a/b", "", "a\x00b", 7):
        with pytest.raises(DataError, match="not a plain name"):
            store.load_per_user(bad)
        with pytest.raises(DataError, match="not a plain name"):
            store.save_per_user(bad, np.arange(3), {})
    assert not (tmp_path / "res").exists()


def test_ray_driver_chooses_where_per_user_files_go(tmp_path):
    """A record coming back from a node names a path; the driver writes under its own job id."""
    spec = {"job_id": "0123abcd", "results_dir": str(tmp_path / "res")}
    rec = {"job_id": "0123abcd", "status": "ok", "per_user_file": "../../outside.npz"}
    fake_ray = types.SimpleNamespace(exceptions=None, get=lambda ref: (dict(rec), {"per_user_file": b"per-user bytes"}))
    got = RayBackend()._collect(fake_ray, None, spec)
    assert got["per_user_file"] == "per_user/0123abcd.npz"
    assert (tmp_path / "res" / "per_user" / "0123abcd.npz").read_bytes() == b"per-user bytes"
    assert not (tmp_path / "outside.npz").exists() and not (tmp_path.parent / "outside.npz").exists()


# --------------------------------------------------------------------------- YAML

def _yaml_payload(sentinel: Path) -> str:
    return f"!!python/object/apply:os.system [{json.dumps('touch ' + shlex.quote(str(sentinel)))}]"


def test_yaml_payload_is_live(tmp_path):
    target = tmp_path / "PWNED"
    yaml.unsafe_load(_yaml_payload(target))
    assert target.exists()


def test_yaml_payloads_are_refused(tmp_path, sentinel, monkeypatch):
    with pytest.raises(ConfigError, match="--set epochs"):
        parse_sets([f"epochs={_yaml_payload(sentinel)}"])
    d = toy_folder(tmp_path / "data")
    (d / "SOURCE").write_text(f"kind: {_yaml_payload(sentinel)}\n")
    assert read_source(d) == {}  # an unreadable SOURCE gives no label
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(f"sources: {_yaml_payload(sentinel)}\ndatasets: {{}}\n")
    with pytest.raises(DataError, match="cannot read the manifest") as exc:
        load_manifest(manifest)
    assert str(manifest) in str(exc.value)
