"""Tests of data_prep.masks: strata, new items, missing-modality masks, against the official release's files."""
from pathlib import Path

import numpy as np
import pytest

from data_prep.dataset import MASK_KEYS, Interactions, read_mask
from data_prep.shared import release_root
from data_prep.masks import (
    STRATA,
    draw_missing_mask,
    draw_new_items,
    item_strata,
    mask_file_ratio,
    missing_level,
    new_item_split,
    per_modality_missing,
)

RELEASE = release_root()

# Group sizes of the mask files the official release ships (missing ratio 2/3).
SHIPPED_SIZES = {
    ("baby", 7050): {"t": 1174, "v": 1176, "all": 2350},
    ("sports", 18357): {"t": 3058, "v": 3060, "all": 6119},
    ("clothing", 23033): {"t": 3837, "v": 3838, "all": 7679},
    ("elec", 63001): {"t": 10500, "v": 10500, "all": 21000},
}
TIKTOK_06 = {"t": 445, "v": 447, "a": 448, "tv": 447, "ta": 446, "va": 448, "all": 1343}
TIKTOK_075 = {"t": 558, "v": 561, "a": 558, "tv": 559, "ta": 560, "va": 560, "all": 1675}


def _counts(n, seed=0):
    return np.random.default_rng(seed).poisson(3.0, n)


def _union(groups):
    return np.concatenate(list(groups.values()))


# --------------------------------------------------------------------------- strata / new items

def test_strata_sizes_and_partition():
    counts = _counts(6710)
    s = item_strata(counts)
    assert [len(s[k]) for k in STRATA] == [939, 402, 3758, 1611]
    allitems = np.concatenate([s[k] for k in STRATA])
    assert np.array_equal(np.sort(allitems), np.arange(6710))
    # cold = the 4697 lowest counts (stable order), warm the rest
    order = np.argsort(counts, kind="stable")
    cold, warm = set(order[:4697]), set(order[4697:])
    assert set(s["new_cold"]) | set(s["old_cold"]) == cold
    assert set(s["new_warm"]) | set(s["old_warm"]) == warm
    assert counts[list(cold)].max() <= counts[list(warm)].min()
    assert all(s[k].dtype == np.int64 for k in STRATA)


def test_strata_follow_the_legacy_random_stream():
    counts = _counts(500, seed=3)
    s = item_strata(counts)
    order = np.argsort(counts, kind="stable")
    rs = np.random.RandomState(1111)
    nc = rs.choice(order[:350], 70, replace=False)
    nw = rs.choice(order[350:], 30, replace=False)
    assert np.array_equal(s["new_cold"], nc) and np.array_equal(s["new_warm"], nw)
    assert np.array_equal(s["old_cold"], np.setdiff1d(order[:350], nc))
    # ties are broken by item id (stable sort): all-zero counts -> cold = first 70%
    z = item_strata(np.zeros(100, dtype=int))
    assert np.array_equal(np.sort(np.concatenate((z["new_cold"], z["old_cold"]))), np.arange(70))


def test_draw_new_items():
    counts = _counts(1000)
    s = item_strata(counts)
    new = draw_new_items(counts)
    assert np.array_equal(new, np.sort(np.concatenate((s["new_cold"], s["new_warm"]))))
    assert len(new) == int(0.2 * 700) + int(0.2 * 300) and len(np.unique(new)) == len(new)
    assert not np.array_equal(new, draw_new_items(counts, seed=1))


def test_new_item_split_drops_exactly_training_rows_of_new_items():
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    items = np.array([0, 1, 2, 1, 3, 0, 2, 3, 4, 1])
    labels = np.array([0, 0, 1, 0, 2, 0, 0, 1, 2, 0], dtype=np.int8)
    inter = Interactions(users, items, labels)
    out = new_item_split(inter, np.array([1, 4]))
    keep = np.array([1, 0, 1, 0, 1, 1, 1, 1, 1, 0], dtype=bool)  # train rows of items 1 dropped; 4 is test
    assert np.array_equal(out.users, users[keep])
    assert np.array_equal(out.items, items[keep])
    assert np.array_equal(out.labels, labels[keep])
    assert len(new_item_split(inter, np.array([], dtype=np.int64))) == len(inter)


