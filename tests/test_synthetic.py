"""Tests of data_prep.synthetic: shapes, determinism, structure and the file round trip."""
import numpy as np
import pytest

from data_prep.dataset import MASK_KEYS, load_folder
from data_prep.masks import draw_missing_mask, draw_new_items, item_strata, new_item_split
from data_prep.synthetic import KINDS, REAL_SHAPES, make_replica, replica_shape, write_dataset

SMALL = {"baby": 0.03, "sports": 0.01, "clothing": 0.01, "elec": 0.002, "tiktok": 0.05}


@pytest.fixture(scope="module")
def replicas():
    return {kind: make_replica(kind, scale) for kind, scale in SMALL.items()}


def _arrays(ds):
    out = [ds.inter.users, ds.inter.items, ds.inter.labels, ds.del_inter.users, ds.del_inter.items,
           ds.del_inter.labels, ds.new_items]
    out += [ds.features[m] for m in ds.modalities]
    out += [g[k] for r in sorted(ds.masks) for g in [ds.masks[r]] for k in g]
    return out


def test_determinism(replicas):
    a = replicas["tiktok"]
    b = make_replica("tiktok", SMALL["tiktok"])
    assert a.fingerprint == b.fingerprint
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b)))
    c = make_replica("tiktok", SMALL["tiktok"], seed=7)
    assert c.fingerprint != a.fingerprint
    assert not np.array_equal(c.features["t"], a.features["t"])
    assert not (len(c.inter) == len(a.inter) and np.array_equal(c.inter.items, a.inter.items))


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_modalities(replicas, kind):
    ds = replicas[kind]
    real = REAL_SHAPES[kind]
    s = SMALL[kind]
    assert ds.n_users == max(100, round(s * real["users"]))
    assert ds.n_items == max(60, round(s * real["items"]))
    assert len(ds.inter) == round(ds.n_users * real["inters"] / real["users"])  # real mean per user
    assert ds.modalities == (("v", "t", "a") if kind == "tiktok" else ("v", "t"))
    for m, x in ds.features.items():
        assert x.shape == (ds.n_items, real["dims"][m]) and x.dtype == np.float32
    assert (ds.features["v"] >= 0).all()
    assert np.allclose(np.linalg.norm(ds.features["t"], axis=1), 1.0, atol=1e-5)
    assert set(ds.masks) == ({"0.6", "0.75"} if kind == "tiktok" else {"0.666"})
    for groups in ds.masks.values():
        assert tuple(groups) == MASK_KEYS[len(ds.modalities)]
    assert ds.name == f"synthetic:{kind}" and ds.source == "synthetic" and ds.kind == kind
    # ids are contiguous and the last item occurs (the official loader counts max id + 1)
    assert np.array_equal(np.unique(ds.inter.users), np.arange(ds.n_users))
    assert ds.inter.items.max() == ds.n_items - 1


def test_feature_dims_never_scale():
    ds = make_replica("baby", 0.001)
    assert (ds.n_users, ds.n_items) == (100, 60)
    assert ds.features["v"].shape == (60, 4096) and ds.features["t"].shape == (60, 384)
    assert replica_shape("tiktok", 0.5)["dims"] == {"v": 128, "t": 768, "a": 128}


@pytest.mark.parametrize("kind", ["baby", "tiktok"])
def test_splits_per_user(replicas, kind):
    ds = replicas[kind]
    per = np.zeros((ds.n_users, 3), dtype=np.int64)
    np.add.at(per, (ds.inter.users, ds.inter.labels.astype(np.int64)), 1)
    assert (per >= 1).all()
    assert (per.sum(1) >= 5).all()
    if kind == "tiktok":
        assert (per[:, 1] == 1).all() and (per[:, 2] == 1).all()
    else:
        frac = per.sum(0) / per.sum()
        assert 0.7 < frac[0] < 0.85 and 0.08 < frac[1] < 0.17 and 0.08 < frac[2] < 0.17
    # no duplicate (user, item) pair
    pairs = ds.inter.users * ds.n_items + ds.inter.items
    assert len(np.unique(pairs)) == len(pairs)


