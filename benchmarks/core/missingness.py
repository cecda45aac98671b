"""Which items miss which modality in a job: the missingness mechanism, the missing ratio and the
mask groups.

Mechanisms (``missing_mechanism``; null is ``uniform``): ``uniform`` (the paper's stratified draw,
or the shipped mask file), ``popularity`` (rarely interacted items lose modalities more often, the
same share of the catalogue), ``per_modality`` (each modality missing at its own ratio,
``missing_ratio_per_modality``) and ``test_only`` (training sees complete features; the uniform
mask applies at test time only, see ``benchmarks.core.masked_copy``).
"""
from __future__ import annotations

import numpy as np

from data_prep import masks as mask_lib
from data_prep.dataset import Dataset
from data_prep.modalities import Modalities
from models.cache import ArtifactCache

MECHANISMS = ("uniform", "popularity", "per_modality", "test_only")
MODALITY_NAMES = {"v": "v", "image": "v", "visual": "v", "t": "t", "text": "t", "textual": "t",
                  "a": "a", "audio": "a", "acoustic": "a"}
# The seeds of the paper's draws (new items, then masks); part of every cached mask's key.
MASK_SEEDS = [1111, 1225]


class ProtocolError(ValueError):
    pass


def dataset_modalities(dataset: Dataset) -> Modalities:
    """The modalities of a dataset: its feature tables, or for a folder without any, what its
    shipped masks speak of."""
    return Modalities.resolve(dataset.modalities, (k for groups in dataset.masks.values() for k in groups))


def no_mask(modalities: Modalities) -> dict[str, np.ndarray]:
    """Mask groups in which no item misses anything."""
    return {k: np.zeros(0, np.int64) for k in modalities.mask_keys}


def normalize_mechanism(config: dict) -> str:
    """The missingness mechanism of a configuration (null: uniform; per-modality ratios alone
    imply per_modality)."""
    v = config.get("missing_mechanism")
    per = config.get("missing_ratio_per_modality")
    if v is None:
        v = "per_modality" if per else "uniform"
    if v not in MECHANISMS:
        raise ProtocolError(f"missing_mechanism must be one of {list(MECHANISMS)} (null means uniform), got {v!r}")
    if v == "per_modality" and not per:
        raise ProtocolError("missing_mechanism per_modality needs missing_ratio_per_modality, e.g. "
                            "--set 'missing_ratio_per_modality={image: 0.8, text: 0.2}'")
    if per and v != "per_modality":
        raise ProtocolError(f"missing_ratio_per_modality is set but missing_mechanism is {v!r}; "
                            f"it applies to missing_mechanism per_modality only")
    return v


def per_modality_ratios(config: dict, modalities: tuple) -> dict[str, float]:
    """``missing_ratio_per_modality`` as {modality code: ratio}; names such as image/text accepted."""
    raw = config.get("missing_ratio_per_modality")
    if not isinstance(raw, dict) or not raw:
        raise ProtocolError(f"missing_ratio_per_modality must be a mapping modality -> ratio, e.g. "
                            f"{{image: 0.8, text: 0.2}}, got {raw!r}")
    out = {}
    for key, value in raw.items():
        m = MODALITY_NAMES.get(str(key).lower())
        if m is None or (modalities and m not in modalities):
            raise ProtocolError(f"missing_ratio_per_modality: unknown modality {key!r}; the dataset has "
                                f"{list(modalities)} (v = image, t = text, a = audio)")
        if m in out:
            raise ProtocolError(f"missing_ratio_per_modality names modality {m!r} twice")
        try:
            r = float(value)
        except (TypeError, ValueError):
            raise ProtocolError(f"missing_ratio_per_modality: the ratio of {key!r} must be a number, "
                                f"got {value!r}") from None
        if not 0.0 <= r < 1.0:
            raise ProtocolError(f"missing_ratio_per_modality: the ratio of {key!r} must lie in [0, 1), got {r}")
        out[m] = r
    return out


