"""No registered model can see what the protocol hides.

For every model in the registry (so a newly added model is checked automatically): set the
true features of masked items to NaN or huge sentinels in the raw data, and (new-item
protocol) move the training interactions of new items in the full file to other items;
training and scoring must be bit-identical to a run on the clean data.
"""
import copy

import numpy as np
import pytest
import torch

from benchmarks.config import expand_grid, resolve
from benchmarks.engine import seed_everything
from benchmarks.protocols import get_protocol
from benchmarks.sampling import BPRSampler
from data_prep.dataset import Interactions
from data_prep.synthetic import make_replica
from models.registry import entries

SCALE = 0.02
_DATA = {}


pytestmark = pytest.mark.usefixtures("one_thread")


def replica(kind):
    if kind not in _DATA:
        _DATA[kind] = make_replica(kind, scale=SCALE, seed=7)
    return _DATA[kind]


def poisoned(ds, protocol_name):
    bad = copy.copy(ds)
    ratio = "0.666" if len(ds.modalities) == 2 else "0.6"
    groups = ds.masks[ratio]
    from data_prep.masks import per_modality_missing
    missing = per_modality_missing(groups, ds.modalities, ds.n_items)
    bad.features = {}
    for i, (m, x) in enumerate(ds.features.items()):
        x = x.copy()
        rows = np.flatnonzero(missing[m])
        x[rows[::2]] = np.nan
        x[rows[1::2]] = np.float32(1e30) * (i + 1)
        bad.features[m] = x
    if protocol_name == "new_items":
        full = ds.inter
        new = np.zeros(ds.n_items, bool)
        new[np.bincount(ds.del_inter.items[ds.del_inter.labels == 0], minlength=ds.n_items) == 0] = True
        items = full.items.copy()
        moved = (full.labels == 0) & new[items]
        assert moved.any()
        items[moved] = np.flatnonzero(new)[(np.arange(moved.sum()) * 7) % new.sum()]  # other new items
        bad.inter = Interactions(full.users, items, full.labels, full.source)
        # keep the new-item set fixed: it is an input of the protocol, not a secret
        bad.new_items = np.flatnonzero(new)
        ds = copy.copy(ds)
        ds.new_items = np.flatnonzero(new)
        return ds, bad
    return ds, bad


def run_one_epoch(entry, ds, protocol_name):
    cfg = resolve(entry, ds.kind, {"train_batch_size": 256}, quick=True)
    cfg = expand_grid(cfg, entry.cls.list_params)[0]
    protocol = get_protocol(protocol_name)
    rng = seed_everything(5)
    task = protocol.build_task(ds, cfg, entry.cls, protocol.ratios(ds, cfg)[0])
    model = entry.cls(cfg, task)
    opt = torch.optim.Adam(model.optimizer_parameters(), lr=1e-3)
    sampler = BPRSampler(task, rng)
    model.train()
    model.pre_epoch(0)
    for users, pos, neg in sampler.epoch(256):
        loss = model.calculate_loss(users, pos, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.pre_evaluation()
    model.eval()
    with torch.no_grad():
        model.begin_scoring()
        scores = model.full_sort_predict(torch.arange(min(50, task.n_users)))
        model.end_scoring()
    return float(loss), scores


MODELS = [e.name for e in entries() if not e.name.startswith("Test")]


@pytest.mark.parametrize("kind", ["baby", "tiktok"])
@pytest.mark.parametrize("protocol_name", ["missing", "new_items"])
@pytest.mark.parametrize("model", MODELS)
def test_masked_features_and_new_item_interactions_are_invisible(model, kind, protocol_name):
    entry = next(e for e in entries() if e.name == model)
    clean, bad = poisoned(replica(kind), protocol_name)
    loss_a, scores_a = run_one_epoch(entry, clean, protocol_name)
    loss_b, scores_b = run_one_epoch(entry, bad, protocol_name)
    assert np.isfinite(loss_a) and torch.isfinite(scores_a).all()
    assert loss_a == loss_b
    assert torch.equal(scores_a, scores_b)
