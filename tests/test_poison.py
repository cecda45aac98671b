"""No registered model can see what the protocol hides.

For every model in the registry (so a newly added model is checked automatically): set the
true features of masked items to NaN or huge sentinels in the raw data, and (new-item
protocol) move the training interactions of new items in the full file to other items;
training and scoring must be bit-identical to a run on the clean data (the same check on CUDA,
through ``benchmarks.experiments.leakage``, is in ``test_cuda.py``). The same holds for
every imputation method and missingness mechanism (the task a model receives is
bit-identical), for the features a DGMRec trained on poisoned data generates for another
model, and for the test-time copy of every feature model under ``test_only``.
"""

import numpy as np
import pytest
import torch

from benchmarks.run.config import expand_grid, resolve
from benchmarks.core.engine import seed_everything
from benchmarks.experiments.leakage import one_epoch, poison_rows, poisoned
from benchmarks.core.protocols import IMPUTATIONS, get_protocol
from data_prep.synthetic import make_replica
from models.registry import entries

SCALE = 0.02
_DATA = {}


pytestmark = pytest.mark.usefixtures("one_thread")


def replica(kind):
    if kind not in _DATA:
        _DATA[kind] = make_replica(kind, scale=SCALE, seed=7)
    return _DATA[kind]


MODELS = [e.name for e in entries() if not e.name.startswith("Test")]


@pytest.mark.parametrize("kind", ["baby", "tiktok"])
@pytest.mark.parametrize("protocol_name", ["missing", "new_items"])
@pytest.mark.parametrize("model", MODELS)
def test_masked_features_and_new_item_interactions_are_invisible(model, kind, protocol_name):
    entry = next(e for e in entries() if e.name == model)
    clean, bad = poisoned(replica(kind), protocol_name)
    loss_a, scores_a = one_epoch(entry, clean, protocol_name)
    loss_b, scores_b = one_epoch(entry, bad, protocol_name)
    assert np.isfinite(loss_a) and torch.isfinite(scores_a).all()
    assert loss_a == loss_b
    assert torch.equal(scores_a, scores_b)


# --------------------------------------------------------------------------- every imputation and mechanism

class FeatureModel:
    """The protocol reads only these class attributes: a stand-in for every model taking imputed features."""
    uses_features = True
    handles_missing = "impute"
    model_name = "FeatureModel"


MECHANISMS = {"uniform": {}, "popularity": {"missing_mechanism": "popularity"},
              "per_modality": {"missing_ratio_per_modality": {"image": 0.8, "text": 0.3}},
              "test_only": {"missing_mechanism": "test_only"}}
FILL_METHODS = [m for m in IMPUTATIONS if m != "generated"]


@pytest.mark.parametrize("kind", ["baby", "tiktok"])
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_no_imputation_or_mechanism_lets_a_masked_feature_through(kind, mechanism):
    ds = replica(kind)
    protocol = get_protocol("missing")
    for method in FILL_METHODS:
        cfg = dict(MECHANISMS[mechanism], missing_imputation=method)
        ratio = protocol.ratios(ds, cfg)[0]
        clean = protocol.build_task(ds, cfg, FeatureModel, ratio)
        shown = clean.test_task if mechanism == "test_only" else clean
        assert shown.missing_modal
        bad = poison_rows(ds, shown.missing)
        task = protocol.build_task(bad, cfg, FeatureModel, ratio)
        seen = task.test_task if mechanism == "test_only" else task
        for m in ds.modalities:
            assert torch.isfinite(seen.features[m]).all(), (method, m)
            assert torch.equal(seen.features[m], shown.features[m]), (method, m)
        if mechanism == "test_only":  # training sees the complete (true) features, by design
            assert not clean.missing_modal
            assert all(torch.equal(clean.features[m], torch.from_numpy(ds.features[m])) for m in ds.modalities)


def test_generated_features_carry_no_masked_feature_to_another_model():
    """DGMRec trained on poisoned data generates bit-identical features; another model given them
    trains and scores bit-identically."""
    dgm = next(e for e in entries() if e.name == "DGMRec")
    vbpr = next(e for e in entries() if e.name == "VBPR")
    clean, bad = poisoned(replica("baby"), "missing")
    gen = []
    for ds in (clean, bad):
        model = one_epoch(dgm, ds, "missing", return_model=True)
        with torch.no_grad():
            gen.append({m: (ids, f.clone()) for m, (ids, f) in model.generated_features().items()})
    for m in gen[0]:
        assert len(gen[0][m][0]) > 0 and np.array_equal(gen[0][m][0], gen[1][m][0])
        assert torch.isfinite(gen[0][m][1]).all() and torch.equal(gen[0][m][1], gen[1][m][1])
    runs = [one_epoch(vbpr, ds, "missing", sets={"missing_imputation": "generated"},
                      generated={m: (ids, f.numpy()) for m, (ids, f) in g.items()}) for ds, g in zip((clean, bad), gen)]
    assert np.isfinite(runs[0][0]) and runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])


FEATURE_MODELS = [e.name for e in entries() if not e.name.startswith("Test") and e.cls.uses_features]


@pytest.mark.parametrize("model", FEATURE_MODELS)
def test_test_only_scoring_copy_keeps_no_masked_feature(model):
    """test_only: the trained model starts from the complete (here poisoned) features; the copy that
    scores the test set must hold none of the masked rows: scores equal those on clean data."""
    from benchmarks.core.masked_copy import build_pair
    entry = next(e for e in entries() if e.name == model)
    ds = replica("tiktok")
    cfg = expand_grid(resolve(entry, ds.kind, {"missing_mechanism": "test_only"}, quick=True), entry.cls.list_params)[0]
    protocol = get_protocol("missing")
    ratio = protocol.ratios(ds, cfg)[0]
    missing = protocol.build_task(ds, cfg, FeatureModel, ratio).test_task.missing
    scores = []
    for data in (ds, poison_rows(ds, missing)):
        seed_everything(5)
        task = protocol.build_task(data, cfg, entry.cls, ratio)
        trained, copy_ = build_pair(entry.cls, cfg, task)
        scorer = copy_.sync(trained)
        scorer.pre_evaluation()
        scorer.eval()
        with torch.no_grad():
            scorer.begin_scoring()
            scores.append(scorer.full_sort_predict(torch.arange(min(50, task.n_users))))
            scorer.end_scoring()
    assert torch.isfinite(scores[0]).all()
    assert torch.equal(scores[0], scores[1])
