"""New items and missing-modality masks, generated the way the official DGMRec scripts do.

The official release ships the masks and the new-item splits for the real datasets, but
the procedures that made them (the release's ``data/preprocess_new_items.py`` and
``data/preprocess_missing_modality.py``) are needed whenever a file is not shipped: masks
at other ratios for the missing-ratio analysis (the release ships only 0.666 for Amazon
and 0.6, 0.75 for TikTok), and everything for synthetic replicas. This module reimplements
those procedures with numpy, keeping the random streams of the official code wherever
that is possible, so that:

* the item strata (new/old x cold/warm) come from one seeded draw (seed 1111);
* the missing items of every stratum are a prefix of one seeded permutation (seed 1225),
  so for fixed strata the missing sets are nested across ratios (the set at 0.4 is a
  subset of the set at 0.6), which is what makes a missing-ratio curve a curve and not
  a sequence of unrelated masks;
* the split of the missing items into modality groups has the sizes of the shipped files.

Reproducibility caveat: the official scripts sort items by training count with pandas'
default (unstable) quicksort, so the order of items with equal counts, and with it every
drawn set, depends on the pandas/numpy build. The shipped files therefore cannot be
regenerated bit for bit (rerunning the recipe on tiktok.inter with other sort kinds gave
overlaps with the shipped sets at chance level). Here the sort is stable (ties in item-id
order), which makes the result a deterministic function of the counts.
"""
from __future__ import annotations

import numpy as np

from .dataset import Interactions, check_mask
from .modalities import MASK_KEYS, Modalities

STRATA = ("new_cold", "new_warm", "old_cold", "old_warm")

# How the drawn items of one stratum are cut into groups: consecutive equal parts, and
# the group each part goes to. Two modalities: quarters (official script). Three
# modalities: ninths (inferred from the shipped TikTok sizes; the script is not released).
_PARTS = {
    2: ("t", "v", "all", "all"),
    3: ("t", "v", "a", "tv", "ta", "va", "all", "all", "all"),
}

_TWO_THIRDS_TOL = 1e-3


# --------------------------------------------------------------------------- new items