# --------------------------------------------------------------------------- masks

def test_hand_computed_quarter_sizes():
    rng = np.random.default_rng(0)
    ids = rng.permutation(72)
    strata = {"new_cold": ids[:10], "new_warm": ids[10:15], "old_cold": ids[15:55], "old_warm": ids[55:]}
    g = draw_missing_mask(strata, 0.5, 2, n_items=72)
    # drawn 5, 2, 20, 8; quarters floor(i*L/4): 5 -> 1,1,1,2; 2 -> 0,1,0,1; 20 -> 5,5,5,5; 8 -> 2,2,2,2
    assert {k: len(v) for k, v in g.items()} == {"t": 1 + 0 + 5 + 2, "v": 1 + 1 + 5 + 2, "all": 3 + 1 + 10 + 4}


def test_matches_the_official_two_modality_script():
    """The permutation-prefix draw is the official choice() draw, order included."""
    s = item_strata(_counts(2000, seed=5))
    r = 2 / 3
    rs = np.random.RandomState(1225)
    drawn = [rs.choice(s[k], int(r * len(s[k])), replace=False) for k in STRATA]
    q = [[d[int(i * (len(d) / 4)):int((i + 1) * (len(d) / 4))] for i in range(4)] for d in drawn]
    expect = {"t": np.concatenate([x[0] for x in q]), "v": np.concatenate([x[1] for x in q]),
              "all": np.concatenate([x[2] for x in q] + [x[3] for x in q])}
    g = draw_missing_mask(s, r, 2)
    for k in ("t", "v", "all"):
        assert np.array_equal(g[k], expect[k]), k
    # 0.666 names the same file and is drawn as 2/3
    g2 = draw_missing_mask(s, 0.666, 2)
    assert all(np.array_equal(g[k], g2[k]) for k in g)


@pytest.mark.parametrize("n_mod", [2, 3])
def test_nested_across_ratios(n_mod):
    s = item_strata(_counts(3000, seed=7))
    sets = [set(_union(draw_missing_mask(s, r, n_mod)).tolist()) for r in (0.2, 0.4, 0.6, 0.8, 1.0)]
    for lo, hi in zip(sets, sets[1:]):
        assert lo < hi
    assert len(sets[-1]) == 3000


def test_ratio_zero_gives_empty_groups_with_the_official_keys():
    s = item_strata(_counts(300))
    for n_mod in (2, 3):
        g = draw_missing_mask(s, 0.0, n_mod)
        assert tuple(g) == MASK_KEYS[n_mod]
        assert all(len(v) == 0 and v.dtype == np.int64 for v in g.values())


@pytest.mark.parametrize("key", list(SHIPPED_SIZES))
def test_amazon_sizes_equal_the_shipped_files(key):
    g = draw_missing_mask(item_strata(np.zeros(key[1], dtype=int)), 2 / 3, 2)
    assert {k: len(v) for k, v in g.items()} == SHIPPED_SIZES[key]
    missing = _union(g)
    assert len(np.unique(missing)) == len(missing)


def test_tiktok_sizes():
    s = item_strata(np.zeros(6710, dtype=int))
    g = draw_missing_mask(s, 0.6, 3)
    assert {k: len(v) for k, v in g.items()} == TIKTOK_06  # exact at the main ratio
    g = draw_missing_mask(s, 0.75, 3)
    sizes = {k: len(v) for k, v in g.items()}
    assert sum(sizes.values()) == sum(TIKTOK_075.values()) == 5031
    # the unreleased 3-modality generator split 0.75 slightly differently
    assert all(abs(sizes[k] - TIKTOK_075[k]) <= 4 for k in sizes)


