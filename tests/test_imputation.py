"""Imputation methods (benchmarks.core.imputation) on hand-built cases, against hand computations."""
import math

import numpy as np
import pytest
import scipy.linalg as sla

from benchmarks.core.imputation import (ImputationParams, co_interaction_graph, fill_all, fill_modality,
                                   sym_normalised)

S2 = math.sqrt(2.0)
# A path 0-1-2-3-4 of co-interactions: user u interacted with items u and u + 1.
PATH_USERS = np.array([0, 0, 1, 1, 2, 2, 3, 3])
PATH_ITEMS = np.array([0, 1, 1, 2, 2, 3, 3, 4])
X = np.array([[1.0, 0.0], [50.0, 50.0], [3.0, 1.0], [70.0, 70.0], [5.0, 2.0]], np.float32)  # rows 1, 3 "true"


def path_graph():
    return co_interaction_graph(PATH_USERS, PATH_ITEMS, 4, 5, k=20)


def fill(method, observed, **params):
    missing = ~np.isin(np.arange(5), observed)
    return fill_modality(X, missing, method, source=~missing, graph=path_graph(), params=ImputationParams(**params))


def test_co_interaction_graph_keeps_the_top_k_links_symmetrised():
    assert path_graph().toarray().tolist() == [[0, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 1],
                                               [0, 0, 0, 1, 0]]
    # item 0 shares 3 users with item 1, 2 with item 2, 1 with item 3; item 3 shares one user with 0 only
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    items = np.array([0, 1, 0, 1, 0, 1, 0, 2, 0, 2, 0, 3])
    a = co_interaction_graph(users, items, 6, 4, k=2).toarray()
    # top 2 of item 0: items 1 and 2; item 3 keeps its only link (0), and symmetry adds 0-3 back
    assert a[0].tolist() == [0, 1, 1, 1] and a[3].tolist() == [1, 0, 0, 0]
    a1 = co_interaction_graph(users, items, 6, 4, k=1).toarray()
    # k=1: 0 keeps 1; 1 keeps 0; 2 keeps 0; 3 keeps 0 -> row 0 gains 2 and 3 by symmetry
    assert a1.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]


def test_graph_mean_and_one_step_propagation_by_hand():
    out = fill("graph_mean", [0, 2, 4])
    np.testing.assert_allclose(out.x[1], [2.0, 0.5])  # mean of items 0 and 2
    np.testing.assert_allclose(out.x[3], [4.0, 1.5])  # mean of items 2 and 4
    assert out.n_filled == 2 and out.n_fallback == 0
    # D^-1/2 A D^-1/2 on the path (degrees 1, 2, 2, 2, 1): row 1 = x0/sqrt(2) + x2/2; observed rows reset
    out = fill("multi_hop", [0, 2, 4], hops=3)
    np.testing.assert_allclose(out.x[1], [1 / S2 + 1.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out.x[3], [1.5 + 5 / S2, 0.5 + 2 / S2], rtol=1e-6)
    np.testing.assert_array_equal(out.x[[0, 2, 4]], X[[0, 2, 4]])


def test_multi_hop_reach_and_fallback_by_hand():
    mean = (X[0] + X[4]) / 2
    one = fill("multi_hop", [0, 4], hops=1)
    np.testing.assert_allclose(one.x[1], X[0] / S2, rtol=1e-6)
    np.testing.assert_allclose(one.x[3], X[4] / S2, rtol=1e-6)
    np.testing.assert_allclose(one.x[2], mean)  # no observed item within one hop: the mean
    assert one.n_fallback == 1
    two = fill("multi_hop", [0, 4], hops=2)
    np.testing.assert_allclose(two.x[2], (X[0] + X[4]) / (2 * S2), rtol=1e-6)
    np.testing.assert_allclose(two.x[1], X[0] / S2, rtol=1e-6)
    assert two.n_fallback == 0
    gm = fill("graph_mean", [0, 4])
    np.testing.assert_allclose(gm.x[[1, 2, 3]], [X[0], mean, X[4]])  # item 2 has no observed neighbour


@pytest.mark.parametrize("method,params", [("ppr", {"alpha": 0.5}), ("heat", {"heat_t": 1.0})])
def test_diffusions_are_the_normalised_kernel_mean(method, params):
    """Oracle: the dense kernel (matrix inverse / expm) of H = D~^-1/2 (A + I) D~^-1/2."""
    a = path_graph().toarray().astype(float) + np.eye(5)
    d = np.diag(a.sum(1) ** -0.5)
    h = d @ a @ d
    if method == "ppr":
        k = 0.5 * np.linalg.inv(np.eye(5) - 0.5 * h)
    else:
        k = sla.expm(-1.0 * (np.eye(5) - h))
    observed = np.array([1, 0, 0, 0, 1], float)
    x0 = X * observed[:, None]
    expected = (k @ x0) / (k @ observed)[:, None]
    out = fill(method, [0, 4], **params)
    np.testing.assert_allclose(out.x[[1, 2, 3]], expected[[1, 2, 3]], rtol=1e-6)
    # a convex combination of the observed rows: item 2 sits in the middle
    np.testing.assert_allclose(out.x[2], (X[0] + X[4]) / 2, rtol=1e-6)


def test_sym_normalised_isolated_rows_are_empty():
    g = co_interaction_graph(np.array([0, 0]), np.array([0, 1]), 1, 3, k=5)
    n = sym_normalised(g).toarray()
    assert n.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]


