"""Evaluation protocols: each owns the split, the candidate items and the imputation of a job.

A protocol turns a validated ``Dataset`` into the ``Task`` a model sees. Masking and imputation
happen here, before any model is built, so a model never receives the true features of a masked
item, nor (under ``new_items``) a training interaction of a new item.

* ``missing`` (paper Table 1): the full interaction file; masked rows imputed (``mean`` over the
  observed items by default, see ``benchmarks.core.imputation``, or left to models that handle
  missing modalities themselves).
* ``new_items`` (paper Table 2): training and validation rows from ``<name>_del.inter``; the test
  set is every test row of the full file plus the training rows of the new items (a new item's
  interactions are what it is tested on), restricted to users with training rows. New items are
  never negatives and are excluded from the imputation mean.
* ``missing_level``, ``missing_ratio``, ``retrieval`` and ``imputation`` train ``missing`` jobs:
  grouped by the number of missing modalities of the test item, over a sweep of ratios, with
  cross-modal retrieval of generated features, and once per imputation method.

Which items miss which modality (mechanism, ratio, mask) is ``benchmarks.core.missingness``.
"""
from __future__ import annotations

import numpy as np
import torch

from data_prep import masks as mask_lib
from data_prep.dataset import Dataset, Interactions, sha256_arrays
from data_prep.errors import DataError
from data_prep.modalities import Modalities

from benchmarks.core import imputation as imp
from benchmarks.core.missingness import (ProtocolError, dataset_modalities, masks_for, no_mask, normalize_mechanism,
                                         per_modality_ratios, per_modality_share, resolve_ratio)
from models.cache import ArtifactCache
from models.task import EvalSet, Task

IMPUTATIONS = imp.IMPUTATIONS
# The official configs write the imputation mode as a number.
_IMPUTATION_ALIASES = {0: "zero", 1: "mean", "0": "zero", "1": "mean"}
GENERATOR_MODEL = "DGMRec"  # whose generated features the ``generated`` imputation takes
POPULAR_SHARE = 0.2  # per-group results: the 20% most and least trained items


def normalize_imputation(value) -> str:
    v = _IMPUTATION_ALIASES.get(value, value)
    if v not in IMPUTATIONS:
        raise ProtocolError(f"missing_imputation must be one of {list(IMPUTATIONS)} (or 0/1 as in the official "
                            f"configs), got {value!r}")
    return v


def check_axes(dataset: Dataset, config: dict) -> None:
    """Refuse a bad imputation, mechanism or imputation parameter at plan time, before any job runs."""
    normalize_imputation(config.get("missing_imputation", "mean"))
    if normalize_mechanism(config) == "per_modality":
        per_modality_ratios(config, dataset.modalities)
    try:
        imp.ImputationParams.from_config(config)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    imputation_sweep(config)


def imputation_sweep(config: dict) -> list[str]:
    """The imputations the ``imputation`` protocol runs (``imputation_sweep``, default all)."""
    sweep = config.get("imputation_sweep") or list(IMPUTATIONS)
    if isinstance(sweep, str):
        sweep = [s.strip() for s in sweep.split(",") if s.strip()]
    return list(dict.fromkeys(normalize_imputation(s) for s in sweep))


