"""The same numbers on an accelerator as on the CPU, for the same weights and batch.

``compare_devices(model, dataset, protocol, device)`` builds the model twice from one seed, on
the CPU and on ``device``, runs the epoch hook and one BPR batch through both (loss and
gradients), scores every user on both, and reports whether the loss, every parameter's gradient
and every user's top-20 (ties aside) agree within tolerances derived from the CPU model's own
sensitivity to a 1e-7 relative weight perturbation (``FACTOR`` times it, never below
``FLOOR``). ``RandomOnHost`` draws every random number meant for the device on the CPU and copies
it there, so both sides use the same numbers; ``RoundingNoise`` perturbs every floating result
by up to 2^-24 relative, a stand-in for another device's rounding when only a CPU is at hand.
``gpu_check`` runs it for every model; the method is explained in docs/fidelity.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

FACTOR = 50.0      # a device may move results by FACTOR x the CPU's own change under a 1e-7 perturbation
FLOOR = 1e-5       # ... and always by this much (relative): float32 rounding of short reductions
PERTURBATION = 1e-7
TOPK = 20

_FACTORIES = frozenset({"rand", "randn", "randint", "randperm", "normal"})
_LIKE = frozenset({"rand_like", "randn_like", "randint_like"})
_INPLACE = frozenset({"uniform_", "normal_", "exponential_", "bernoulli_", "random_", "geometric_", "cauchy_",
                      "log_normal_"})
_FUNCTIONAL = frozenset({"bernoulli", "multinomial", "poisson", "dropout", "alpha_dropout", "feature_alpha_dropout",
                         "dropout1d", "dropout2d", "dropout3d", "gumbel_softmax", "rrelu"})


def _cpu(x):
    return x.cpu() if isinstance(x, torch.Tensor) else x


def _off_cpu(device) -> bool:
    return device is not None and torch.device(device).type != "cpu"


class RandomOnHost(TorchFunctionMode):
    """Random draws for an accelerator made by the CPU generator and copied there (autograd flows
    through the copies). Draws on the CPU, and draws from an explicit accelerator generator, are
    left alone."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        gen = kwargs.get("generator")
        if gen is not None and gen.device.type != "cpu":
            return func(*args, **kwargs)
        if name in _FACTORIES and _off_cpu(kwargs.get("device")) and not any(isinstance(a, torch.Tensor) for a in args):
            return func(*args, **dict(kwargs, device="cpu")).to(kwargs["device"])
        if name in _LIKE and args and args[0].device.type != "cpu":
            x = args[0]
            kw = {k: v for k, v in kwargs.items() if k != "device"}
            dtype = kw.pop("dtype", x.dtype)
            return func(torch.empty(x.shape, dtype=dtype), *args[1:], **kw).to(x.device)
        if name in _INPLACE and args and args[0].device.type != "cpu":
            x = args[0]
            tmp = torch.empty(x.shape, dtype=x.dtype)
            func(tmp, *[_cpu(a) for a in args[1:]], **{k: _cpu(v) for k, v in kwargs.items()})
            with torch.no_grad():
                x.copy_(tmp)
            return x
        if name in _FUNCTIONAL or (name in _FACTORIES and any(isinstance(a, torch.Tensor) for a in args)):
            devices = [a.device for a in list(args) + list(kwargs.values())
                       if isinstance(a, torch.Tensor) and a.device.type != "cpu"]
            if devices:
                out = func(*[_cpu(a) for a in args], **{k: _cpu(v) for k, v in kwargs.items()})
                return out.to(devices[0])
        return func(*args, **kwargs)


# Ops whose float32 result depends on summation order or on the maths library (reductions, products,
# transcendental functions): where two devices may round differently. IEEE +, -, *, / and sqrt of
# equal inputs give equal results everywhere, and data movement is exact.
ROUNDING_OPS = frozenset({
    "mm", "matmul", "bmm", "addmm", "addmv", "mv", "dot", "linear", "einsum", "__matmul__", "__rmatmul__",
    "sum", "mean", "logsumexp", "norm", "var", "std", "cumsum", "softmax", "log_softmax", "index_add",
    "scatter_add", "exp", "log", "log1p", "expm1", "sigmoid", "tanh", "rsqrt", "pow", "__pow__", "logsigmoid",
    "softplus", "normalize", "cosine_similarity", "cross_entropy", "mse_loss", "logaddexp", "gumbel_softmax"})


