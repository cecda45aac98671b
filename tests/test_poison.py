"""No registered model can see what the protocol hides.

For every model in the registry (so a newly added model is checked automatically): set the
true features of masked items to NaN or huge sentinels in the raw data, and (new-item
protocol) move the training interactions of new items in the full file to other items;
training and scoring must be bit-identical to a run on the clean data (``benchmarks.leakage``;
the same check on CUDA is in ``test_cuda.py``).
"""
import numpy as np
import pytest
import torch

from benchmarks.leakage import one_epoch, poisoned
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