def impute_features(x: np.ndarray, missing: np.ndarray, mode: str, exclude: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``x`` whose rows flagged ``missing`` are replaced; true values never survive.

    ``mean``: every missing row becomes the mean of the observed rows, leaving out the rows
    flagged in ``exclude`` (new items under the new-item protocol), as the reference does.
    ``zero``: missing rows become zero. With no observed row the mean is zero. The methods
    that need more than one table (kNN, graphs, generated) go through ``imputation.fill_all``.
    """
    if mode not in ("mean", "zero"):
        raise ProtocolError(f"unknown imputation {mode!r} for a single table (mean or zero)")
    missing = np.asarray(missing, dtype=bool)
    source = ~missing if exclude is None else (~missing & ~np.asarray(exclude, dtype=bool))
    return imp.fill_modality(x, missing, mode, source=source).x


def _cold_start_filter(users: np.ndarray, items: np.ndarray, train_users: np.ndarray, n_users: int):
    """Drop held-out rows of users with no training interaction (the reference does the same)."""
    has_train = np.zeros(n_users, dtype=bool)
    has_train[train_users] = True
    keep = has_train[users]
    return users[keep], items[keep]


class Protocol:
    name = ""
    # The protocol whose training jobs this one runs. The missing-family protocols (level,
    # ratio) train ordinary ``missing`` jobs, so their jobs share ids and records in the store.
    job_protocol = ""

    def ratios(self, dataset: Dataset, config: dict) -> list[float]:
        """The missing ratios this protocol runs a dataset at (one job per ratio). Under the
        per-modality mechanism: the share of items missing at least one modality."""
        if normalize_mechanism(config) == "per_modality":
            return [per_modality_share(dataset, config)]
        return [resolve_ratio(dataset, config.get("missing_ratio", "auto"))]

    def accepts(self, model_cls) -> bool:
        """Whether the protocol applies to a model (retrieval needs generated features)."""
        return True

    def variants(self, dataset: Dataset, config: dict, model_cls) -> list[dict]:
        """Configuration overrides, one set of jobs each (the imputation sweep)."""
        return [{}]

    def analyses(self, dataset: Dataset, task: Task, model_cls) -> dict:
        """Post-hoc analyses of a trained model that need data the model must never see."""
        return {}

    # -- the pieces each protocol combines
    def split(self, dataset: Dataset) -> tuple[Interactions, EvalSet, EvalSet, np.ndarray, dict]:
        raise NotImplementedError

    def build_task(self, dataset: Dataset, config: dict, model_cls, ratio: float,
                   device: torch.device | str = "cpu", cache: ArtifactCache | None = None,
                   generated: dict | None = None) -> Task:
        """The task of one job. ``generated``: ``{modality: (item ids, rows)}`` from a trained
        DGMRec, for the ``generated`` imputation. Under ``test_only`` the returned task has
        complete features and carries the masked task in ``test_task``."""
        train, valid, test, new_items, extra = self.split(dataset)
        mechanism = normalize_mechanism(config)
        per = per_modality_ratios(config, dataset.modalities) if mechanism == "per_modality" else None
        groups = masks_for(dataset, ratio, train_counts=np.bincount(train.items[train.labels == 0],
                                                                    minlength=dataset.n_items),
                           new_items=new_items, cache=cache, mechanism=mechanism, per_modality=per)
        parts = (dataset, config, model_cls, train, valid, test, new_items, extra, device, cache, generated, mechanism)
        if mechanism != "test_only":
            return self._assemble(*parts, groups)
        masked = self._assemble(*parts, groups)
        task = self._assemble(*parts, no_mask(dataset_modalities(dataset)))
        # what is measured at test time is grouped by the test-time mask
        task.test_task, task.extra_eval, task.item_groups = masked, masked.extra_eval, masked.item_groups
        return task

    def _assemble(self, dataset, config, model_cls, train, valid, test, new_items, extra, device, cache,
                  generated, mechanism, groups) -> Task:
        modalities = Modalities.resolve(dataset.modalities, groups)
        missing = mask_lib.per_modality_missing(groups, modalities, dataset.n_items)
        handles = getattr(model_cls, "handles_missing", "impute")
        imputation = "native" if handles == "native" else normalize_imputation(config.get("missing_imputation", "mean"))
        tr_users, tr_items = train.split(0)
        features, content, info = {}, {}, {}
        if getattr(model_cls, "uses_features", True):
            if not dataset.features:
                raise DataError(dataset.description or dataset.name,
                                f"model {getattr(model_cls, 'model_name', model_cls.__name__)} needs item features, "
                                f"but the dataset has no feature files (image_feat.npy, text_feat.npy[, audio_feat.npy])")
            filled = fill_features(dataset, missing, "zero" if imputation == "native" else imputation,
                                   new_items, (tr_users, tr_items, dataset.n_users, dataset.n_items),
                                   imp.ImputationParams.from_config(config), generated, cache)
            for m in modalities:
                x = filled[m].x
                content[f"features:{m}"] = sha256_arrays(x)
                features[m] = torch.from_numpy(x).to(device)
                info[m] = {"filled": filled[m].n_filled, "fallback": filled[m].n_fallback}
        content["train"] = sha256_arrays(tr_users, tr_items, np.array([dataset.n_users, dataset.n_items]))
        content["missing"] = sha256_arrays(*[missing[m] for m in modalities])
        content["new_items"] = sha256_arrays(new_items)
        extra_eval = {}
        for build in extra.values():
            extra_eval.update(build(test, groups, dataset.n_items))
        return Task(
            dataset=dataset.name, n_users=dataset.n_users, n_items=dataset.n_items,
            train_users=tr_users, train_items=tr_items, features=features, modalities=modalities,
            missing=missing, mask_groups=groups, new_items=new_items, valid=valid, test=test,
            imputation=imputation, extra_eval=extra_eval,
            device=torch.device(device), cache=cache, content_hash=content,
            item_groups=item_groups(missing, new_items, np.bincount(tr_items, minlength=dataset.n_items)),
            mechanism=mechanism, imputation_info=info)


def fill_features(dataset: Dataset, missing: dict, method: str, new_items: np.ndarray, train: tuple,
                  params: "imp.ImputationParams", generated: dict | None,
                  cache: ArtifactCache | None) -> dict[str, "imp.Filled"]:
    """The imputed feature tables; the kNN and graph methods are cached by the content of what
    they read (the masked tables, the missing flags, the training rows, the new items)."""
    if method == "generated" and generated is None:
        raise ProtocolError(f"missing_imputation 'generated' needs the features a trained {GENERATOR_MODEL} job "
                            f"generated; the runner trains that job first (python run_all.py --protocol imputation)")

    def build():
        return imp.fill_all(dataset.features, missing, method, exclude=new_items, train=train, params=params,
                            generated=generated)

    if cache is None or method in ("zero", "mean", "generated") or not any(missing[m].any() for m in missing):
        return build()

    def build_arrays():  # the cache stores arrays: each table with its two counts
        return {m: [f.x, np.array([f.n_filled, f.n_fallback])] for m, f in build().items()}

    masked = [np.where(missing[m][:, None], np.float32(0), dataset.features[m]) for m in dataset.modalities]
    key = {"features": sha256_arrays(*masked), "missing": sha256_arrays(*[missing[m] for m in dataset.modalities]),
           "train": sha256_arrays(*[np.asarray(t) for t in train]), "new_items": sha256_arrays(new_items),
           "method": method, "params": params.__dict__}
    stored = cache.get_or_build("imputed", key, build_arrays)
    return {m: imp.Filled(x, int(counts[0]), int(counts[1])) for m, (x, counts) in stored.items()}


def item_groups(missing: dict, new_items: np.ndarray, train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """The item groups every job reports test metrics for (flags over items; empty ones left out):
    complete vs missing >= 1 modality, new vs warm (new-item protocol), the 20% most / least
    trained items (stable order by training count, ties by item id)."""
    n = len(train_counts)
    any_missing = np.zeros(n, dtype=bool)
    for flags in missing.values():
        any_missing |= flags
    out = {}
    if any_missing.any():
        out["complete"], out["missing"] = ~any_missing, any_missing.copy()
    if new_items.any():
        out["new"], out["warm"] = new_items.copy(), ~new_items
    k = int(POPULAR_SHARE * n)
    if k:
        order = np.argsort(train_counts, kind="stable")
        pop, unpop = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        pop[order[-k:]], unpop[order[:k]] = True, True
        out["popular"], out["unpopular"] = pop, unpop
    return out


class MissingProtocol(Protocol):
    """Missing modalities (paper Table 1)."""
    name = "missing"
    job_protocol = "missing"

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
        from benchmarks.core.retrieval import RetrievalAnalysis
        out = {}
        if dataset.features and task.missing_modal and RetrievalAnalysis.applies_to(model_cls):
            out["retrieval"] = RetrievalAnalysis(dataset.features, task.mask_groups, dataset.n_items,
                                                 dataset.modalities)
        out.update(feature_quality_analyses(dataset, task, model_cls))
        return out


def missing_level_sets(test: EvalSet, groups: dict, n_items: int) -> dict[str, EvalSet]:
    """Test interactions grouped by the number of missing modalities of their item: each user's
    ground truth is restricted to their test items of one level (users without such an item drop
    out); the ranking itself is unchanged."""
    n_mod = Modalities.of_mask(groups).count
    levels = mask_lib.missing_level(groups, n_items, n_mod)
    return {f"test_level{lv}": test.restrict_items(f"test_level{lv}", levels == lv) for lv in range(n_mod + 1)}


def feature_quality_analyses(dataset: Dataset, task: Task, model_cls) -> dict:
    """Feature quality of the filled rows (and of generated ones) against the true features."""
    from benchmarks.core.feature_quality import FeatureQualityAnalysis
    shown = task.test_task if task.test_task is not None else task
    if dataset.features and shown.features and shown.missing_modal:
        return {"feature_quality": FeatureQualityAnalysis(dataset.features, shown, model_cls)}
    return {}


class MissingLevelProtocol(MissingProtocol):
    """Trains exactly the ``missing`` jobs (same ids, shared in the store); reports per level."""
    name = "missing_level"


class NewItemsProtocol(Protocol):
    """Missing modalities and new items (paper Table 2)."""
    name = "new_items"
    job_protocol = "new_items"

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

    def analyses(self, dataset: Dataset, task: Task, model_cls) -> dict:
        return feature_quality_analyses(dataset, task, model_cls)


class MissingRatioProtocol(MissingProtocol):
    """The ``missing`` jobs over a sweep of ratios with nested masks; ratio 0 means no masking."""
    name = "missing_ratio"
    default_sweep = (0.0, 0.2, 0.4, 0.6, 0.8)

    def ratios(self, dataset: Dataset, config: dict) -> list[float]:
        if normalize_mechanism(config) == "per_modality":
            raise ProtocolError("missing_ratio sweeps one ratio for every modality; the per_modality mechanism "
                                "sets one ratio per modality (run it under the missing protocol)")
        sweep = config.get("missing_ratio_sweep") or self.default_sweep
        official = resolve_ratio(dataset, config.get("missing_ratio", "auto"))
        out = sorted({float(r) for r in sweep} | {official})
        for r in out:
            resolve_ratio(dataset, r)
        return out


class RetrievalProtocol(MissingProtocol):
    """Trains the ``missing`` jobs of models that generate missing features (DGMRec) and reports
    cross-modal retrieval from their best-validation state."""
    name = "retrieval"

    def accepts(self, model_cls) -> bool:
        from benchmarks.core.retrieval import RetrievalAnalysis
        return RetrievalAnalysis.applies_to(model_cls)


class ImputationProtocol(MissingProtocol):
    """Trains the ``missing`` jobs of every model that takes imputed features once per imputation
    (``imputation_sweep``, default every method); the ``mean`` jobs are the ``missing`` jobs.
    The generating model itself runs every imputation but ``generated``."""
    name = "imputation"

    def accepts(self, model_cls) -> bool:
        return takes_imputed_features(model_cls)

    def variants(self, dataset: Dataset, config: dict, model_cls) -> list[dict]:
        sweep = imputation_sweep(config)
        own = getattr(model_cls, "model_name", "") == GENERATOR_MODEL
        # the sweep itself is no part of a job (null keys leave the identity): a mean job stays the missing job
        return [{"missing_imputation": m, "imputation_sweep": None} for m in sweep if not (own and m == "generated")]


def takes_imputed_features(model_cls) -> bool:
    return bool(getattr(model_cls, "uses_features", True)) and getattr(model_cls, "handles_missing", "impute") == "impute"


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (MissingProtocol(), NewItemsProtocol(), MissingLevelProtocol(),
                                                      MissingRatioProtocol(), RetrievalProtocol(),
                                                      ImputationProtocol())}
ALL_PROTOCOL_NAMES = tuple(PROTOCOLS)
# ``--protocol all``: the paper's protocols (the imputation sweep multiplies the feature models' jobs)
PAPER_PROTOCOL_NAMES = ("missing", "new_items", "missing_level", "missing_ratio", "retrieval")


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}, all")
    return PROTOCOLS[name]