def test_long_tails():
    ds = make_replica("baby", 0.05)
    c = np.sort(np.bincount(ds.inter.items, minlength=ds.n_items))[::-1]
    # the top 10% of items hold over a quarter of the interactions (0.10 if popularity were flat); the
    # replicas keep popularity moderate so that, as on the real data, it is a floor and not the winner
    assert c[: len(c) // 10].sum() / c.sum() > 0.25
    per_user = np.bincount(ds.inter.users)
    assert per_user.max() >= 3 * np.median(per_user)


def test_new_items_and_masks_follow_the_official_procedures(replicas):
    ds = replicas["tiktok"]
    counts = np.bincount(ds.inter.items[ds.inter.labels == 0], minlength=ds.n_items)
    assert np.array_equal(ds.new_items, draw_new_items(counts))
    d = new_item_split(ds.inter, ds.new_items)
    assert np.array_equal(d.users, ds.del_inter.users) and np.array_equal(d.items, ds.del_inter.items)
    assert not np.isin(ds.del_inter.items[ds.del_inter.labels == 0], ds.new_items).any()
    g = draw_missing_mask(item_strata(counts), 0.6, 3)
    assert all(np.array_equal(g[k], ds.masks["0.6"][k]) for k in g)
    total = sum(len(v) for v in ds.masks["0.6"].values())
    assert total == sum(int(0.6 * len(v)) for v in item_strata(counts).values())


def _content_recall(ds, m, k=20):
    tr, te = ds.inter.labels == 0, ds.inter.labels == 2
    x = ds.features[m].astype(np.float64)
    x -= x.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    prof = np.zeros((ds.n_users, x.shape[1]))
    np.add.at(prof, ds.inter.users[tr], x[ds.inter.items[tr]])
    scores = prof @ x.T  # cosine up to a per-user factor, which does not change the ranking
    scores[ds.inter.users[tr], ds.inter.items[tr]] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    hit = np.zeros(scores.shape, dtype=bool)
    hit[np.repeat(np.arange(ds.n_users), k), top.ravel()] = True
    tu, ti = ds.inter.users[te], ds.inter.items[te]
    n_test = np.bincount(tu, minlength=ds.n_users)
    n_hit = np.bincount(tu, weights=hit[tu, ti], minlength=ds.n_users)
    n_train = np.bincount(ds.inter.users[tr], minlength=ds.n_users)
    ok = n_test > 0
    recall = np.mean(n_hit[ok] / n_test[ok])
    random = np.mean(k / (ds.n_items - n_train[ok]))  # expected Recall@k of a random ranking
    return recall, random


@pytest.mark.parametrize("m", ["v", "t"])
def test_content_features_carry_preference_signal(m):
    ds = make_replica("baby", 0.05)
    recall, random = _content_recall(ds, m)
    assert recall > 1.6 * random, (recall, random)


def test_write_dataset_round_trip(tmp_path, replicas):
    for kind in ("tiktok", "baby"):
        ds = replicas[kind]
        folder = write_dataset(ds, tmp_path)
        assert folder == tmp_path / kind
        assert not list(folder.glob("*.tmp"))
        back = load_folder(tmp_path, kind, source="synthetic")
        assert (back.n_users, back.n_items) == (ds.n_users, ds.n_items)
        for a, b in ((ds.inter, back.inter), (ds.del_inter, back.del_inter)):
            assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
            assert np.array_equal(a.labels, b.labels)
        assert np.array_equal(ds.new_items, back.new_items)
        assert back.modalities == ds.modalities
        for m in ds.modalities:
            assert np.array_equal(ds.features[m], back.features[m])
        assert set(back.masks) == set(ds.masks)
        for r in ds.masks:
            assert all(np.array_equal(ds.masks[r][k], back.masks[r][k]) for k in ds.masks[r])
        header = (folder / f"{kind}.inter").read_text().splitlines()[0]
        assert header == "userID\titemID\tx_label"


def test_bad_arguments():
    with pytest.raises(ValueError, match="known kinds: baby, sports, clothing, elec, tiktok"):
        make_replica("movielens")
    for bad in (0, -0.5, 1.5, float("nan"), True, "0.5", None):
        with pytest.raises(ValueError, match="scale"):
            make_replica("baby", bad)
