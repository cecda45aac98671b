"""Evaluation protocols: each owns the split, the masks, the candidate items and the imputation.

A protocol turns a validated ``Dataset`` into the ``Task`` a model sees. Masking and
imputation happen here, before any model is built, so a model never receives the true
features of a masked item, nor (under ``new_items``) a training interaction of a new item.

* ``missing`` (paper Table 1): the full interaction file; the dataset's official mask file
  at the configured ratio when present, else a mask drawn by the paper's stratified
  procedure; masked rows imputed (``mean`` over the observed items, ``zero``, or left to
  models that handle missing modalities themselves).
* ``new_items`` (paper Table 2): training rows from ``<name>_del.inter``; validation rows of
  that file; the test set is every test row of the full file plus the training rows of the
  new items, restricted to users with training rows (spec 4b). New items are never
  negatives and are excluded from the imputation mean.
* ``missing_level`` trains as ``missing`` and additionally evaluates test interactions
  grouped by the number of missing modalities of their item at each best-validation epoch.
* ``missing_ratio`` runs ``missing`` over a sweep of ratios with nested generated masks.
"""
from __future__ import annotations

import numpy as np
import torch

from data_prep import masks as mask_lib
from data_prep.dataset import MASK_KEYS, Dataset, Interactions, sha256_arrays
from data_prep.errors import DataError

from .cache import ArtifactCache
from .task import EvalSet, Task

IMPUTATIONS = ("mean", "zero")
# The official configs write the imputation mode as a number.
_IMPUTATION_ALIASES = {0: "zero", 1: "mean", "0": "zero", "1": "mean"}
TWO_THIRDS_TOLERANCE = 1e-3


class ProtocolError(ValueError):
    pass


def normalize_imputation(value) -> str:
    v = _IMPUTATION_ALIASES.get(value, value)
    if v not in IMPUTATIONS:
        raise ProtocolError(f"missing_imputation must be one of {list(IMPUTATIONS)} (or 0/1 as in the official "
                            f"configs), got {value!r}")
    return v


