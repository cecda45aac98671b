"""Every malformed input is refused with an error naming the file and the problem."""
import pickle

import numpy as np
import pytest

from data_prep.dataset import load_folder
from data_prep.errors import DataError

ROWS = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2), (1, 1, 0), (1, 2, 0), (1, 0, 1), (1, 3, 2), (2, 3, 0), (2, 0, 1),
        (2, 1, 2)]


def write_inter(path, rows, header="userID\titemID\tx_label"):
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


def make_folder(tmp_path, rows=ROWS, n_items=4, mask=None):
    d = tmp_path / "toy"
    d.mkdir()
    write_inter(d / "toy.inter", rows)
    rng = np.random.default_rng(0)
    np.save(d / "image_feat.npy", rng.random((n_items, 5)).astype(np.float32))
    np.save(d / "text_feat.npy", rng.random((n_items, 3)).astype(np.float32))
    if mask is not None:
        with open(d / "missing_items_0.5.npy", "wb") as f:
            pickle.dump(mask, f)  # what np.save of a dict writes is a pickle too; np.load(allow_pickle) reads both
    return d


def expect(tmp_path, file, *fragments):
    with pytest.raises(DataError) as exc:
        load_folder(tmp_path, "toy")
    msg = str(exc.value)
    assert file in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_good_folder_loads(tmp_path):
    make_folder(tmp_path, mask={"t": np.array([0]), "v": np.array([1]), "all": np.array([2])})
    ds = load_folder(tmp_path, "toy")
    assert (ds.n_users, ds.n_items, ds.modalities) == (3, 4, ("v", "t"))
    assert set(ds.masks) == {"0.5"} and ds.masks["0.5"]["all"].tolist() == [2]
    assert len(ds.fingerprint) == 4 and all(len(h) == 64 for h in ds.fingerprint.values())


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        load_folder(tmp_path, "nothing")
    (tmp_path / "toy").mkdir()
    expect(tmp_path, "toy.inter", "file not found")


def test_missing_column(tmp_path):
    d = make_folder(tmp_path)
    write_inter(d / "toy.inter", [(0, 0), (1, 1)], header="userID\titemID")
    expect(tmp_path, "toy.inter", "missing column", "x_label")


def test_wrong_separator_is_missing_columns(tmp_path):
    d = make_folder(tmp_path)
    (d / "toy.inter").write_text("userID,itemID,x_label\n0,0,0\n")
    expect(tmp_path, "toy.inter", "missing column")


def test_non_integer_id(tmp_path):
    d = make_folder(tmp_path)
    write_inter(d / "toy.inter", ROWS[:-1] + [(2, "1.5", 2)])
    expect(tmp_path, "toy.inter", "non-integer", "itemID")
    write_inter(d / "toy.inter", ROWS[:-1] + [(2, "abc", 2)])
    expect(tmp_path, "toy.inter", "itemID")


def test_negative_id(tmp_path):
    d = make_folder(tmp_path)
    write_inter(d / "toy.inter", ROWS[:-1] + [(-1, 1, 2)])
    expect(tmp_path, "toy.inter", "negative", "userID")


def test_user_ids_not_contiguous(tmp_path):
    d = make_folder(tmp_path)
    write_inter(d / "toy.inter", ROWS + [(5, 1, 0)])
    expect(tmp_path, "toy.inter", "not contiguous", "id 3")


def test_label_out_of_range(tmp_path):
    d = make_folder(tmp_path)
    write_inter(d / "toy.inter", ROWS + [(2, 2, 3)])
    expect(tmp_path, "toy.inter", "x_label", "found 3")


def test_empty_split(tmp_path):
    d = make_folder(tmp_path)
    write_inter(d / "toy.inter", [r for r in ROWS if r[2] != 1])
    expect(tmp_path, "toy.inter", "valid split", "empty")


def test_empty_file(tmp_path):
    d = make_folder(tmp_path)
    (d / "toy.inter").write_text("")
    expect(tmp_path, "toy.inter", "empty")