class RoundingNoise(TorchFunctionMode):
    """The floating results of the ops in ``ROUNDING_OPS`` scaled by 1 + u·2^-24, u uniform in
    [-1, 1] from its own generator (the global random streams are untouched): a CPU stand-in for
    a device whose reductions and maths library round differently."""

    def __init__(self, seed: int = 0, scale: float = 2.0 ** -24):
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)
        self.scale = scale

    def _jitter(self, t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.layout == torch.strided and t.numel():
            u = torch.rand(t.shape, generator=self.gen, dtype=torch.float64).mul_(2.0).sub_(1.0)
            return t * (1.0 + self.scale * u).to(device=t.device, dtype=t.dtype)
        return t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") not in ROUNDING_OPS:
            return out
        if type(out) is tuple:
            return tuple(self._jitter(o) for o in out)
        return out if isinstance(out, tuple) else self._jitter(out)


# --------------------------------------------------------------------------- one model, two devices

@dataclass
class Comparison:
    model: str
    dataset: str
    protocol: str
    device: str
    loss_cpu: float = float("nan")
    loss_device: float = float("nan")
    loss_rel: float = float("nan")            # |Δloss| / |loss_cpu|
    loss_tolerance: float = float("nan")
    grad_rel: float = float("nan")            # max_p max|Δg_p| / max|g_cpu,p|
    grad_worst: str = ""
    grad_ratio: float = float("nan")          # max_p max|Δg_p| / allowed_p (<= 1: within tolerance)
    score_rel: float = float("nan")           # max |Δscore| / max |score_cpu|
    score_tolerance: float = float("nan")
    users: int = 0
    top20_mismatched_users: int = 0           # users whose top-20 differ beyond near-ties
    top20_tie_swaps: int = 0                  # items swapped at the boundary within the tolerance
    recall20_cpu: float = float("nan")
    recall20_device: float = float("nan")
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return dict(asdict(self), ok=self.ok)


def _build(entry, cfg, task, seed, device):
    from benchmarks.core.engine import seed_everything
    with RandomOnHost():
        seed_everything(seed)
        return entry.cls(cfg, task).to(device)


def _step(model, users, pos, neg, seed, mode=None):
    """The epoch hook and one batch: (loss, {parameter: gradient})."""
    from benchmarks.core.engine import seed_everything
    modes = [RandomOnHost()] + ([mode] if mode is not None else [])
    for m in modes:
        m.__enter__()
    try:
        model.train()
        seed_everything(seed + 1)
        model.pre_epoch(0)
        seed_everything(seed + 2)
        model.zero_grad(set_to_none=True)
        loss = model.calculate_loss(users, pos, neg)
        loss.backward()
    finally:
        for m in reversed(modes):
            m.__exit__(None, None, None)
    grads = {n: (None if p.grad is None else p.grad.detach().to("cpu", torch.float64)) for n, p in model.named_parameters()}
    return float(loss.detach()), grads


def _scores(model, task, seed, mode=None) -> torch.Tensor:
    """Scores of every user for every item (training items at -inf), on the host in float64."""
    from benchmarks.core.engine import seed_everything
    users = torch.arange(task.n_users, device=model.device)
    modes = [RandomOnHost()] + ([mode] if mode is not None else [])
    for m in modes:
        m.__enter__()
    try:
        with torch.no_grad():
            model.eval()
            seed_everything(seed + 3)
            model.pre_evaluation()
            model.begin_scoring()
            s = model.full_sort_predict(users).detach().to("cpu", torch.float64)
            model.end_scoring()
    finally:
        for m in reversed(modes):
            m.__exit__(None, None, None)
    r = task.train_matrix().tocoo()
    s[torch.from_numpy(r.row.astype(np.int64)), torch.from_numpy(r.col.astype(np.int64))] = -np.inf
    return s


def _grad_diffs(other: dict, ref: dict, twin: dict, factor: float, floor: float):
    """Per parameter: the largest difference of ``other`` from ``ref`` against what is allowed,
    max(``factor`` x the twin's difference, ``floor`` x the parameter's largest entry, 1e-7 x the
    model's largest entry: gradients that are rounding noise around zero). Returns (largest
    relative difference, its parameter, largest difference / allowed, its parameter, parameters
    with a gradient on one side only)."""
    scale_all = max([float(g.abs().max()) for g in ref.values() if g is not None and g.numel()] + [1e-30])
    rel_worst, rel_name, ratio_worst, ratio_name, one_sided = 0.0, "", 0.0, "", []
    for k, gr in ref.items():
        go, gt = other.get(k), twin.get(k)
        if (go is None) != (gr is None):
            one_sided.append(k)
            continue
        if go is None or not gr.numel():
            continue
        d = float((go - gr).abs().max()) if torch.isfinite(go).all() else float("inf")
        scale = float(gr.abs().max())
        self_d = float((gt - gr).abs().max()) if gt is not None else 0.0
        allowed = max(factor * self_d, floor * scale, 1e-7 * scale_all)
        rel = d / max(scale, 1e-30)
        if rel > rel_worst:
            rel_worst, rel_name = rel, k
        if d / allowed > ratio_worst:
            ratio_worst, ratio_name = d / allowed, k
    return rel_worst, rel_name, ratio_worst, ratio_name, one_sided


def _topk_check(s_ref: torch.Tensor, s_other: torch.Tensor, tol_rel: float, k: int = TOPK) -> tuple[int, int]:
    """(users whose top-k differ beyond near-ties, items swapped at the boundary within tolerance)."""
    k = min(k, s_ref.shape[1])
    top_ref = torch.topk(s_ref, k, dim=1)
    top_other = torch.topk(s_other, k, dim=1).indices
    kth = top_ref.values[:, -1]
    finite = torch.where(torch.isfinite(s_ref), s_ref, torch.zeros_like(s_ref))
    tol = tol_rel * finite.abs().max(dim=1).values
    bad_users, swaps = 0, 0
    for u in range(s_ref.shape[0]):
        a, b = set(top_ref.indices[u].tolist()), set(top_other[u].tolist())
        diff = a ^ b
        if not diff:
            continue
        near = [abs(float(s_ref[u, i]) - float(kth[u])) <= float(tol[u]) for i in diff]
        if all(near):
            swaps += len(diff)
        else:
            bad_users += 1
    return bad_users, swaps


def _recall20(model, task) -> float:
    from benchmarks.core.evaluation import Evaluator
    ev = Evaluator(task, topk=[20], metrics=("recall",), batch_size=max(1, task.n_users // 3 + 1))
    means, _, _ = ev.evaluate(model, task.valid)
    return means["recall@20"]


def compare_devices(model_name: str, dataset, protocol_name: str, device: str, *, seed: int = 5,
                    batch_size: int = 512, factor: float = FACTOR, floor: float = FLOOR,
                    device_mode=None, alter=None) -> Comparison:
    """CPU against ``device`` for one model on one dataset and protocol (see the module text).

    ``device_mode``: a TorchFunctionMode active on the device side only (``RoundingNoise`` for a
    CPU-only check); ``alter(model)``: a change applied to the device-side model after the weights
    are copied (a test's deliberate difference)."""
    from benchmarks.run.discovery import registry_entry
    from models.cache import ArtifactCache
    from benchmarks.run.config import expand_grid, resolve
    from benchmarks.core.protocols import get_protocol
    from benchmarks.core.sampling import BPRSampler
    from models.graphs.knn import device_built_graphs_keyed_as_cpu

    entry = registry_entry(model_name)
    cfg = expand_grid(resolve(entry, dataset.kind, {"train_batch_size": batch_size}, quick=True),
                      entry.cls.list_params)[0]
    protocol = get_protocol(protocol_name)
    ratio = protocol.ratios(dataset, cfg)[0]
    out = Comparison(model_name, getattr(dataset, "name", dataset.kind), protocol_name, str(device))
    dev = torch.device(device)
    # One cache for both tasks, CPU first: both sides get the CPU-built graphs (a near-tie of a kNN
    # top-k may fall the other way on a device; ``compare_graphs`` checks the device-built ones).
    cache = ArtifactCache(None)
    with device_built_graphs_keyed_as_cpu():
        task_cpu = protocol.build_task(dataset, cfg, entry.cls, ratio, torch.device("cpu"), cache)
        cpu = _build(entry, cfg, task_cpu, seed, "cpu")
        twin = _build(entry, cfg, task_cpu, seed, "cpu")
        task_dev = protocol.build_task(dataset, cfg, entry.cls, ratio, dev, cache)
        other = _build(entry, cfg, task_dev, seed, dev)
    state = cpu.state_dict()
    other.load_state_dict(state)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in twin.parameters():
            p.mul_(1.0 + PERTURBATION * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    if alter is not None:
        alter(other)
    users, pos, neg = next(BPRSampler(task_cpu, np.random.default_rng(seed), "host").epoch(batch_size))
    loss_cpu, g_cpu = _step(cpu, users, pos, neg, seed)
    loss_twin, g_twin = _step(twin, users, pos, neg, seed)
    loss_dev, g_dev = _step(other, users.to(dev), pos.to(dev), neg.to(dev), seed, device_mode)
    out.loss_cpu, out.loss_device = loss_cpu, loss_dev
    denom = max(abs(loss_cpu), 1e-12)
    out.loss_rel = abs(loss_dev - loss_cpu) / denom
    out.loss_tolerance = max(factor * abs(loss_twin - loss_cpu) / denom, floor)
    out.grad_rel, out.grad_worst, out.grad_ratio, ratio_param, one_sided = _grad_diffs(g_dev, g_cpu, g_twin,
                                                                                      factor, floor)
    s_cpu, s_twin = _scores(cpu, task_cpu, seed), _scores(twin, task_cpu, seed)
    s_dev = _scores(other, task_dev, seed, device_mode)
    finite = torch.isfinite(s_cpu)
    scale = max(float(s_cpu[finite].abs().max()) if finite.any() else 0.0, 1e-12)
    out.score_rel = float((s_dev - s_cpu)[finite].abs().max()) / scale if finite.any() else 0.0
    out.score_tolerance = max(factor * float((s_twin - s_cpu)[finite].abs().max()) / scale, floor)
    out.users = task_cpu.n_users
    out.top20_mismatched_users, out.top20_tie_swaps = _topk_check(s_cpu, s_dev, out.score_tolerance)
    with RandomOnHost():
        from benchmarks.core.engine import seed_everything
        seed_everything(seed + 4)
        out.recall20_cpu = _recall20(cpu, task_cpu)
        seed_everything(seed + 4)
        out.recall20_device = _recall20(other, task_dev)
    if not np.isfinite(loss_dev) or not np.isfinite(loss_cpu):
        out.problems.append(f"non-finite loss (cpu {loss_cpu}, device {loss_dev})")
    if out.loss_rel > out.loss_tolerance:
        out.problems.append(f"loss differs by {out.loss_rel:.3g} relative (tolerance {out.loss_tolerance:.3g})")
    if one_sided:
        out.problems.append(f"gradient on one device only: {', '.join(one_sided)}")
    if out.grad_ratio > 1.0:
        out.problems.append(f"gradient of {ratio_param} differs by {out.grad_ratio:.3g} x its tolerance")
    if not torch.isfinite(s_dev[finite]).all():
        out.problems.append("non-finite scores on the device")
    if out.top20_mismatched_users:
        out.problems.append(f"top-{TOPK} differs beyond ties for {out.top20_mismatched_users} of {out.users} users")
    return out


# --------------------------------------------------------------------------- graphs built on the device

def compare_knn_graphs(dataset, device: str, k: int = 10, tolerance: float = 1e-5) -> list[dict]:
    """kNN item graphs (``models.graphs.knn.knn_graph``, every mask kind) built from the same masked,
    imputed features on the CPU and on ``device``: per graph, the rows whose neighbours differ
    beyond near-ties (a neighbour in one graph only must have a CPU similarity within
    ``tolerance`` of the row's k-th) and the largest weight difference on shared edges."""
    import torch.nn.functional as F

    from benchmarks.core.protocols import get_protocol
    from models.graphs.knn import knn_graph
    protocol = get_protocol("missing")
    cfg = {"missing_ratio": "auto", "missing_imputation": "mean"}
    task = protocol.build_task(dataset, cfg, type("AnyModel", (), {"uses_features": True, "handles_missing": "impute"}),
                               protocol.ratios(dataset, cfg)[0])
    out = []
    for m, x in task.features.items():
        miss = task.missing[m]
        xn = F.normalize(x.double(), dim=1)
        sim = (xn @ xn.T).numpy()
        for mask, kw in (("none", {}), ("before", {"isolate_before": miss}), ("after", {"isolate_after": miss})):
            a = knn_graph(x, k, normalize=False, **kw).tocsr()
            b = knn_graph(x.to(device), k, normalize=False, **kw).tocsr()
            ranked = sim.copy()  # the similarities the top-k ranks
            if mask == "before" and miss.any():
                ranked[:, miss] = 0.0
                ranked[miss] = 0.0
                ranked[np.flatnonzero(miss), np.flatnonzero(miss)] = 1.0
            bad_rows, max_w = 0, 0.0
            for r in range(a.shape[0]):
                ca, cb = a.indices[a.indptr[r]:a.indptr[r + 1]], b.indices[b.indptr[r]:b.indptr[r + 1]]
                diff = set(ca.tolist()) ^ set(cb.tolist())
                if diff:
                    row = np.sort(ranked[r])[::-1]
                    kth = row[min(k, len(row)) - 1]
                    if any(abs(ranked[r, j] - kth) > tolerance for j in diff):
                        bad_rows += 1
                shared = np.intersect1d(ca, cb)
                if len(shared):
                    wa = np.asarray(a[r, shared].todense()).ravel()
                    wb = np.asarray(b[r, shared].todense()).ravel()
                    max_w = max(max_w, float(np.abs(wa - wb).max()))
            out.append({"modality": m, "mask": mask, "rows": a.shape[0], "rows_differing_beyond_ties": bad_rows,
                        "max_weight_difference": max_w, "ok": bad_rows == 0 and max_w <= 1e-4})
    return out
