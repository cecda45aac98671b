"""Host reads of tensor values: the calls that make the host wait for an accelerator.

On a GPU, kernels are queued and run while Python goes on; any call that needs a tensor's
*value* on the host (``.item()``, ``float(t)``, ``if t:``, ``.cpu()``, ``.numpy()``,
``.tolist()``) or whose output size depends on values (``nonzero``, ``unique``, boolean-mask
indexing, ``repeat_interleave`` without ``output_size``) stops the host until the queue has
drained, and so does a tensor made from host data (``torch.tensor``, ``as_tensor``: a
blocking upload on an accelerator). Inside a batch loop that idles the GPU every batch.

``HostReads`` counts such calls through a ``TorchFunctionMode``, so it works on any device,
the CPU included: a test on a CPU-only machine can assert that a loop makes no host read per
batch, and ``python -m benchmarks.experiments.host_sync`` lists, per registered model, the host reads of one
training batch (``calculate_loss``, backward and the optimiser step) and of one evaluation
batch on a small replica.

    python -m benchmarks.experiments.host_sync [--models M1,M2] [--dataset synthetic:tiktok]
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.overrides import TorchFunctionMode

# Tensor methods and torch functions that read values on the host or size their output by them.
VALUE_READS = frozenset({"item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu",
                         "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount",
                         "__format__", "__repr__", "equal", "allclose"})
# Tensors made from host data: on an accelerator each is a copy that waits for the device queue.
# (torch.from_numpy is not seen by torch function modes; a blocking .to(device) of its result is
# an upload too, which only a real device's sync detector shows.)
UPLOADS = frozenset({"tensor", "as_tensor"})


def _is_value_read(name: str, args, kwargs) -> bool:
    if name in VALUE_READS or name in UPLOADS:
        return True
    if name == "to":  # a copy to the host
        target = kwargs.get("device", args[1] if len(args) > 1 else None)
        return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"
    if name == "__getitem__" and len(args) > 1:  # boolean-mask indexing sizes its output by the mask
        idx = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx)
    if name == "repeat_interleave":  # tensor repeats without output_size: the output size is read
        repeats = kwargs.get("repeats", args[1] if len(args) > 1 else None)
        return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None
    return False


class HostReads(TorchFunctionMode):
    """Counts host reads of tensor values while active (``with HostReads() as reads: ...``);
    ``reads.total`` and ``reads.by_name`` (a Counter)."""

    def __init__(self):
        super().__init__()
        self.by_name: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if _is_value_read(name, args, kwargs):
            self.by_name[name] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.by_name.values())


# --------------------------------------------------------------------------- per-model audit

def audit_model(name: str, dataset: str = "synthetic:tiktok", scale: float = 0.02, device: str = "cpu",
                batch_size: int = 512) -> dict:
    """Host reads of one training batch and of one evaluation batch of model ``name`` (the second
    batch of each, after warm-up; hooks such as ``pre_epoch`` are left out, they run once per epoch)."""
    import numpy as np

    from benchmarks.run.discovery import registry_entry
    from benchmarks.run.config import expand_grid, resolve
    from benchmarks.core.engine import make_adam, seed_everything
    from benchmarks.run.jobs import resolve_dataset, load_dataset
    from benchmarks.core.protocols import get_protocol
    from benchmarks.core.sampling import BPRSampler

    entry = registry_entry(name)
    ref, _ = resolve_dataset(dataset, "none", scale)
    ds = load_dataset(ref)
    cfg = expand_grid(resolve(entry, ref.kind, {"train_batch_size": batch_size}, quick=True), entry.cls.list_params)[0]
    protocol = get_protocol("missing")
    rng = seed_everything(3)
    dev = torch.device(device)
    task = protocol.build_task(ds, cfg, entry.cls, protocol.ratios(ds, cfg)[0], dev)
    model = entry.cls(cfg, task).to(dev)
    opt = make_adam(model.optimizer_parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    model.pre_epoch(0)
    batches = list(BPRSampler(task, rng).epoch(batch_size, device=dev))[:2]
    train = HostReads()
    for k, (u, p, n) in enumerate(batches):
        if k == len(batches) - 1:
            train.__enter__()
        loss = model.calculate_loss(u, p, n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train.__exit__(None, None, None)
    model.eval()
    users = torch.from_numpy(np.asarray(task.valid.users[:256])).to(dev)
    with torch.no_grad():
        model.pre_evaluation()
        model.begin_scoring()
        model.full_sort_predict(users)
        with HostReads() as score:
            model.full_sort_predict(users)
        model.end_scoring()
    return {"model": name, "train_batch": train.total, "train_calls": dict(train.by_name),
            "score_batch": score.total, "score_calls": dict(score.by_name)}


def main(argv=None) -> int:
    from tabulate import tabulate

    from benchmarks.run.discovery import model_names as names
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None)
    ap.add_argument("--dataset", default="synthetic:tiktok")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    models = args.models.split(",") if args.models else [m for m in names() if not m.startswith("Test")]
    rows = []
    for m in models:
        r = audit_model(m, args.dataset, device=args.device)
        rows.append({"model": m, "host reads / training batch": r["train_batch"],
                     "which": ", ".join(f"{k} {v}" for k, v in sorted(r["train_calls"].items())),
                     "host reads / scoring batch": r["score_batch"]})
    print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