def test_feature_rows_mismatch(tmp_path):
    d = make_folder(tmp_path)
    np.save(d / "text_feat.npy", np.ones((7, 3), np.float32))
    expect(tmp_path, "text_feat.npy", "7 rows", "4 items")


def test_nan_and_inf_features(tmp_path):
    d = make_folder(tmp_path)
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    np.save(d / "text_feat.npy", x)
    expect(tmp_path, "text_feat.npy", "NaN or infinite", "item 2")
    x[2, 1] = np.inf
    np.save(d / "text_feat.npy", x)
    expect(tmp_path, "text_feat.npy", "NaN or infinite")


def test_feature_file_not_an_array(tmp_path):
    d = make_folder(tmp_path)
    (d / "image_feat.npy").write_bytes(b"garbage, not numpy")
    expect(tmp_path, "image_feat.npy", "npy")
    np.save(d / "image_feat.npy", np.ones(4, np.float32))
    expect(tmp_path, "image_feat.npy", "2-D")


def test_mask_id_out_of_range(tmp_path):
    make_folder(tmp_path, mask={"t": np.array([0]), "v": np.array([9]), "all": np.array([2])})
    expect(tmp_path, "missing_items_0.5.npy", "out of range", "9")


def test_mask_groups_overlap(tmp_path):
    make_folder(tmp_path, mask={"t": np.array([0, 1]), "v": np.array([1]), "all": np.array([2])})
    expect(tmp_path, "missing_items_0.5.npy", "overlap", "item 1")


def test_unknown_mask_key(tmp_path):
    make_folder(tmp_path, mask={"t": np.array([0]), "image": np.array([1])})
    expect(tmp_path, "missing_items_0.5.npy", "unknown mask key", "image")
    # an audio group in a two-modality dataset is unknown too
    (tmp_path / "toy" / "missing_items_0.5.npy").unlink()
    with open(tmp_path / "toy" / "missing_items_0.5.npy", "wb") as f:
        pickle.dump({"a": np.array([1])}, f)
    expect(tmp_path, "missing_items_0.5.npy", "unknown mask key", "'a'")


def test_mask_not_a_dict(tmp_path):
    d = make_folder(tmp_path)
    with open(d / "missing_items_0.5.npy", "wb") as f:
        pickle.dump([1, 2, 3], f)
    expect(tmp_path, "missing_items_0.5.npy", "dict")


def test_new_items_out_of_range(tmp_path):
    d = make_folder(tmp_path)
    np.save(d / "new_items.npy", np.array([1, 40]))
    expect(tmp_path, "new_items.npy", "out of range")


def test_plain_npz_masks_load_like_the_pickled_ones(tmp_path):
    groups = {"t": np.array([0]), "v": np.array([1, 3]), "all": np.array([2])}
    d = make_folder(tmp_path, mask=groups)
    pickled = load_folder(tmp_path, "toy")
    (d / "missing_items_0.5.npy").unlink()
    np.savez(d / "missing_items_0.5.npz", **groups)  # written by numpy, not by data_prep
    plain = load_folder(tmp_path, "toy")
    assert {k: v.tolist() for k, v in plain.masks["0.5"].items()} == {"t": [0], "v": [1, 3], "all": [2]}
    assert plain.fingerprint == pickled.fingerprint  # the same masks are the same data, whatever the format
    with open(d / "missing_items_0.5.npy", "wb") as f:
        pickle.dump(groups, f)
    expect(tmp_path, "missing_items_0.5.npy", "two mask files", "missing_items_0.5.npz")
    (d / "missing_items_0.5.npy").unlink()
    for bad, fragment in (({"t": np.array([0.5])}, "integers"), ({"t": np.array([[0]])}, "1-D"),
                          ({"image": np.array([1])}, "unknown mask key"), ({"t": np.array([7])}, "out of range"),
                          ({"t": np.array(["0"])}, "plain numeric array")):
        np.savez(d / "missing_items_0.5.npz", **bad)
        expect(tmp_path, "missing_items_0.5.npz", fragment)
    (d / "missing_items_0.5.npz").write_bytes(b"PK\x03\x04 not really a zip")
    expect(tmp_path, "missing_items_0.5.npz", ".npz archive")
