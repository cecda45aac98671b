"""Poisoned inputs: what a protocol hides must not reach a model, on any device.

``poisoned(ds, protocol)`` returns a dataset pair (clean, poisoned): in the poisoned one the true
features of masked items are NaN or huge sentinels and, under the new-item protocol, the training
interactions of new items in the full file are moved to other new items. A model that sees only
what the protocol lets through trains and scores identically on both (``one_epoch``). On the CPU
the two runs are bit-identical; on a GPU some kernels (atomic scatter-adds) sum in a varying
order, so ``check_leak`` accepts a rounding-level difference there, while a leak shows as
non-finite values or a difference of the size of the sentinels.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from data_prep.dataset import Interactions


def poison_rows(ds, missing: dict):
    """A copy of ``ds`` whose rows flagged in ``missing`` (modality -> bool flags) are NaN or a
    huge sentinel (a different one per modality), alternately."""
    bad = copy.copy(ds)
    bad.features = {}
    for i, (m, x) in enumerate(ds.features.items()):
        x = x.copy()
        rows = np.flatnonzero(missing[m])
        x[rows[::2]] = np.nan
        x[rows[1::2]] = np.float32(1e30) * (i + 1)
        bad.features[m] = x
    return bad


def poisoned(ds, protocol_name: str):
    """(clean, poisoned) copies of ``ds`` for ``protocol_name`` (``missing`` or ``new_items``)."""
    from data_prep.masks import per_modality_missing
    ratio = "0.6" if ds.modalities.has_audio else "0.666"  # the official ratio: TikTok's, else the Amazon one
    bad = poison_rows(ds, per_modality_missing(ds.masks[ratio], ds.modalities, ds.n_items))
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


def one_epoch(entry, ds, protocol_name: str, device="cpu", batch_size: int = 256, sets: dict | None = None,
              generated=None, return_model: bool = False):
    """(last batch loss, scores of the first 50 users) after one epoch of ``entry`` on ``ds``, or
    the trained model itself with ``return_model``. ``sets`` override the configuration and
    ``generated`` feeds the ``generated`` imputation."""
    from benchmarks.run.config import expand_grid, resolve
    from benchmarks.core.engine import seed_everything
    from benchmarks.core.protocols import get_protocol
    from benchmarks.core.sampling import BPRSampler
    dev = torch.device(device)
    cfg = resolve(entry, ds.kind, {"train_batch_size": batch_size, **(sets or {})}, quick=True)
    cfg = expand_grid(cfg, entry.cls.list_params)[0]
    protocol = get_protocol(protocol_name)
    rng = seed_everything(5)
    task = protocol.build_task(ds, cfg, entry.cls, protocol.ratios(ds, cfg)[0], dev, generated=generated)
    model = entry.cls(cfg, task).to(dev)
    loss = torch.zeros(())
    model.train()
    if model.trainable:  # ItemPop has nothing to train: its scores alone are compared
        opt = torch.optim.Adam(model.optimizer_parameters(), lr=1e-3)
        sampler = BPRSampler(task, rng)
        model.pre_epoch(0)
        for users, pos, neg in sampler.epoch(batch_size, device=dev):
            loss = model.calculate_loss(users, pos, neg)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.pre_evaluation()
    model.eval()
    with torch.no_grad():
        model.begin_scoring()
        scores = model.full_sort_predict(torch.arange(min(50, task.n_users), device=dev))
        model.end_scoring()
    if return_model:
        return model
    return float(loss.detach()), scores.detach().cpu()


def check_leak(entry, ds, protocol_name: str, device="cpu", rtol: float = 1e-4) -> dict:
    """One epoch on clean and on poisoned data on ``device``: ``identical`` (bit for bit),
    ``max_rel`` (largest score difference relative to the largest score) and ``ok``: finite and
    identical, or (off the CPU) within ``rtol``."""
    clean, bad = poisoned(ds, protocol_name)
    loss_a, scores_a = one_epoch(entry, clean, protocol_name, device)
    loss_b, scores_b = one_epoch(entry, bad, protocol_name, device)
    finite = bool(np.isfinite(loss_a) and np.isfinite(loss_b) and torch.isfinite(scores_a).all()
                  and torch.isfinite(scores_b).all())
    identical = loss_a == loss_b and torch.equal(scores_a, scores_b)
    scale = max(float(scores_a.abs().max()), 1e-30) if finite else 1.0
    max_rel = float((scores_a - scores_b).abs().max()) / scale if finite else float("inf")
    loss_rel = abs(loss_a - loss_b) / max(abs(loss_a), 1e-30) if finite else float("inf")
    on_cpu = torch.device(device).type == "cpu"
    ok = finite and (identical or (not on_cpu and max_rel <= rtol and loss_rel <= rtol))
    return {"model": entry.name, "dataset": ds.kind, "protocol": protocol_name, "device": str(device),
            "identical": identical, "max_rel": max_rel, "loss_rel": loss_rel, "finite": finite, "ok": ok}