def test_three_modality_split_in_ninths():
    perm_src = np.arange(100, 118)
    strata = {"new_cold": perm_src, "new_warm": np.zeros(0, np.int64),
              "old_cold": np.zeros(0, np.int64), "old_warm": np.zeros(0, np.int64)}
    g = draw_missing_mask(strata, 1.0, 3, n_items=118)
    perm = np.random.RandomState(1225).permutation(perm_src)
    for i, key in enumerate(("t", "v", "a", "tv", "ta", "va")):
        assert np.array_equal(g[key], perm[2 * i:2 * i + 2]), key
    assert np.array_equal(g["all"], perm[12:])


def test_bad_arguments():
    s = item_strata(_counts(100))
    with pytest.raises(ValueError):
        draw_missing_mask(s, 0.5, 4)
    with pytest.raises(ValueError):
        draw_missing_mask(s, 1.5, 2)
    with pytest.raises(ValueError):
        draw_missing_mask({"new_cold": s["new_cold"]}, 0.5, 2)
    with pytest.raises(ValueError):
        item_strata(np.zeros((3, 3)))


def test_mask_file_ratio():
    assert mask_file_ratio(0.6) == "0.6"
    assert mask_file_ratio(0.75) == "0.75"
    assert mask_file_ratio(0.8) == "0.8"
    assert mask_file_ratio(2 / 3) == "0.666"
    assert mask_file_ratio(0.666) == "0.666"
    assert mask_file_ratio(0.6667) == "0.666"
    assert mask_file_ratio(1) == "1.0"
    with pytest.raises(ValueError):
        mask_file_ratio(-0.1)


# --------------------------------------------------------------------------- per-modality views

def test_per_modality_and_level_three_modalities():
    g = {"t": np.array([0]), "v": np.array([1]), "a": np.array([2]), "tv": np.array([3]),
         "ta": np.array([4]), "va": np.array([5]), "all": np.array([6, 7])}
    miss = per_modality_missing(g, ("v", "t", "a"), 10)
    assert np.flatnonzero(miss["t"]).tolist() == [0, 3, 4, 6, 7]
    assert np.flatnonzero(miss["v"]).tolist() == [1, 3, 5, 6, 7]
    assert np.flatnonzero(miss["a"]).tolist() == [2, 4, 5, 6, 7]
    lvl = missing_level(g, 10)
    assert lvl.dtype == np.int8
    assert lvl.tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 0, 0]


def test_per_modality_and_level_two_modalities():
    g = {"t": np.array([4, 1]), "v": np.array([2]), "all": np.array([0])}
    miss = per_modality_missing(g, ("v", "t"), 6)
    assert np.flatnonzero(miss["t"]).tolist() == [0, 1, 4]
    assert np.flatnonzero(miss["v"]).tolist() == [0, 2]
    assert missing_level(g, 6).tolist() == [2, 1, 1, 0, 1, 0]
    # an empty 3-modality mask still has 'all' meaning three modalities
    empty3 = {k: np.zeros(0, np.int64) for k in MASK_KEYS[3]}
    assert missing_level(empty3, 3).tolist() == [0, 0, 0]


@pytest.mark.usefixtures("release_dir")
def test_levels_of_the_shipped_tiktok_mask():
    g = read_mask(RELEASE / "tiktok/missing_items_0.6.npy", 6710, 3)
    counts = np.bincount(missing_level(g, 6710), minlength=4)
    assert counts.tolist() == [6710 - 4024, 445 + 447 + 448, 447 + 446 + 448, 1343]
    miss = per_modality_missing(g, ("v", "t", "a"), 6710)
    assert miss["t"].sum() == 445 + 447 + 446 + 1343
    assert miss["v"].sum() == 447 + 447 + 448 + 1343
    assert miss["a"].sum() == 448 + 446 + 448 + 1343


# --------------------------------------------------------------------------- other mechanisms

def _power_counts(n, seed=0):
    return np.random.default_rng(seed).zipf(1.8, n).clip(max=500) - 1


