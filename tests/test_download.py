"""Tests of getting dataset folders (data_prep.download, .importing, .provenance, .manifest) and the
``python -m data_prep`` CLI. No network: the fetch functions and the connectivity probe are replaced,
or talk to a server on 127.0.0.1."""
from __future__ import annotations

import http.server
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from data_prep import download as dl
from data_prep import manifest as manifest_module
from data_prep import network
from data_prep.__main__ import main
from data_prep.dataset import load_folder, mask_digest, sha256_file
from data_prep.errors import (ChecksumError, DataError, DownloadError, OfflineError, UnavailableError,
                              UnknownDatasetError, UnverifiedError)
from data_prep.importing import import_dir
from data_prep.manifest import load_manifest
from data_prep.provenance import file_hashes, read_checksums, read_source, verify
from data_prep.shared import reference_root, release_root

RELEASE = release_root()
REFERENCE = reference_root()
TIKTOK_SMALL = ("tiktok.inter", "tiktok_del.inter", "missing_items_0.6.npy", "missing_items_0.75.npy")
# what an import writes for them: the pickled masks as plain .npz
TIKTOK_IMPORTED = ("tiktok.inter", "tiktok_del.inter", "missing_items_0.6.npz", "missing_items_0.75.npz")

needs_shared = pytest.mark.usefixtures("shared_data")  # skipped where ../shared is absent, failed in CI


# --------------------------------------------------------------------------- helpers

def _no_network(monkeypatch, reachable=True):
    """Replace the probe and both fetchers; fetchers fail the test unless replaced again."""
    monkeypatch.setattr(dl, "probe", lambda hosts, timeout=3.0: set(hosts) if reachable else set())

    def forbidden(*args, **kwargs):
        raise AssertionError(f"unexpected fetch {args}")

    monkeypatch.setattr(dl, "fetch_url", forbidden)
    monkeypatch.setattr(dl, "fetch_gdrive", forbidden)


def _release_fetcher(calls, mutate=None):
    """A fetch_url that 'downloads' from the shared release copies; mutate(name, bytes) -> bytes."""

    def fetch(url, dest, known_sha256=None, timeout=60.0):
        ds, name = url.rsplit("/", 2)[-2:]
        calls.append(name)
        data = (RELEASE / ds / name).read_bytes()
        if mutate is not None:
            data = mutate(name, data)
        Path(dest).write_bytes(data)
        return dest

    return fetch


def _leftovers(folder: Path) -> list[str]:
    """Temporary files or folders the tool may have left behind."""
    if not folder.exists():
        return []
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".part")]


def _copy_small_tiktok(dst_root: Path) -> Path:
    folder = dst_root / "tiktok"
    folder.mkdir(parents=True)
    for name in TIKTOK_SMALL:
        shutil.copyfile(RELEASE / "tiktok" / name, folder / name)
    return folder


def _flip_label(path: Path) -> None:
    """Change the x_label of the last row (still a valid file, different bytes)."""
    data = bytearray(path.read_bytes())
    i = len(data.rstrip(b"\n")) - 1
    data[i] = ord("1") if data[i] != ord("1") else ord("2")
    path.write_bytes(bytes(data))


def _toy_manifest(tmp_path: Path, url: str = "https://example.org/{dataset}/{file}") -> tuple[Path, Path]:
    """A tiny valid dataset 'toy' served from src/, and a manifest describing it."""
    src = tmp_path / "served" / "toy"
    src.mkdir(parents=True)
    rows = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{lab}" for u, i, lab in
                                          [(0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 2, 0), (2, 3, 0), (2, 0, 0),
                                           (0, 2, 1), (1, 3, 1), (2, 1, 1), (0, 3, 2), (1, 0, 2), (2, 2, 2)]]
    (src / "toy.inter").write_text("\n".join(rows) + "\n")
    np.save(src / "missing_items_0.5.npy", {"t": np.array([0]), "v": np.array([1]), "all": np.array([], dtype=np.int64)},
            allow_pickle=True)
    rng = np.random.default_rng(0)
    np.save(src / "image_feat.npy", rng.random((4, 8), dtype=np.float32))
    np.save(src / "text_feat.npy", rng.random((4, 6), dtype=np.float32))
    inter, mask = src / "toy.inter", src / "missing_items_0.5.npy"
    text = f"""
sources:
  web: {{kind: url, title: toy web source, url: "{url}", page: "{url}"}}
  drive: {{kind: gdrive-folder, title: toy drive folder, folder_id: TOYFOLDER, path: "{{dataset}}/{{file}}",
          page: https://drive.google.com/drive/folders/TOYFOLDER}}
datasets:
  toy:
    title: toy
    files:
      toy.inter: {{source: web, sha256: {sha256_file(inter)}, size: {inter.stat().st_size}}}
      missing_items_0.5.npy: {{source: web, sha256: {sha256_file(mask)}, size: {mask.stat().st_size}}}
      image_feat.npy: {{source: drive, sha256: null}}
      text_feat.npy: {{source: drive, sha256: null}}
"""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(text)
    return manifest, src


