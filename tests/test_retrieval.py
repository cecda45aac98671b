"""Cross-modal retrieval analysis on hand-made features."""
import numpy as np
import pytest
import torch

from benchmarks.core.retrieval import RetrievalAnalysis


class Generator:
    def __init__(self, out):
        self.out = out

    def generated_features(self):
        return self.out


def test_perfect_and_nearest_neighbour_retrieval():
    rng = np.random.default_rng(0)
    n = 40
    v = rng.normal(size=(n, 8)).astype(np.float32)
    t = rng.normal(size=(n, 5)).astype(np.float32)
    t[1] = t[30]  # item 1's text equals item 30's: NN of item 1 by image is item 30 if images match too
    v[30] = v[1] + 0.001
    groups = {"t": np.array([1, 2]), "v": np.array([3]), "all": np.array([4])}
    a = RetrievalAnalysis({"v": v, "t": t}, groups, n, ("v", "t"))
    # generated = the true features: each query ranks its own item first
    gen = {"t": (np.array([1, 2]), torch.from_numpy(t[[1, 2]])), "v": (np.array([3]), torch.from_numpy(v[[3]])),}
    out = a.finalize(a.capture(Generator(gen)))
    assert out["missing1_dgmrec_hit@10"] == 1.0
    assert out["n_queries_missing1_t"] == 2 and out["n_queries_missing1_v"] == 1
    # item 1's nearest fully observed neighbour by image is item 30, whose text is item 1's text
    # (tied similarity: the true item 1 is not beaten by anything), so the NN baseline hits for it
    def cos(a, b):
        return (a / np.linalg.norm(a, axis=-1, keepdims=True)) @ (b / np.linalg.norm(b, axis=-1, keepdims=True)).T

    full = np.setdiff1d(np.arange(n), [1, 2, 3, 4])
    hits = []
    for i, m, o in ((1, t, v), (2, t, v), (3, v, t)):  # (query item, missing modality, observed modality)
        j = full[np.argmax(cos(o[i], o[full]))]
        sims = cos(m[j], m)
        hits.append((sims > sims[i]).sum() < 10)
    assert hits[0]  # item 1: neighbour 30 carries item 1's own text
    assert out["missing1_nn_hit@10"] == pytest.approx(np.mean(hits))
    # generated = a far-away vector: rank of the truth among 40 items is not in the top 10 w.h.p.
    bad = {"t": (np.array([2]), torch.from_numpy(-t[[2]]))}
    out = a.finalize(a.capture(Generator(bad)))
    assert out["missing1_dgmrec_hit@10"] == 0.0


def test_missing_two_has_no_nn_baseline_with_two_modalities():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(20, 4)).astype(np.float32)
    t = rng.normal(size=(20, 3)).astype(np.float32)
    groups = {"t": np.array([0]), "v": np.array([1]), "all": np.array([2, 3])}
    a = RetrievalAnalysis({"v": v, "t": t}, groups, 20, ("v", "t"))
    gen = {"t": (np.array([2, 3]), torch.from_numpy(t[[2, 3]]))}
    out = a.finalize(a.capture(Generator(gen)))
    assert out["missing2_dgmrec_hit@20"] == 1.0
    assert "missing2_nn_hit@10" not in out  # no observed modality to find a neighbour with