def test_graph_methods_fall_back_for_items_without_links():
    users, items = np.array([0, 0]), np.array([0, 1])  # item 2 has no training row
    x = np.array([[1.0], [3.0], [99.0]], np.float32)
    feats = {"v": x, "t": x.copy()}
    miss = {"v": np.array([False, False, True]), "t": np.zeros(3, bool)}
    for method in ("graph_mean", "multi_hop", "ppr", "heat"):
        out = fill_all(feats, miss, method, train=(users, items, 1, 3))
        assert out["v"].x[2].tolist() == [2.0] and out["v"].n_fallback == 1, method


def test_feature_knn_uses_observed_modalities_only():
    v = np.array([[1., 0.], [0., 1.], [1., 1.], [99., 99.], [77., 77.]], np.float32)
    t = np.array([[1., 0.], [0.1, 1.], [0., -1.], [0., 1.], [5., 5.]], np.float32)
    feats = {"v": v, "t": t}
    miss = {"v": np.array([False, False, False, True, True]), "t": np.array([False, False, False, False, True])}
    one = fill_all(feats, miss, "feature_knn", params=ImputationParams(k=1))
    assert one["v"].x[3].tolist() == [0., 1.]  # t of item 3 is closest to item 1's
    np.testing.assert_allclose(one["v"].x[4], [2 / 3, 2 / 3])  # item 4 has no modality: the mean of items 0-2
    assert one["v"].n_fallback == 1
    two = fill_all(feats, miss, "feature_knn", params=ImputationParams(k=2))
    np.testing.assert_allclose(two["v"].x[3], [0.5, 0.5])  # items 1 and 0 (item 2's t points away)
    # an excluded item (a new item) is no candidate
    ex = fill_all(feats, miss, "feature_knn", params=ImputationParams(k=1), exclude=np.array([0, 1, 0, 0, 0], bool))
    assert ex["v"].x[3].tolist() == [1., 0.]
    # a masked row of the other modality never serves: item 4's t is masked
    assert not np.isin(77.0, ex["t"].x)


def test_generated_rows_and_their_checks():
    x = np.array([[1.0], [2.0], [99.0], [98.0]], np.float32)
    miss = np.array([False, False, True, True])
    out = fill_modality(x, miss, "generated", source=~miss, generated=(np.array([2]), np.array([[7.0]], np.float32)))
    assert out.x[:, 0].tolist() == [1.0, 2.0, 7.0, 1.5] and out.n_fallback == 1  # item 3 not generated: mean
    with pytest.raises(ValueError, match="observed in this modality"):
        fill_modality(x, miss, "generated", source=~miss, generated=(np.array([0]), np.array([[7.0]], np.float32)))
    with pytest.raises(ValueError, match="non-finite"):
        fill_modality(x, miss, "generated", source=~miss, generated=(np.array([2]), np.array([[np.nan]], np.float32)))
    with pytest.raises(ValueError, match="needs the generated features"):
        fill_modality(x, miss, "generated", source=~miss)


def test_params_from_config_defaults_and_errors():
    assert ImputationParams.from_config({}) == ImputationParams(k=20, hops=3, alpha=0.1, heat_t=5.0)
    assert ImputationParams.from_config({"imputation_k": 5, "imputation_alpha": 0.3}).k == 5
    with pytest.raises(ValueError, match="imputation_k must be a positive integer"):
        ImputationParams.from_config({"imputation_k": 0})
    with pytest.raises(ValueError, match="imputation_alpha must lie in"):
        ImputationParams.from_config({"imputation_alpha": 1.5})


@pytest.mark.parametrize("method", ["ppr", "feature_knn"])
def test_cached_imputations_are_served_from_the_artefact_cache(method, tmp_path):
    """A method the protocol caches builds its tables once; a second job reads the same tables and
    counts back from disk (a fresh cache object, as in another worker process)."""
    from benchmarks.core.protocols import get_protocol
    from baselines.vbpr import VBPR
    from data_prep.synthetic import make_replica
    from models.cache import ArtifactCache

    ds = make_replica("baby", scale=0.02)
    cfg = {"missing_imputation": method}
    caches = [ArtifactCache(tmp_path), ArtifactCache(tmp_path)]
    built, read = (get_protocol("missing").build_task(ds, cfg, VBPR, 0.666, cache=c) for c in caches)
    uncached = get_protocol("missing").build_task(ds, cfg, VBPR, 0.666)
    assert [how for k, _, how in caches[0].log if k == "imputed"] == ["miss"]
    assert [how for k, _, how in caches[1].log if k == "imputed"] == ["hit"]
    for task in (built, read):
        assert task.imputation_info == uncached.imputation_info
        assert task.imputation_info["v"]["filled"] > 0
        for m in ds.modalities:
            assert np.array_equal(task.features[m].numpy(), uncached.features[m].numpy())