def _toy_fetchers(monkeypatch, src: Path, calls: list):
    def fetch_url(url, dest, known_sha256=None, timeout=60.0):
        calls.append(url.rsplit("/", 1)[-1])
        shutil.copyfile(src / url.rsplit("/", 1)[-1], dest)
        return dest

    def fetch_gdrive(folder_id, rel_path, dest, timeout=60.0):
        assert folder_id == "TOYFOLDER" and rel_path.startswith("toy/")
        calls.append(rel_path.split("/")[-1])
        shutil.copyfile(src / rel_path.split("/")[-1], dest)
        return dest

    monkeypatch.setattr(dl, "fetch_url", fetch_url)
    monkeypatch.setattr(dl, "fetch_gdrive", fetch_gdrive)


# --------------------------------------------------------------------------- manifest

@needs_shared
def test_manifest_matches_the_release_copies():
    m = load_manifest()
    assert set(m.datasets) == {"baby", "sports", "clothing", "elec", "tiktok"}
    for ds in m.datasets.values():
        shipped = {p.name for p in (RELEASE / ds.name).iterdir()}
        with_hash = {n for n, fe in ds.files.items() if fe.sha256}
        assert shipped == with_hash, ds.name
        for name in shipped:
            fe = ds.files[name]
            sha, blob = file_hashes(RELEASE / ds.name / name, git_blob=True)
            assert (sha, blob, (RELEASE / ds.name / name).stat().st_size) == (fe.sha256, fe.git_blob_sha1, fe.size)
            if name.startswith("missing_items_"):  # the content hash, from the trusted release file
                trusted = np.load(RELEASE / ds.name / name, allow_pickle=True).item()
                assert fe.mask_sha256 == mask_digest(trusted)
            else:
                assert fe.mask_sha256 is None
            assert fe.source.commit == "cd8f00db1fd927738c1cf87b1abe40493ae0ec70"
            assert fe.source.file_url(ds.name, name).startswith(
                "https://raw.githubusercontent.com/ptkjw1997/DGMRec/cd8f00db1fd927738c1cf87b1abe40493ae0ec70/data/masks/")
    for ds in ("baby", "sports", "clothing", "elec"):  # features: MMRec Drive folder, hash unknown
        for name in ("image_feat.npy", "text_feat.npy"):
            fe = m.datasets[ds].files[name]
            assert fe.source.kind == "gdrive-folder" and fe.sha256 is None
        assert m.datasets[ds].files[f"{ds}.inter"].git_blob_sha1
    assert not m.datasets["tiktok"].files["audio_feat.npy"].public


# --------------------------------------------------------------------------- download