def impute_features(x: np.ndarray, missing: np.ndarray, mode: str, exclude: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``x`` whose rows flagged ``missing`` are replaced; true values never survive.

    ``mean``: every missing row becomes the mean of the observed rows, leaving out the rows
    flagged in ``exclude`` (new items under the new-item protocol), as the reference does.
    ``zero``: missing rows become zero. With no observed row the mean is zero.
    """
    out = np.array(x, dtype=np.float32, copy=True)
    if not missing.any():
        return out
    if mode == "mean":
        pool = ~missing if exclude is None else (~missing & ~exclude)
        fill = out[pool].mean(axis=0) if pool.any() else np.zeros(out.shape[1], np.float32)
    elif mode == "zero":
        fill = np.zeros(out.shape[1], np.float32)
    else:
        raise ProtocolError(f"unknown imputation {mode!r}")
    out[missing] = fill
    return out


def _cold_start_filter(users: np.ndarray, items: np.ndarray, train_users: np.ndarray, n_users: int):
    """Drop held-out rows of users with no training interaction (the reference does the same)."""
    has_train = np.zeros(n_users, dtype=bool)
    has_train[train_users] = True
    keep = has_train[users]
    return users[keep], items[keep]


def _ratio_key(ratio: float) -> str:
    return mask_lib.mask_file_ratio(ratio)


def _draw_ratio(ratio: float) -> float:
    """The official 0.666 files were drawn at exactly 2/3."""
    return 2.0 / 3.0 if abs(ratio - 2.0 / 3.0) < TWO_THIRDS_TOLERANCE else ratio


class Protocol:
    name = ""
    description = ""
    # The protocol whose training jobs this one runs. The missing-family protocols (level,
    # ratio) train ordinary ``missing`` jobs, so their jobs share ids and records in the store.
    job_protocol = ""

    def ratios(self, dataset: Dataset, config: dict) -> list[float]:
        """The missing ratios this protocol runs a dataset at (one job per ratio)."""
        return [resolve_ratio(dataset, config.get("missing_ratio", "auto"))]

    def accepts(self, model_cls) -> bool:
        """Whether the protocol applies to a model (retrieval needs generated features)."""
        return True

    def analyses(self, dataset: Dataset, task: Task, model_cls) -> dict:
        """Post-hoc analyses of a trained model that need data the model must never see."""
        return {}

    # -- the pieces each protocol combines
    def split(self, dataset: Dataset) -> tuple[Interactions, EvalSet, EvalSet, np.ndarray, dict]:
        raise NotImplementedError

    def build_task(self, dataset: Dataset, config: dict, model_cls, ratio: float,
                   device: torch.device | str = "cpu", cache: ArtifactCache | None = None) -> Task:
        train, valid, test, new_items, extra = self.split(dataset)
        groups = masks_for(dataset, ratio, train_counts=np.bincount(train.items[train.labels == 0],
                                                                    minlength=dataset.n_items),
                           new_items=new_items, cache=cache)
        modalities = dataset.modalities
        n_mod = len(modalities) or (3 if "a" in groups else 2)
        mod_codes = modalities or (("v", "t", "a") if n_mod == 3 else ("v", "t"))
        missing = mask_lib.per_modality_missing(groups, mod_codes, dataset.n_items)
        handles = getattr(model_cls, "handles_missing", "impute")
        imputation = "native" if handles == "native" else normalize_imputation(config.get("missing_imputation", "mean"))
        features, content = {}, {}
        if getattr(model_cls, "uses_features", True):
            if not modalities:
                raise DataError(dataset.description or dataset.name,
                                f"model {getattr(model_cls, 'model_name', model_cls.__name__)} needs item features, "
                                f"but the dataset has no feature files (image_feat.npy, text_feat.npy[, audio_feat.npy])")
            for m in modalities:
                mode = "zero" if imputation == "native" else imputation
                x = impute_features(dataset.features[m], missing[m], mode, exclude=new_items)
                content[f"features:{m}"] = sha256_arrays(x)
                features[m] = torch.from_numpy(x).to(device)
        tr_users, tr_items = train.split(0)
        content["train"] = sha256_arrays(tr_users, tr_items, np.array([dataset.n_users, dataset.n_items]))
        content["missing"] = sha256_arrays(*[missing[m] for m in mod_codes])
        content["new_items"] = sha256_arrays(new_items)
        extra_eval = {}
        for build in extra.values():
            extra_eval.update(build(test, groups, dataset.n_items))
        return Task(
            dataset=dataset.name, dataset_kind=dataset.kind, protocol=self.job_protocol,
            n_users=dataset.n_users, n_items=dataset.n_items,
            train_users=tr_users, train_items=tr_items, features=features, modalities=modalities,
            missing=missing, mask_groups=groups, new_items=new_items, valid=valid, test=test,
            missing_ratio=float(ratio), imputation=imputation, extra_eval=extra_eval,
            device=torch.device(device), cache=cache, content_hash=content)


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
              cache: ArtifactCache | None) -> dict[str, np.ndarray]:
    """The mask groups at ``ratio``: the shipped file when there is one, else the paper's draw.

    Ratio 0 means no masking at all. Generated masks use the paper's strata (new/old ×
    cold/warm) with its seeds, so higher ratios contain the lower ratios' missing items.
    """
    n_mod = len(dataset.modalities) or 2
    if ratio == 0:
        return {k: np.zeros(0, np.int64) for k in MASK_KEYS[n_mod]}
    key = _ratio_key(ratio)
    if key in dataset.masks:
        return dataset.masks[key]

    def build():
        strata = mask_lib.item_strata(train_counts_full(dataset, train_counts))
        return mask_lib.draw_missing_mask(strata, _draw_ratio(ratio), n_mod)

    if cache is None:
        return build()
    return cache.get_or_build("mask", {"dataset": dataset.fingerprint_digest(), "ratio": key,
                                       "n_modalities": n_mod, "seeds": [1111, 1225]}, build)


def train_counts_full(dataset: Dataset, fallback: np.ndarray) -> np.ndarray:
    """Training counts per item of the full file: the strata the paper draws masks from."""
    if dataset.inter is not None:
        return np.bincount(dataset.inter.items[dataset.inter.labels == 0], minlength=dataset.n_items)
    return fallback


class MissingProtocol(Protocol):
    name = "missing"
    job_protocol = "missing"
    description = "missing modalities (paper Table 1)"

    def split(self, dataset: Dataset):
        inter = dataset.inter
        if inter is None:
            raise DataError(f"{dataset.name}.inter", "the missing protocol needs the full interaction file; this "
                                                     "dataset folder only has the new-item split "
                                                     f"{dataset.name}_del.inter (see 'python -m data_prep download')")
        tr_u, _ = inter.split(0)
        valid = EvalSet.from_pairs("valid", *_cold_start_filter(*inter.split(1), tr_u, dataset.n_users))
        test = EvalSet.from_pairs("test", *_cold_start_filter(*inter.split(2), tr_u, dataset.n_users))
        return inter, valid, test, np.zeros(dataset.n_items, dtype=bool), {"levels": missing_level_sets}


    def analyses(self, dataset: Dataset, task: Task, model_cls) -> dict:
        from .retrieval import RetrievalAnalysis
        if dataset.features and task.missing_modal and RetrievalAnalysis.applies_to(model_cls):
            return {"retrieval": RetrievalAnalysis(dataset.features, task.mask_groups, dataset.n_items,
                                                   dataset.modalities)}
        return {}


def missing_level_sets(test: EvalSet, groups: dict, n_items: int) -> dict[str, EvalSet]:
    """Test interactions grouped by the number of missing modalities of their item (spec 4c).

    Each user's ground truth is restricted to their test items of one level; users without
    such an item drop out; the ranking itself is unchanged.
    """
    n_mod = 3 if {"a", "tv", "ta", "va"} & set(groups) else 2
    levels = mask_lib.missing_level(groups, n_items, n_mod)
    return {f"test_level{lv}": test.restrict_items(f"test_level{lv}", levels == lv) for lv in range(n_mod + 1)}


class MissingLevelProtocol(MissingProtocol):
    """Trains exactly the ``missing`` jobs (same ids, shared in the store); reports per level."""
    name = "missing_level"
    description = "missing modalities, test interactions grouped by the number of missing modalities of their item"


class NewItemsProtocol(Protocol):
    name = "new_items"
    job_protocol = "new_items"
    description = "missing modalities and new items (paper Table 2)"

    def split(self, dataset: Dataset):
        full, split = dataset.inter, dataset.del_inter
        if full is None:
            raise DataError(f"{dataset.name}.inter", "the new-item protocol needs the full interaction file: its test "
                                                     "set holds the training rows of new items taken from it")
        if split is None:
            # No shipped split: draw new items by the paper's procedure and remove their training rows.
            counts = np.bincount(full.items[full.labels == 0], minlength=dataset.n_items)
            drawn = mask_lib.draw_new_items(counts)
            split = mask_lib.new_item_split(full, drawn)
        tr_u, tr_i = split.split(0)
        if dataset.new_items is not None:
            new_items = np.zeros(dataset.n_items, dtype=bool)
            new_items[dataset.new_items] = True
        else:
            # The reference convention: every item without a training row in the split is new.
            new_items = np.bincount(tr_i, minlength=dataset.n_items) == 0
        if np.bincount(tr_i[new_items[tr_i]], minlength=1).sum():
            bad = int(tr_i[new_items[tr_i]][0])
            raise DataError(split.source, f"new item {bad} (from new_items.npy) has training rows in the new-item split")
        valid = EvalSet.from_pairs("valid", *_cold_start_filter(*split.split(1), tr_u, dataset.n_users))
        te_u, te_i = full.split(2)
        f_u, f_i = full.split(0)
        moved = new_items[f_i]
        test_u = np.concatenate([te_u, f_u[moved]])
        test_i = np.concatenate([te_i, f_i[moved]])
        test = EvalSet.from_pairs("test", *_cold_start_filter(test_u, test_i, tr_u, dataset.n_users))
        return split, valid, test, new_items, {}


class MissingRatioProtocol(MissingProtocol):
    name = "missing_ratio"
    description = "missing-ratio sweep with nested masks; ratio 0 means no masking"
    default_sweep = (0.0, 0.2, 0.4, 0.6, 0.8)

    def ratios(self, dataset: Dataset, config: dict) -> list[float]:
        sweep = config.get("missing_ratio_sweep") or self.default_sweep
        official = resolve_ratio(dataset, config.get("missing_ratio", "auto"))
        out = sorted({float(r) for r in sweep} | {official})
        for r in out:
            resolve_ratio(dataset, r)
        return out


class RetrievalProtocol(MissingProtocol):
    """Trains the ``missing`` jobs of models that generate missing features (DGMRec) and reports
    cross-modal retrieval (spec 4e) from their best-validation state."""
    name = "retrieval"
    description = "cross-modal retrieval with generated features (Hit@10, Hit@20)"

    def accepts(self, model_cls) -> bool:
        from .retrieval import RetrievalAnalysis
        return RetrievalAnalysis.applies_to(model_cls)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (MissingProtocol(), NewItemsProtocol(), MissingLevelProtocol(),
                                                      MissingRatioProtocol(), RetrievalProtocol())}
ALL_PROTOCOL_NAMES = ("missing", "new_items", "missing_level", "missing_ratio", "retrieval")


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        known = ", ".join(PROTOCOLS)
        if name in ALL_PROTOCOL_NAMES:
            raise ProtocolError(f"protocol {name!r} is not available yet (needs DGMRec's generated features); "
                                f"available: {known}")
        raise ProtocolError(f"unknown protocol {name!r}; known: {known}, all")
    return PROTOCOLS[name]