def resolve_ratio(dataset: Dataset, value) -> float:
    """``auto`` means the dataset's own mask file when it ships exactly one, else 2/3."""
    if value in (None, "auto"):
        if len(dataset.masks) == 1:
            return float(next(iter(dataset.masks)))
        return 0.666
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise ProtocolError(f"missing_ratio must be a number in [0, 1) or 'auto', got {value!r}") from None
    if not 0.0 <= r < 1.0:
        raise ProtocolError(f"missing_ratio must lie in [0, 1), got {r}")
    return r


def masks_for(dataset: Dataset, ratio: float, train_counts: np.ndarray, new_items: np.ndarray,
              cache: ArtifactCache | None, mechanism: str = "uniform",
              per_modality: dict | None = None) -> dict[str, np.ndarray]:
    """The mask groups at ``ratio`` under a missingness mechanism.

    ``uniform`` and ``test_only``: the shipped file when there is one, else the paper's draw
    (its strata new/old × cold/warm with its seeds, so higher ratios contain the lower ratios'
    missing items). ``popularity``: ``masks.draw_popularity_mask`` (nested too).
    ``per_modality``: ``masks.draw_per_modality_mask`` at the given ratios (``ratio`` is then
    only the resulting share). Ratio 0 means no masking at all.
    """
    mods = dataset_modalities(dataset)
    n_mod = mods.count
    if mechanism == "per_modality":
        if not per_modality:
            raise ProtocolError("the per_modality mechanism needs missing_ratio_per_modality")

        def build_per():
            strata = mask_lib.item_strata(train_counts_full(dataset, train_counts))
            return mask_lib.draw_per_modality_mask(strata, per_modality, mods)

        if cache is None:
            return build_per()
        return cache.get_or_build("mask", {"dataset": dataset.fingerprint_digest(), "mechanism": mechanism,
                                           "ratios": dict(sorted(per_modality.items())), "n_modalities": n_mod,
                                           "seeds": MASK_SEEDS}, build_per)
    if ratio == 0:
        return no_mask(mods)
    key = mask_lib.mask_file_ratio(ratio)
    if mechanism in ("uniform", "test_only") and key in dataset.masks:
        return dataset.masks[key]

    def build():
        counts = train_counts_full(dataset, train_counts)
        strata = mask_lib.item_strata(counts)
        if mechanism == "popularity":
            return mask_lib.draw_popularity_mask(counts, ratio, n_mod, strata=strata)
        return mask_lib.draw_missing_mask(strata, ratio, n_mod)  # both draw a ratio near 2/3 at exactly 2/3

    if mechanism not in ("uniform", "test_only", "popularity"):
        raise ProtocolError(f"unknown missing_mechanism {mechanism!r}")
    if cache is None:
        return build()
    description = {"dataset": dataset.fingerprint_digest(), "ratio": key, "n_modalities": n_mod, "seeds": MASK_SEEDS}
    if mechanism == "popularity":  # the uniform key stays as it was, so existing cache entries still serve
        description["mechanism"] = mechanism
    return cache.get_or_build("mask", description, build)


def per_modality_share(dataset: Dataset, config: dict) -> float:
    """The share of items missing at least one modality under the per-modality mechanism (the
    ``missing_ratio`` such jobs record), rounded to 4 decimals."""
    per = per_modality_ratios(config, dataset.modalities)
    inter = dataset.inter if dataset.inter is not None else dataset.del_inter
    counts = np.bincount(inter.items[inter.labels == 0], minlength=dataset.n_items)
    groups = masks_for(dataset, 0.0, counts, np.zeros(dataset.n_items, bool), None, "per_modality", per)
    return round(sum(len(v) for v in groups.values()) / dataset.n_items, 4)


def train_counts_full(dataset: Dataset, fallback: np.ndarray) -> np.ndarray:
    """Training counts per item of the full file: the strata the paper draws masks from."""
    if dataset.inter is not None:
        return np.bincount(dataset.inter.items[dataset.inter.labels == 0], minlength=dataset.n_items)
    return fallback