def test_unknown_name_lists_known_names(tmp_path, capsys):
    with pytest.raises(UnknownDatasetError, match="known datasets: baby, sports, clothing, elec, tiktok"):
        dl.download("nope", tmp_path / "data")
    assert not (tmp_path / "data").exists()
    assert main(["download", "nope", "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'nope'") and "Traceback" not in err


def test_offline_lists_files_and_folder_and_fails_fast(tmp_path, monkeypatch, capsys):
    _no_network(monkeypatch, reachable=False)  # a fetch attempt would fail the test
    probed = []
    monkeypatch.setattr(dl, "probe", lambda hosts, timeout=3.0: probed.append((list(hosts), timeout)) or set())
    root = tmp_path / "data"
    with pytest.raises(OfflineError) as info:
        dl.download("baby", root)
    # fails fast: one bounded connectivity probe of the sources' hosts, then no download attempt at all
    assert len(probed) == 1 and ("raw.githubusercontent.com", 443) in probed[0][0]
    assert probed[0][1] == network.PROBE_TIMEOUT
    msg = str(info.value)
    assert "offline" in msg.splitlines()[0]
    for name in ("baby.inter", "baby_del.inter", "missing_items_0.666.npy", "image_feat.npy", "text_feat.npy"):
        assert str(root / "baby" / name) in msg
    assert "raw.githubusercontent.com/ptkjw1997/DGMRec/cd8f00db1fd927738c1cf87b1abe40493ae0ec70" in msg
    assert "13cBy1EA_saTUuXxVllKgtfci2A09jyaG" in msg
    assert "python -m data_prep import <dir>" in msg
    assert not root.exists()  # nothing created
    # The CLI: exit 2, an 'error:' line, no traceback; TikTok's features are said to be non-public.
    assert main(["download", "tiktok", "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download 'tiktok': this machine is offline") and "Traceback" not in err
    assert str(root / "tiktok" / "audio_feat.npy") in err and "not public" in err


@needs_shared
def test_good_download_lands_verifies_and_is_skipped_next_time(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    calls = []
    monkeypatch.setattr(dl, "fetch_url", _release_fetcher(calls))
    root = tmp_path / "data"
    with pytest.raises(UnavailableError, match="no public source") as info:
        dl.download("tiktok", root, log=None)  # the features are not public
    assert str(root / "tiktok" / "image_feat.npy") in str(info.value)
    folder = root / "tiktok"
    assert sorted(calls) == sorted(TIKTOK_SMALL)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*TIKTOK_SMALL, "CHECKSUMS.sha256", "SOURCE"])
    records = read_checksums(folder)
    for name in TIKTOK_SMALL:
        assert records[name] == sha256_file(RELEASE / "tiktok" / name) == sha256_file(folder / name)
    assert read_source(folder)["kind"] == "real"
    status = {c.name: c.status for c in verify("tiktok", root)}
    assert status == {**{n: "ok" for n in TIKTOK_SMALL}, **{n: "missing" for n in
                                                            ("image_feat.npy", "text_feat.npy", "audio_feat.npy")}}
    # A second run fetches nothing: the files are present with the right checksum.
    calls.clear()
    with pytest.raises(UnavailableError):
        dl.download("tiktok", root, log=None)
    assert calls == []


@needs_shared
@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_bad_download_is_refused_and_leaves_nothing(tmp_path, monkeypatch, damage, capsys):
    _no_network(monkeypatch)

    def mutate(name, data):
        if name != "tiktok_del.inter":
            return data
        if damage == "truncated":
            return data[: len(data) // 2]
        return data[:100] + (b"9" if data[100:101] != b"9" else b"8") + data[101:]

    calls = []
    monkeypatch.setattr(dl, "fetch_url", _release_fetcher(calls, mutate))
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as info:
        dl.download("tiktok", root, log=None)
    msg = str(info.value)
    expected = load_manifest().datasets["tiktok"].files["tiktok_del.inter"].sha256
    assert str(root / "tiktok" / "tiktok_del.inter") in msg and expected in msg
    assert info.value.actual and info.value.actual != expected and info.value.actual in msg
    if damage == "truncated":
        assert "truncated" in msg
    folder = root / "tiktok"
    assert not (folder / "tiktok_del.inter").exists()
    assert _leftovers(folder) == []
    # Files fetched before the bad one are complete and verified; nothing else is there.
    assert {p.name for p in folder.iterdir()} == {"tiktok.inter", "CHECKSUMS.sha256"}
    assert sha256_file(folder / "tiktok.inter") == sha256_file(RELEASE / "tiktok" / "tiktok.inter")
    assert main(["download", "tiktok", "--data-root", str(root)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_unverified_files_need_allow_unverified(tmp_path, monkeypatch):
    manifest, src = _toy_manifest(tmp_path)
    monkeypatch.setattr(manifest_module, "MANIFEST_PATH", manifest)
    _no_network(monkeypatch)
    calls = []
    _toy_fetchers(monkeypatch, src, calls)
    root = tmp_path / "data"
    with pytest.raises(UnverifiedError, match="--allow-unverified") as info:
        dl.download("toy", root, log=None)
    assert str(root / "toy" / "image_feat.npy") in str(info.value)
    assert calls == ["toy.inter", "missing_items_0.5.npy"]  # the unverifiable files were not even fetched
    assert not (root / "toy" / "image_feat.npy").exists()

    lines = []
    ds = dl.download("toy", root, allow_unverified=True, log=lines.append)
    assert (ds.n_users, ds.n_items, ds.modalities) == (3, 4, ("v", "t"))
    assert calls[2:] == ["image_feat.npy", "text_feat.npy"]
    records = read_checksums(root / "toy")
    sha = sha256_file(src / "image_feat.npy")
    assert records["image_feat.npy"] == sha
    assert any("UNVERIFIED" in line and sha in line for line in lines)  # the computed hash is printed
    source = read_source(root / "toy")
    assert source["kind"] == "real" and source["unverified"] == ["image_feat.npy", "text_feat.npy"]
    assert {c.name: c.status for c in verify("toy", root)} == {
        "toy.inter": "ok", "missing_items_0.5.npy": "ok", "image_feat.npy": "ok-local", "text_feat.npy": "ok-local"}
    assert _leftovers(root / "toy") == []


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: set = set()

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name in self.truncate:  # announce the full length, send half, hang up
            data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.mark.parametrize("case", ["good", "corrupt", "truncated"])
def test_pooch_path_against_a_local_server(tmp_path, monkeypatch, case):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Handler(
        *a, directory=str(tmp_path / "served"), **k))
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        manifest, src = _toy_manifest(tmp_path, url=f"http://127.0.0.1:{port}/{{dataset}}/{{file}}")
        monkeypatch.setattr(manifest_module, "MANIFEST_PATH", manifest)
        monkeypatch.setattr(_Handler, "truncate", {"missing_items_0.5.npy"} if case == "truncated" else set())
        if case == "corrupt":
            data = bytearray((src / "missing_items_0.5.npy").read_bytes())
            data[-1] ^= 1
            (src / "missing_items_0.5.npy").write_bytes(bytes(data))
        root = tmp_path / "data"
        with pytest.raises(DownloadError if case == "truncated" else (UnverifiedError, ChecksumError)) as info:
            dl.download("toy", root, log=None)  # real probe and real pooch, on 127.0.0.1
        folder = root / "toy"
        assert _leftovers(folder) == []
        assert sha256_file(folder / "toy.inter") == sha256_file(src / "toy.inter")
        if case == "good":
            assert isinstance(info.value, UnverifiedError)  # the toy features have no hash
            assert (folder / "missing_items_0.5.npy").is_file()
        else:
            assert not (folder / "missing_items_0.5.npy").exists()
            assert str(folder / "missing_items_0.5.npy") in str(info.value)
        if case == "corrupt":
            assert isinstance(info.value, ChecksumError) and info.value.actual == sha256_file(
                src / "missing_items_0.5.npy")
    finally:
        server.shutdown()
        server.server_close()


def test_probe_finds_the_listening_port_with_bounded_attempts(monkeypatch):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    open_port = srv.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    attempts = []
    connect = socket.create_connection

    def recorded(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        return connect(address, timeout, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recorded)
    try:
        assert network.probe([("127.0.0.1", open_port), ("127.0.0.1", closed_port)], timeout=1.0) == {
            ("127.0.0.1", open_port)}
    finally:
        srv.close()
    # every host tried once, each connection attempt bounded by the probe's timeout
    assert sorted(attempts) == sorted([(("127.0.0.1", open_port), 1.0), (("127.0.0.1", closed_port), 1.0)])


# --------------------------------------------------------------------------- import and verify

@needs_shared
def test_import_reference_tiktok_by_link(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    root = tmp_path / "data"
    assert import_dir(REFERENCE, root, names=["tiktok"], link=True, log=None) == ["tiktok"]
    folder = root / "tiktok"
    assert (folder / "image_feat.npy").is_symlink()
    ds = load_folder(root, "tiktok", source="reference")
    assert ds.modalities == ("v", "t", "a") and (ds.n_users, ds.n_items) == (9308, 6710)
    source = read_source(folder)
    assert source["kind"] == "reference" and Path(source["origin"]).resolve() == (REFERENCE / "tiktok").resolve()
    assert set(source["verified"]) == set(TIKTOK_IMPORTED)
    assert set(read_checksums(folder)) == {p.name.replace(".npy", ".npz") if p.name.startswith("missing_items_")
                                              else p.name for p in (REFERENCE / "tiktok").iterdir()}
    # the masks are written, not linked, as plain arrays: no pickle in the imported folder
    assert not list(folder.glob("missing_items_*.npy"))
    for ratio in ("0.6", "0.75"):
        plain = folder / f"missing_items_{ratio}.npz"
        assert not plain.is_symlink()
        with np.load(plain, allow_pickle=False) as z:
            trusted = np.load(REFERENCE / "tiktok" / f"missing_items_{ratio}.npy", allow_pickle=True).item()
            assert sorted(z.files) == sorted(trusted)
            for key, ids in trusted.items():
                assert z[key].dtype == ids.dtype and z[key].tobytes() == ids.tobytes()
    checks = {c.name: c for c in verify("tiktok", root)}
    assert {c.status for c in checks.values()} == {"ok", "ok-local"}
    assert checks["missing_items_0.6.npz"].status == "ok" and "missing_items_0.6.npy" not in checks
    # Downloading into a reference folder would mix real and surrogate files: refused.
    with pytest.raises(DownloadError, match="reference"):
        dl.download("tiktok", root, log=None)


@needs_shared
def test_import_copies_one_dataset_folder(tmp_path):
    root = tmp_path / "data"
    assert import_dir(REFERENCE / "tiktok", root, log=None) == ["tiktok"]  # a dataset folder itself
    folder = root / "tiktok"
    assert not any(p.is_symlink() for p in folder.iterdir())
    assert _leftovers(folder) == []
    # the masks changed format, not content: same fingerprint, same job ids, bit-identical masks
    imported, original = load_folder(root, "tiktok"), load_folder(REFERENCE, "tiktok")
    assert imported.fingerprint == original.fingerprint
    for ratio, groups in original.masks.items():
        assert all(np.array_equal(imported.masks[ratio][k], ids) for k, ids in groups.items())
    assert read_source(folder)["kind"] == "reference"
    # the same data written twice gives the same bytes
    again = tmp_path / "again"
    import_dir(REFERENCE / "tiktok", again, log=None)
    assert sha256_file(again / "tiktok/missing_items_0.6.npz") == sha256_file(folder / "missing_items_0.6.npz")


@needs_shared
def test_import_real_release_files_is_labelled_real(tmp_path, capsys):
    src = tmp_path / "src"
    _copy_small_tiktok(src)
    root = tmp_path / "data"
    assert main(["import", str(src), "--data-root", str(root)]) == 0
    assert read_source(root / "tiktok")["kind"] == "real"
    assert "imported: tiktok" in capsys.readouterr().out


@needs_shared
def test_plain_masks_after_import_are_kept_by_download_and_replace_old_pickles(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _copy_small_tiktok(src)
    root = tmp_path / "data"
    folder = root / "tiktok"
    folder.mkdir(parents=True)
    for name in TIKTOK_SMALL:  # an import made before masks were converted: pickles in place
        shutil.copyfile(RELEASE / "tiktok" / name, folder / name)
    import_dir(src, root, log=None)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*TIKTOK_IMPORTED, "CHECKSUMS.sha256", "SOURCE"])
    assert read_source(folder)["kind"] == "real"
    # download finds the masks verified by content and fetches nothing
    _no_network(monkeypatch)
    calls = []
    monkeypatch.setattr(dl, "fetch_url", _release_fetcher(calls))
    with pytest.raises(UnavailableError):
        dl.download("tiktok", root, log=None)
    assert calls == [] and not list(folder.glob("*.npy"))
    # a plain mask whose content is not the release's is replaced by a fresh download of the release file
    from data_prep.mask_files import read_mask_groups, write_mask_npz
    groups = read_mask_groups(folder / "missing_items_0.6.npz")
    groups["t"], groups["v"] = groups["v"], groups["t"]
    with open(folder / "missing_items_0.6.npz", "wb") as f:
        write_mask_npz(f, groups)
    assert {c.name: c.status for c in verify("tiktok", root)}["missing_items_0.6.npz"] == "mismatch"
    with pytest.raises(UnavailableError):
        dl.download("tiktok", root, log=None)
    assert calls == ["missing_items_0.6.npy"]
    assert sorted(p.name for p in folder.glob("missing_items_*")) == ["missing_items_0.6.npy", "missing_items_0.75.npz"]
    assert {c.name: c.status for c in verify("tiktok", root)} == {
        **{n: "ok" for n in ("tiktok.inter", "tiktok_del.inter", "missing_items_0.6.npy", "missing_items_0.75.npz")},
        **{n: "missing" for n in ("image_feat.npy", "text_feat.npy", "audio_feat.npy")}}


@needs_shared
def test_import_refuses_altered_release_file(tmp_path, capsys):
    src = tmp_path / "src"
    folder = _copy_small_tiktok(src)
    _flip_label(folder / "tiktok_del.inter")
    load_folder(src, "tiktok")  # still a valid file: only the hash can tell
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as info:
        import_dir(src, root, log=None)
    assert str(folder / "tiktok_del.inter") in str(info.value)
    assert info.value.expected == load_manifest().datasets["tiktok"].files["tiktok_del.inter"].sha256
    assert not (root / "tiktok").exists()  # nothing was imported, not even the good files
    assert main(["import", str(src), "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tiktok_del.inter" in err and "Traceback" not in err


@needs_shared
def test_import_refuses_invalid_folder_and_mixing(tmp_path):
    src = tmp_path / "src"
    folder = _copy_small_tiktok(src)
    (folder / "tiktok.inter").write_text("userID\titemID\n0\t1\n")
    with pytest.raises(DataError, match="x_label"):
        import_dir(src, tmp_path / "data", log=None)
    shutil.copyfile(RELEASE / "tiktok" / "tiktok.inter", folder / "tiktok.inter")
    dest = tmp_path / "data" / "tiktok"
    dest.mkdir(parents=True)
    np.save(dest / "image_feat.npy", np.zeros((6710, 2), np.float32))  # would stay beside the imported files
    with pytest.raises(DataError, match="image_feat.npy"):
        import_dir(src, tmp_path / "data", log=None)
    with pytest.raises(DataError, match="no dataset folder sports"):
        import_dir(src, tmp_path / "data", names=["sports"], log=None)


@needs_shared
def test_verify_reports_mismatch(tmp_path, capsys):
    src = tmp_path / "src"
    _copy_small_tiktok(src)
    root = tmp_path / "data"
    import_dir(src, root, log=None)
    assert main(["verify", "tiktok", "--data-root", str(root)]) == 0
    _flip_label(root / "tiktok" / "tiktok_del.inter")
    checks = {c.name: c for c in verify("tiktok", root)}
    assert checks["tiktok_del.inter"].status == "mismatch"
    assert checks["tiktok.inter"].status == "ok" and checks["image_feat.npy"].status == "missing"
    capsys.readouterr()
    assert main(["verify", "tiktok", "--data-root", str(root)]) == 1
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["mismatch", "tiktok_del.inter"] for line in out.splitlines())
    assert main(["verify", "tiktok", "--data-root", str(tmp_path / "elsewhere")]) == 2



def test_drive_fetch_finds_the_file_in_the_folder_listing(tmp_path, monkeypatch):
    """The real fetch_gdrive, with gdown's two network calls replaced."""
    import gdown
    from gdown.download import GoogleDriveFileToDownload as Entry

    manifest, src = _toy_manifest(tmp_path)
    monkeypatch.setattr(manifest_module, "MANIFEST_PATH", manifest)
    monkeypatch.setattr(dl, "probe", lambda hosts, timeout=3.0: set(hosts))
    monkeypatch.setattr(dl, "fetch_url", lambda url, dest, known_sha256=None, timeout=60.0:
                        shutil.copyfile(src / url.rsplit("/", 1)[-1], dest))
    listing = [Entry(id="ID-IMG", path="toy/image_feat.npy", local_path=""),
               Entry(id="ID-TXT", path="toy/text_feat.npy", local_path="")]
    got = []

    def fake_folder(id=None, skip_download=False, **kwargs):
        assert id == "TOYFOLDER" and skip_download
        return list(listing)

    def fake_download(id=None, output=None, **kwargs):
        got.append(id)
        shutil.copyfile(src / {"ID-IMG": "image_feat.npy", "ID-TXT": "text_feat.npy"}[id], output)
        return output

    monkeypatch.setattr(gdown, "download_folder", fake_folder)
    monkeypatch.setattr(gdown, "download", fake_download)
    network._drive_listing.cache_clear()
    try:
        ds = dl.download("toy", tmp_path / "data", allow_unverified=True, log=None)
        assert got == ["ID-IMG", "ID-TXT"] and ds.modalities == ("v", "t")

        # A folder that does not hold the file: a clear error naming it, nothing left behind.
        network._drive_listing.cache_clear()
        listing[:] = [Entry(id="ID-ZIP", path="toy.zip", local_path="")]
        (tmp_path / "data" / "toy" / "text_feat.npy").unlink()
        with pytest.raises(DownloadError, match="has no toy/text_feat.npy") as info:
            dl.download("toy", tmp_path / "data", allow_unverified=True, log=None)
        assert str(tmp_path / "data" / "toy" / "text_feat.npy") in str(info.value)
        assert _leftovers(tmp_path / "data" / "toy") == []
    finally:
        network._drive_listing.cache_clear()
