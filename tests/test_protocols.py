"""Protocols: masking and imputation before any model, split counts against the official release's TikTok data."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.lightgcn import LightGCN
from baselines.mfbpr import MFBPR
from benchmarks.core.protocols import get_protocol, impute_features, ProtocolError, normalize_imputation
from data_prep.dataset import load_folder
from models.base import Recommender


class FeatureModel(Recommender):
    """Stands in for any feature-using model: the protocol only looks at class attributes."""
    uses_features = True


class NativeModel(Recommender):
    uses_features = True
    handles_missing = "native"


@pytest.fixture(scope="module")
def tiktok(reference_dir):
    """The reference TikTok data: its tests skip where ../shared is absent and fail in CI (CI=true)."""
    return load_folder(reference_dir, "tiktok", source="reference")


def test_impute_mean_zero_and_exclusion():
    x = np.array([[1., 2.], [3., 4.], [100., 100.], [5., 6.]], np.float32)
    miss = np.array([False, False, True, False])
    new = np.array([False, False, False, True])
    out = impute_features(x, miss, "mean")
    assert out[2].tolist() == [3., 4.]  # mean of rows 0, 1, 3
    out = impute_features(x, miss, "mean", exclude=new)
    assert out[2].tolist() == [2., 3.]  # new item 3 left out of the mean
    assert impute_features(x, miss, "zero")[2].tolist() == [0., 0.]
    assert x[2].tolist() == [100., 100.]  # the input is never modified
    assert normalize_imputation(1) == "mean" and normalize_imputation(0) == "zero"
    with pytest.raises(ProtocolError, match="missing_imputation"):
        normalize_imputation("median")


@pytest.mark.parametrize("protocol", ["missing", "new_items"])
@pytest.mark.parametrize("model_cls", [FeatureModel, NativeModel])
def test_true_values_of_masked_features_never_reach_a_model(tiktok, protocol, model_cls):
    clean = get_protocol(protocol).build_task(tiktok, {}, model_cls, 0.6)
    poisoned = copy.copy(tiktok)
    poisoned.features = {m: x.copy() for m, x in tiktok.features.items()}
    for m, x in poisoned.features.items():
        rows = clean.missing[m]
        assert rows.sum() > 2000
        x[rows[: len(x)]] = np.float32(3e38)
        x[np.flatnonzero(rows)[::2]] = np.nan
    task = get_protocol(protocol).build_task(poisoned, {}, model_cls, 0.6)
    for m in tiktok.modalities:
        assert torch.isfinite(task.features[m]).all()
        assert torch.equal(task.features[m], clean.features[m])
        if model_cls is NativeModel:
            assert (task.features[m][torch.from_numpy(clean.missing[m])] == 0).all()


def test_missing_protocol_counts(tiktok):
    task = get_protocol("missing").build_task(tiktok, {}, LightGCN, 0.6)
    assert task.features == {}  # a collaborative model gets no features at all
    assert len(task.train_users) == 59541
    assert (len(task.valid), len(task.test)) == (6125, 3046)  # cold-start users dropped
    assert task.missing["v"].sum() == 1343 + 447 + 447 + 448  # all, v, tv, va
    assert not task.new_items.any()


def test_new_items_protocol_counts_match_the_official_split(tiktok):
    """The official new-item split of TikTok: 13,238 test interactions of 4,316 users (the training rows
    of new items included); 5,668 validation users."""
    task = get_protocol("new_items").build_task(tiktok, {}, MFBPR, 0.6)
    assert len(task.train_users) == 48292
    assert not task.new_items[task.train_items].any()  # no training row of a new item
    assert (len(task.test), task.test.n_interactions) == (4316, 13238)
    assert len(task.valid) == 5668
    # every training row of the full file whose item is new was moved into the test set
    full = tiktok.inter
    moved = (full.labels == 0) & task.new_items[full.items]
    assert moved.sum() == 11249  # the rows the official tiktok_del.inter leaves out of the full file


def test_new_item_mean_excludes_new_items(tiktok):
    task = get_protocol("new_items").build_task(tiktok, {}, FeatureModel, 0.6)
    miss, new = task.missing["t"], task.new_items
    expected = tiktok.features["t"][~miss & ~new].mean(axis=0)
    got = task.features["t"][torch.from_numpy(miss)][0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_missing_level_groups_match_the_official_mask(tiktok):
    """TikTok at ratio 0.6 with the official mask: test interactions of items missing 0, 1, 2 and 3
    modalities: 1087 / 607 / 753 / 599."""
    task = get_protocol("missing_level").build_task(tiktok, {}, LightGCN, 0.6)
    counts = [task.extra_eval[f"test_level{lv}"].n_interactions for lv in range(4)]
    assert counts == [1087, 607, 753, 599]


def test_ratio_zero_means_no_masking(tiktok):
    task = get_protocol("missing").build_task(tiktok, {}, FeatureModel, 0.0)
    assert not any(m.any() for m in task.missing.values())
    assert torch.equal(task.features["v"], torch.from_numpy(tiktok.features["v"]))


def test_unknown_protocol():
    with pytest.raises(ProtocolError, match="unknown protocol"):
        get_protocol("nope")


def test_masked_and_unmasked_runs_never_share_a_cached_artefact(tiktok, tmp_path):
    from models.cache import ArtifactCache
    from models.graphs.knn import knn_graph
    from models.graphs.user_item import ui_adjacency

    cache = ArtifactCache(tmp_path / "cache")
    full = get_protocol("missing").build_task(tiktok, {}, FeatureModel, 0.0, cache=cache)
    masked = get_protocol("missing").build_task(tiktok, {}, FeatureModel, 0.6, cache=cache)
    new = get_protocol("new_items").build_task(tiktok, {}, FeatureModel, 0.6, cache=cache)

    def graph(task):
        return task.cached("knn", {"k": 10}, ("features:a", "missing"), lambda: knn_graph(task.features["a"], 10))

    g_full, g_masked = graph(full), graph(masked)
    assert cache.misses == 2 and cache.hits == 0  # different inputs, different keys
    assert (g_full != g_masked).nnz > 0
    graph(masked)
    assert cache.hits == 1
    # a fresh process-level cache reads the same files back from disk
    again = ArtifactCache(tmp_path / "cache")
    masked.cache = again
    assert (graph(masked) != g_masked).nnz == 0 and again.hits == 1
    # the user-item adjacency of the new-item split is not the full one
    ui_adjacency(full), ui_adjacency(new)
    assert [k for k, _, status in cache.log if k == "ui_sym"].count("ui_sym") == 2
    assert len({key for kind, key, _ in cache.log if kind == "ui_sym"}) == 2


# --------------------------------------------------------------------------- mechanisms, groups, imputation protocol

def test_mechanism_keys_and_their_errors():
    from benchmarks.core.protocols import normalize_mechanism, per_modality_ratios
    assert normalize_mechanism({}) == "uniform"
    assert normalize_mechanism({"missing_ratio_per_modality": {"image": 0.5}}) == "per_modality"
    assert per_modality_ratios({"missing_ratio_per_modality": {"image": 0.8, "Text": 0.2}}, ("v", "t")) == \
        {"v": 0.8, "t": 0.2}
    with pytest.raises(ProtocolError, match="missing_mechanism must be one of"):
        normalize_mechanism({"missing_mechanism": "random"})
    with pytest.raises(ProtocolError, match="needs missing_ratio_per_modality"):
        normalize_mechanism({"missing_mechanism": "per_modality"})
    with pytest.raises(ProtocolError, match="applies to missing_mechanism per_modality only"):
        normalize_mechanism({"missing_mechanism": "popularity", "missing_ratio_per_modality": {"v": 0.2}})
    with pytest.raises(ProtocolError, match="unknown modality 'audio'"):
        per_modality_ratios({"missing_ratio_per_modality": {"audio": 0.2}}, ("v", "t"))
    with pytest.raises(ProtocolError, match=r"must lie in \[0, 1\)"):
        per_modality_ratios({"missing_ratio_per_modality": {"v": 1.2}}, ("v", "t"))
    with pytest.raises(ProtocolError, match="missing_imputation must be one of"):
        normalize_imputation("median")


def test_item_groups_against_a_hand_count():
    from benchmarks.core.protocols import item_groups
    missing = {"v": np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0], bool), "t": np.array([0, 1, 0, 0, 0, 1, 0, 0, 0, 0], bool)}
    new = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], bool)
    counts = np.array([5, 0, 3, 9, 1, 2, 7, 4, 0, 0])
    g = item_groups(missing, new, counts)
    assert np.flatnonzero(g["missing"]).tolist() == [0, 1, 5]
    assert np.flatnonzero(g["complete"]).tolist() == [2, 3, 4, 6, 7, 8, 9]
    assert np.flatnonzero(g["new"]).tolist() == [8, 9] and g["warm"].sum() == 8
    # 20% of 10 items = 2: most trained 3 (9) and 6 (7); least: the zeros 1, 8 (ties by item id)
    assert np.flatnonzero(g["popular"]).tolist() == [3, 6] and np.flatnonzero(g["unpopular"]).tolist() == [1, 8]
    assert set(item_groups({"v": np.zeros(10, bool)}, np.zeros(10, bool), counts)) == {"popular", "unpopular"}


class FixedScores(torch.nn.Module):
    """Scores item i as 10 - i for every user: the ranking is 0, 1, 2, ..."""
    device = torch.device("cpu")

    def begin_scoring(self):
        pass

    def end_scoring(self):
        pass

    def full_sort_predict(self, users):
        return (10.0 - torch.arange(6, dtype=torch.float32)).expand(len(users), -1).clone()


def test_group_metrics_and_exposure_against_a_hand_count():
    from benchmarks.core.evaluation import Evaluator
    from models.task import EvalSet, Task
    test = EvalSet.from_pairs("test", np.array([0, 0, 1, 1, 2]), np.array([1, 4, 2, 5, 3]))
    task = Task("d", 3, 6, np.array([0, 1, 2]), np.array([0, 0, 0]), {}, (), {}, {},
                np.zeros(6, bool), test, test)
    ev = Evaluator(task, topk=(2,), metrics=("recall",))
    groups = {"missing": np.array([0, 1, 0, 1, 0, 0], bool)}
    means, _, _, g = ev.evaluate_groups(FixedScores(), test, groups, exposure_k=2)
    # item 0 is every user's training item: each top-2 list is items 1, 2
    assert means["recall@2"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    # group "missing" (items 1, 3): user 0 holds item 1 (hit), user 2 holds item 3 (miss), user 1 none
    assert g.users["missing"].tolist() == [0, 2] and g.counts["missing"] == (2, 2)
    assert g.vectors["missing"]["recall@2"].tolist() == [1.0, 0.0]
    # exposure: 3 of the 6 top-2 slots are item 1 (missing); the group is 2 of 6 items
    assert g.exposure["missing"] == {"top2_share": 0.5, "catalogue_share": pytest.approx(1 / 3)}


def test_test_only_trains_on_complete_features_and_tests_masked_ones():
    from data_prep.synthetic import make_replica
    ds = make_replica("baby", scale=0.02, seed=7)
    task = get_protocol("missing_level").build_task(ds, {"missing_mechanism": "test_only"}, FeatureModel, 0.666)
    plain = get_protocol("missing_level").build_task(ds, {}, FeatureModel, 0.666)
    assert not task.missing_modal and torch.equal(task.features["v"], torch.from_numpy(ds.features["v"]))
    assert task.test_task.missing_modal
    assert all(torch.equal(task.test_task.features[m], plain.features[m]) for m in ds.modalities)
    assert task.extra_eval["test_level2"].n_interactions == plain.extra_eval["test_level2"].n_interactions > 0
    assert np.array_equal(task.item_groups["missing"], plain.item_groups["missing"])


def test_imputation_protocol_sweeps_models_that_take_imputed_features():
    from benchmarks.core.protocols import imputation_sweep
    from models.registry import get
    p = get_protocol("imputation")
    assert not p.accepts(LightGCN) and p.accepts(FeatureModel) and not p.accepts(NativeModel)
    vbpr, dgm = get("VBPR").cls, get("DGMRec").cls
    methods = [v["missing_imputation"] for v in p.variants(None, {}, vbpr)]
    assert all(v["imputation_sweep"] is None for v in p.variants(None, {}, vbpr))
    assert methods == ["zero", "mean", "feature_knn", "graph_mean", "multi_hop", "ppr", "heat", "generated"]
    assert "generated" not in [v["missing_imputation"] for v in p.variants(None, {}, dgm)]
    assert imputation_sweep({"imputation_sweep": "mean, ppr"}) == ["mean", "ppr"]
