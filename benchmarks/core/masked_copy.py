"""The ``test_only`` mechanism: a model trained on complete features, scored after items lose modalities.

The trained model cannot simply be scored on other features: models build graphs, buffers and
trainable tables from the features when they are constructed. So a second instance is built
from the *masked* task (its graphs, buffers and tables come from the masked, imputed features
only), from the same random state as the trained model, and before each test pass it takes
the trained model's parameters and buffers, entry by entry, except the entries that differed
between the two instances when they were built: those came from the data (feature tables and
what is derived from them, missing-modality flags) and keep the masked instance's value. A
trainable feature table thus keeps its trained rows for observed items and the imputed rows
for masked ones.

What a model keeps outside its parameters and buffers (graphs refreshed during training, a
cached last-batch representation) is the masked instance's own. Both instances must draw the
same random numbers while being built; a model whose construction draws depending on the
mask is refused with a clear error, since its parameters could not be paired.
"""
from __future__ import annotations

import random

import numpy as np
import torch


class MaskedCopyError(RuntimeError):
    pass


def _rng_state():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), np.random.get_state(), random.getstate(), cuda


def _set_rng_state(state) -> None:
    t, n, p, cuda = state
    torch.set_rng_state(t)
    np.random.set_state(n)
    random.setstate(p)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _same_rng(a, b) -> bool:
    return (torch.equal(a[0], b[0]) and a[1][0] == b[1][0] and np.array_equal(a[1][1], b[1][1])
            and a[1][2:] == b[1][2:] and a[2] == b[2]
            and (a[3] is None or all(torch.equal(x, y) for x, y in zip(a[3], b[3]))))


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = dict(model.named_parameters())
    out.update(dict(model.named_buffers()))
    return out


def build_pair(cls, config: dict, task):
    """The training model (complete task) and its ``MaskedCopy`` (``task.test_task``), built
    from the same random state; the random state afterwards is the one after one build."""
    before = _rng_state()
    model = cls(config, task).to(task.device)
    after = _rng_state()
    init = {k: v.detach().clone() for k, v in _tensors(model).items()}
    _set_rng_state(before)
    masked = cls(config, task.test_task).to(task.device)
    if not _same_rng(after, _rng_state()):
        raise MaskedCopyError(f"{getattr(cls, 'model_name', cls.__name__)} draws different random numbers when built on "
                            f"the masked task than on the complete one, so the test_only mechanism cannot pair its "
                            f"parameters")
    return model, MaskedCopy(masked, init)


class MaskedCopy:
    """The masked instance and which entries of each tensor it keeps (those that came from data)."""

    def __init__(self, masked: torch.nn.Module, complete_init: dict[str, torch.Tensor]):
        self.model = masked
        own = _tensors(masked)
        if set(own) != set(complete_init):
            raise MaskedCopyError(f"{type(masked).__name__} has different parameters and buffers on the masked task "
                                f"({sorted(set(own) ^ set(complete_init))[:5]} differ)")
        self.keep: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.own_buffers: set[str] = set()  # buffers shaped by the mask (e.g. ids of complete items): kept whole
        buffers = {n for n, _ in masked.named_buffers()}
        for name, t in own.items():
            ref = complete_init[name]
            if t.shape != ref.shape or t.dtype != ref.dtype:
                if name in buffers:
                    self.own_buffers.add(name)
                    continue
                raise MaskedCopyError(f"{type(masked).__name__}.{name} has shape {tuple(t.shape)} on the masked task and "
                                      f"{tuple(ref.shape)} on the complete one")
            differs = t.detach() != ref  # NaN never equals itself: a NaN entry always counts as data
            if differs.any():
                self.keep[name] = (differs, t.detach().clone())

    @torch.no_grad()
    def sync(self, trained: torch.nn.Module) -> torch.nn.Module:
        """The masked instance with the trained weights (data-derived entries kept); returned for scoring."""
        src = _tensors(trained)
        for name, t in _tensors(self.model).items():
            if name in self.own_buffers:
                continue
            if name in self.keep:
                differs, own = self.keep[name]
                t.copy_(torch.where(differs, own, src[name].detach()))
            else:
                t.copy_(src[name].detach())
        return self.model