def test_popularity_mask_marginal_ratio_and_correlation_with_popularity():
    from scipy.stats import spearmanr
    from data_prep.masks import draw_popularity_mask
    counts = _power_counts(3000)
    strata = item_strata(counts)
    uniform = draw_missing_mask(strata, 0.6, 2)
    pop = draw_popularity_mask(counts, 0.6, 2)
    n_uniform = sum(len(v) for v in uniform.values())
    assert sum(len(v) for v in pop.values()) == n_uniform == sum(int(0.6 * len(strata[k])) for k in STRATA)
    flags = np.zeros(3000, bool)
    flags[_union(pop)] = True
    rho = spearmanr(flags, counts).statistic
    assert rho < -0.3, rho  # rarely interacted items miss more often
    order = np.argsort(counts, kind="stable")
    assert flags[order[:600]].mean() > 0.75 and flags[order[-600:]].mean() < 0.25  # 0.81 / 0.14 here
    u_flags = np.zeros(3000, bool)
    u_flags[_union(uniform)] = True
    assert abs(spearmanr(u_flags, counts).statistic) < 0.1  # the paper's draw: independent of popularity
    # groups: round-robin over the draw, t / v / all in proportion 1 / 1 / 2
    assert abs(len(pop["t"]) - len(pop["v"])) <= 1 and abs(len(pop["all"]) - 2 * len(pop["t"])) <= 2
    three = draw_popularity_mask(counts, 0.6, 3)
    assert set(three) == set(MASK_KEYS[3]) and sum(len(v) for v in three.values()) == n_uniform


def test_popularity_masks_are_nested_and_keep_groups():
    from data_prep.masks import draw_popularity_mask
    counts = _power_counts(1000, seed=4)
    lo, hi = draw_popularity_mask(counts, 0.4, 2), draw_popularity_mask(counts, 0.8, 2)
    assert set(_union(lo)) < set(_union(hi))
    for key in lo:
        assert set(lo[key]) <= set(hi[key])  # an item keeps its group at a higher ratio
    assert np.array_equal(_union(draw_popularity_mask(counts, 0.4, 2)), _union(lo))  # deterministic
    assert set(_union(draw_popularity_mask(counts, 0.4, 2, seed=1))) != set(_union(lo))


def test_per_modality_mask_ratios_groups_and_nesting():
    from data_prep.masks import draw_per_modality_mask
    counts = _counts(2000, seed=5)
    strata = item_strata(counts)
    g = draw_per_modality_mask(strata, {"v": 0.8, "t": 0.2}, ("v", "t"))
    miss = per_modality_missing(g, ("v", "t"), 2000)
    assert miss["v"].sum() == sum(int(0.8 * len(strata[k])) for k in STRATA)
    assert miss["t"].sum() == sum(int(0.2 * len(strata[k])) for k in STRATA)
    both = miss["v"] & miss["t"]
    assert np.array_equal(np.sort(g["all"]), np.flatnonzero(both))
    assert np.array_equal(np.sort(g["v"]), np.flatnonzero(miss["v"] & ~miss["t"]))
    # independent draws: about 0.8 * 0.2 of the items miss both
    assert abs(both.mean() - 0.16) < 0.03
    lower = per_modality_missing(draw_per_modality_mask(strata, {"v": 0.5, "t": 0.2}, ("v", "t")), ("v", "t"), 2000)
    assert not (lower["v"] & ~miss["v"]).any() and np.array_equal(lower["t"], miss["t"])
    # three modalities: pair groups are named by the modalities they lack; audio left out = 0
    g3 = draw_per_modality_mask(strata, {"v": 0.5, "t": 0.5}, ("v", "t", "a"))
    m3 = per_modality_missing(g3, ("v", "t", "a"), 2000)
    assert not m3["a"].any() and len(g3["tv"]) == (m3["v"] & m3["t"]).sum() and len(g3["all"]) == 0
    with pytest.raises(ValueError, match="unknown modality"):
        draw_per_modality_mask(strata, {"x": 0.5}, ("v", "t"))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\)"):
        draw_per_modality_mask(strata, {"v": 1.0}, ("v", "t"))