def item_strata(train_counts: np.ndarray, seed: int = 1111, cold_fraction: float = 0.7,
                new_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Split items into the four strata new-cold, new-warm, old-cold, old-warm.

    Both the new items and the missing items are drawn per stratum so that each is spread
    evenly over rarely and often trained items; otherwise a random draw could, by chance,
    put most new or missing items among the long tail and change what a table measures.

    ``train_counts[i]`` is the number of training interactions of item i (length n_items).
    The items sorted by count (ascending, stable) are cut after ``int(cold_fraction*n)``
    into cold and warm; a ``RandomState(seed)`` then draws ``int(new_fraction*|cold|)``
    new-cold and ``int(new_fraction*|warm|)`` new-warm items with legacy
    ``choice(..., replace=False)``, in that order, as the official script does with the
    global ``np.random.seed``. The new strata keep the draw order (it feeds the mask
    draw); the old strata are sorted ids (the official ``np.setdiff1d``).
    """
    counts = np.asarray(train_counts)
    if counts.ndim != 1:
        raise ValueError(f"train_counts must be a 1-D array (one count per item), got shape {counts.shape}")
    if not 0.0 <= cold_fraction <= 1.0 or not 0.0 <= new_fraction <= 1.0:
        raise ValueError(f"cold_fraction and new_fraction must lie in [0, 1], got {cold_fraction}, {new_fraction}")
    n = len(counts)
    order = np.argsort(counts, kind="stable").astype(np.int64)
    n_cold = int(n * cold_fraction)
    cold, warm = order[:n_cold], order[n_cold:]
    rs = np.random.RandomState(seed)
    new_cold = rs.choice(cold, size=int(new_fraction * len(cold)), replace=False).astype(np.int64)
    new_warm = rs.choice(warm, size=int(new_fraction * len(warm)), replace=False).astype(np.int64)
    return {
        "new_cold": new_cold,
        "new_warm": new_warm,
        "old_cold": np.setdiff1d(cold, new_cold).astype(np.int64),
        "old_warm": np.setdiff1d(warm, new_warm).astype(np.int64),
    }


def draw_new_items(train_counts: np.ndarray, seed: int = 1111) -> np.ndarray:
    """The new items of the new-item protocol: new-cold and new-warm together, sorted.

    The official ``new_items.npy`` stores them in draw order; only the set matters to
    every consumer (graph masking, imputation mean, test set), so they are sorted here.
    """
    s = item_strata(train_counts, seed=seed)
    return np.sort(np.concatenate((s["new_cold"], s["new_warm"]))).astype(np.int64)


def new_item_split(inter: Interactions, new_items: np.ndarray) -> Interactions:
    """The ``<name>_del.inter`` rows: the full file minus every training row of a new item.

    Validation and test rows are kept unchanged, as in the shipped ``_del`` files (the
    release's script would re-append the removed rows with label 0, making them training
    rows again; the files, not the script, are authoritative). The removed rows become
    part of the new-item test set, which is built from the full file elsewhere.
    """
    is_new = np.zeros(max(int(inter.items.max(initial=-1)), int(np.max(new_items, initial=-1))) + 1, dtype=bool)
    is_new[np.asarray(new_items, dtype=np.int64)] = True
    keep = ~((inter.labels == 0) & is_new[inter.items])
    return Interactions(inter.users[keep], inter.items[keep], inter.labels[keep],
                        source=f"{inter.source} (new-item split)")


# --------------------------------------------------------------------------- masks

def mask_file_ratio(ratio: float) -> str:
    """The ratio as it appears in ``missing_items_<ratio>.npy``.

    The official scripts name files by ``str()`` of the Python float ('0.6', '0.75'),
    except that 2/3 is written '0.666'. Any ratio within 1e-3 of 2/3 maps to '0.666' so
    that 0.666, 0.6667 and 2/3 all name the shipped Amazon file.
    """
    r = float(ratio)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"a missing ratio must lie in [0, 1], got {ratio}")
    if abs(r - 2 / 3) < _TWO_THIRDS_TOL:
        return "0.666"
    return str(r)


def _effective_ratio(ratio: float) -> float:
    # The '0.666' file is made with missing_ratio = 2/3 (only its name is 0.666); using
    # 0.666 itself would draw fewer items (4693 instead of 4700 for baby).
    r = float(ratio)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"a missing ratio must lie in [0, 1], got {ratio}")
    return 2 / 3 if abs(r - 2 / 3) < _TWO_THIRDS_TOL else r


def _cut(arr: np.ndarray, k: int) -> list[np.ndarray]:
    # Boundaries floor(i*len/k), in integers. For k=4 this equals the official
    # int(i * (len/4)) exactly (len/4 is exact in binary floating point).
    bounds = (np.arange(k + 1) * len(arr)) // k
    return [arr[bounds[i]:bounds[i + 1]] for i in range(k)]


def draw_missing_mask(strata: dict, ratio: float, n_modalities: int, seed: int = 1225,
                      n_items: int | None = None) -> dict[str, np.ndarray]:
    """Missing-modality groups at a missing ratio (fraction of items lacking >=1 modality).

    Each stratum (in the order new-cold, new-warm, old-cold, old-warm) contributes
    ``int(ratio*|stratum|)`` items, the prefix of one ``RandomState(seed)`` permutation of
    the stratum. Legacy ``choice(replace=False)`` is exactly such a prefix and consumes
    the same random numbers whatever the size, so masks at different ratios over the same
    strata are nested. Each stratum's drawn items are cut into consecutive equal parts
    (quarters for 2 modalities: t, v, all, all; ninths for 3: t, v, a, tv, ta, va, all,
    all, all), so that every modality is missing for the same share of items and the
    groups are balanced over the strata. Groups are concatenated part by part, stratum by
    stratum within a part, as the official script does.

    A ratio within 1e-3 of 2/3 is treated as exactly 2/3 (the file named '0.666').
    ``n_items`` (default: the number of items in the strata) is used for validation.
    """
    if n_modalities not in _PARTS:
        raise ValueError(f"masks need 2 or 3 modalities, got {n_modalities}")
    missing = [k for k in STRATA if k not in strata]
    if missing:
        raise ValueError(f"strata lack {missing}; expected keys {list(STRATA)} (see item_strata)")
    r = _effective_ratio(ratio)
    parts = _PARTS[n_modalities]
    rs = np.random.RandomState(seed)
    cut = []
    for name in STRATA:
        stratum = np.asarray(strata[name], dtype=np.int64)
        drawn = rs.permutation(stratum)[: int(r * len(stratum))]
        cut.append(_cut(drawn, len(parts)))
    groups: dict[str, list[np.ndarray]] = {k: [] for k in MASK_KEYS[n_modalities]}
    for p, key in enumerate(parts):
        for pieces in cut:
            groups[key].append(pieces[p])
    out = {k: np.concatenate(v).astype(np.int64) for k, v in groups.items()}
    if n_items is None:
        n_items = sum(len(strata[k]) for k in STRATA)
    return check_mask(out, n_items, n_modalities, f"missing_items_{mask_file_ratio(ratio)}.npy")


def per_modality_missing(groups: dict, modalities: tuple, n_items: int) -> dict[str, np.ndarray]:
    """For each modality m, a boolean vector over items: True where m is missing.

    Group keys name the missing modalities ('tv' lacks text and image), and 'all' lacks
    every modality; so m is missing in 'all' and in every group whose key contains m.
    This is the ``Miss_m`` every model's ``preprocess_missing_modal`` builds.
    """
    out = {}
    for m in modalities:
        miss = np.zeros(n_items, dtype=bool)
        for key, ids in groups.items():
            if key == "all" or m in key:
                miss[np.asarray(ids, dtype=np.int64)] = True
        out[m] = miss
    return out


def missing_level(groups: dict, n_items: int, n_modalities: int | None = None) -> np.ndarray:
    """Number of missing modalities of every item (0 complete ... n for 'all').

    Used by the missing-level analysis, which groups test interactions by this level of
    their item: Amazon 0/1/2, TikTok 0/1/2/3. The number of modalities is read from the
    keys (any audio group means 3) unless given.
    """
    n_mod = n_modalities or Modalities.of_mask(groups).count
    level = np.zeros(n_items, dtype=np.int8)
    for key, ids in groups.items():
        level[np.asarray(ids, dtype=np.int64)] = n_mod if key == "all" else len(key)
    return level


# --------------------------------------------------------------------------- other missingness mechanisms

def _groups_from_sets(missing_sets: dict[str, np.ndarray], modalities: tuple, n_items: int,
                      source: str) -> dict[str, np.ndarray]:
    """Mask groups from per-modality missing flags: the group key names the missing modalities
    ('tv' lacks text and image) and 'all' lacks every one, as in the shipped files."""
    n_mod = len(modalities)
    if n_mod not in _PARTS:
        raise ValueError(f"masks need 2 or 3 modalities, got {modalities}")
    code = np.zeros(n_items, dtype=np.int64)
    for j, m in enumerate(modalities):
        code |= np.asarray(missing_sets[m], dtype=bool).astype(np.int64) << j
    groups = {}
    for key in MASK_KEYS[n_mod]:
        lacks = set(modalities) if key == "all" else set(key)
        want = sum(1 << j for j, m in enumerate(modalities) if m in lacks)
        groups[key] = np.flatnonzero(code == want).astype(np.int64)
    return check_mask(groups, n_items, n_mod, source)


def draw_popularity_mask(train_counts: np.ndarray, ratio: float, n_modalities: int, seed: int = 1225,
                         strata: dict | None = None) -> dict[str, np.ndarray]:
    """Missing-modality groups where rarely interacted items lose modalities more often.

    The number of missing items is the uniform draw's (``int(ratio*|stratum|)`` summed over the
    paper's strata, so both mechanisms mask the same share of the catalogue). The items are a
    weighted draw without replacement, weight ``1 / (1 + training count)``, by the
    Efraimidis-Spirakis keys ``log(u) / w`` of one ``RandomState(seed)`` stream: the drawn set at
    a ratio is a prefix of one fixed ranking, so masks are nested across ratios. Drawn items go
    to the groups round-robin in draw order (2 modalities: t, v, all, all; 3: the ninths of the
    uniform draw), so every group has the same popularity profile and an item keeps its group
    at every ratio.
    """
    counts = np.asarray(train_counts)
    if counts.ndim != 1:
        raise ValueError(f"train_counts must be a 1-D array (one count per item), got shape {counts.shape}")
    if n_modalities not in _PARTS:
        raise ValueError(f"masks need 2 or 3 modalities, got {n_modalities}")
    if (counts < 0).any():
        raise ValueError("train_counts must be non-negative")
    r = _effective_ratio(ratio)
    strata = item_strata(counts) if strata is None else strata
    n_missing = sum(int(r * len(strata[k])) for k in STRATA)
    rs = np.random.RandomState(seed)
    u = rs.random_sample(len(counts))
    keys = np.log(np.maximum(u, np.finfo(float).tiny)) * (1.0 + counts.astype(np.float64))
    drawn = np.argsort(-keys, kind="stable")[:n_missing].astype(np.int64)
    parts = _PARTS[n_modalities]
    slot = np.arange(len(drawn)) % len(parts)
    groups = {k: drawn[np.isin(slot, [p for p, key in enumerate(parts) if key == k])]
              for k in MASK_KEYS[n_modalities]}
    return check_mask(groups, len(counts), n_modalities, f"popularity mask at ratio {mask_file_ratio(ratio)}")


def draw_per_modality_mask(strata: dict, ratios: dict[str, float], modalities: tuple, seed: int = 1225,
                           n_items: int | None = None) -> dict[str, np.ndarray]:
    """Each modality missing independently at its own ratio (e.g. image 0.8, text 0.2).

    Modality j of ``modalities`` draws, in every stratum of the paper (new/old x cold/warm),
    ``int(ratios[m]*|stratum|)`` items: a prefix of one ``RandomState(seed + j)`` permutation
    of the stratum, so a modality's missing set is nested across its ratios and spread evenly
    over rarely and often trained items. An item's group names the modalities it lost.
    """
    missing = [k for k in STRATA if k not in strata]
    if missing:
        raise ValueError(f"strata lack {missing}; expected keys {list(STRATA)} (see item_strata)")
    unknown = sorted(set(ratios) - set(modalities))
    if unknown:
        raise ValueError(f"per-modality ratios name unknown modality(ies) {unknown}; the data has {list(modalities)}")
    if n_items is None:
        n_items = sum(len(strata[k]) for k in STRATA)
    sets = {}
    for j, m in enumerate(modalities):
        r = float(ratios.get(m, 0.0))
        if not 0.0 <= r < 1.0:
            raise ValueError(f"the missing ratio of modality {m!r} must lie in [0, 1), got {r}")
        rs = np.random.RandomState(seed + j)
        flags = np.zeros(n_items, dtype=bool)
        for name in STRATA:
            stratum = np.asarray(strata[name], dtype=np.int64)
            flags[rs.permutation(stratum)[: int(r * len(stratum))]] = True
        sets[m] = flags
    label = ", ".join(f"{m} {float(ratios.get(m, 0.0)):g}" for m in modalities)
    return _groups_from_sets(sets, tuple(modalities), n_items, f"per-modality mask ({label})")
