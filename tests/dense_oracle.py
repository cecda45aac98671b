"""Hand-built tasks and dense float64 building blocks for the loss oracles of the model tests.

The oracles in ``test_model_losses_*.py`` recompute a model's training loss from its
``state_dict()`` with plain dense matrices: every graph is an explicit (n × n) matrix built from
its definition (cosine similarities, a top-k per row, degree normalisation), every loss an
explicit formula. Nothing here calls the model's own graph or loss code.

The hand task: 10 users, 28 items, 2 (image ``v``, text ``t``) or 3 (+ audio ``a``) modalities
with signed random features; some items miss modalities (single-modality groups, pairs and
'all'), masked rows mean-imputed over the observed (non-new) items as the protocols do. Under
``new_items`` the last four items are new: their training rows are dropped, two of them miss
modalities. Items 24-27 keep their rows under ``missing``.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmarks.core.protocols import impute_features
from benchmarks.run.config import expand_grid, resolve
from data_prep.masks import per_modality_missing
from data_prep.modalities import Modalities
from models import registry
from models.task import EvalSet, Task

N_USERS, N_ITEMS = 10, 28
NEW = (24, 25, 26, 27)
DIMS = {"v": 6, "t": 5, "a": 4}
# Each modality misses four items (their imputed rows are identical): the kNN graphs of the tests
# mostly use k = 5, so that a missing item's own row never has to choose among its identical
# twins (``topk_mask`` checks every selection).
GROUPS = {
    2: {"v": [3, 25], "t": [5, 14], "all": [9, 26]},
    3: {"v": [3], "t": [5], "a": [7], "tv": [25], "ta": [14], "va": [12], "all": [26]},
}
PROTOCOLS = ("missing", "new_items")
IMPUTED_FIRST = 0.05


def interactions(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs: every item has at least one user (no item of degree 0, whose normalised
    graph entries would be ~1e7-scale artefacts), every user at least 4 old items."""
    rng = np.random.default_rng(seed)
    pairs = {(int(rng.integers(N_USERS)), i) for i in range(N_ITEMS)}
    for u in range(N_USERS):
        old = {i for v, i in pairs if v == u and i not in NEW}
        while len(old) < 4:
            old.add(int(rng.integers(N_ITEMS - len(NEW))))
        pairs |= {(u, i) for i in old}
    users, items = zip(*sorted(pairs))
    return np.array(users), np.array(items)


def hand_task(n_mod: int, protocol: str = "missing", seed: int = 0) -> Task:
    assert protocol in PROTOCOLS
    rng = np.random.default_rng(100 + seed)
    mods = ("v", "t", "a")[:n_mod]
    users, items = interactions(seed)
    new = np.zeros(N_ITEMS, bool)
    if protocol == "new_items":
        new[list(NEW)] = True
        keep = ~new[items]
        users, items = users[keep], items[keep]
    groups = {k: np.array(v, dtype=np.int64) for k, v in GROUPS[n_mod].items()}
    if n_mod == 3:
        for key in ("tv", "ta", "va", "all"):
            groups.setdefault(key, np.zeros(0, np.int64))
    missing = per_modality_missing(groups, mods, N_ITEMS)
    feats = {}
    for m in mods:
        # [c, z] with z centred over the rows the imputation averages: every imputed row is
        # (c, 0, ...), whose cosine with an observed row is about c/|z|, near 0, so the identical
        # imputed rows sit mid-ranking, away from the k-th place of any row (topk_mask checks).
        source = ~missing[m] & ~new
        z = rng.normal(size=(N_ITEMS, DIMS[m] - 1))
        z -= z[source].mean(0)
        raw = np.concatenate([np.full((N_ITEMS, 1), IMPUTED_FIRST), z], axis=1).astype(np.float32)
        feats[m] = torch.from_numpy(impute_features(raw, missing[m], "mean", exclude=new if new.any() else None))
    ev = EvalSet.from_pairs("valid", np.array([0, 1]), np.array([users[users == 0][0], users[users == 1][0]]))
    return Task(dataset="baby" if n_mod == 2 else "tiktok", n_users=N_USERS, n_items=N_ITEMS,
                train_users=users, train_items=items, features=feats,
                modalities=Modalities(mods), missing=missing, mask_groups=groups, new_items=new, valid=ev, test=ev)


def fixed_batch(task: Task, seed: int = 0, size: int = 14):
    """(users, pos, neg): training pairs with repeated users and repeated positives; negatives are
    old items the user has no training row with (as the sampler draws them)."""
    rng = np.random.default_rng(50 + seed)
    rows = rng.choice(len(task.train_users), size=size - 2, replace=False)
    rows = np.concatenate([rows, rows[:2]])  # the first two (user, item) rows twice
    users, pos = task.train_users[rows], task.train_items[rows]
    seen = set(zip(task.train_users.tolist(), task.train_items.tolist()))
    old = np.flatnonzero(~task.new_items)
    neg = []
    for u in users:
        choices = [i for i in old if (int(u), int(i)) not in seen]
        neg.append(int(rng.choice(choices)))
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    return as_t(users), as_t(pos), as_t(neg)


def build(name: str, task: Task, seed: int = 0, **sets):
    """The registered model on ``task`` with its registered defaults (the dataset kind's best
    values, the quick layer) and ``sets`` on top; every key of ``sets`` must be a known key."""
    entry = registry.get(name)
    cfg = resolve(entry, task.dataset, {}, quick=True)
    unknown = sorted(set(sets) - set(cfg))
    assert not unknown, f"{name}: unknown config keys {unknown}"
    cfg = expand_grid(resolve(entry, task.dataset, sets, quick=True), entry.cls.list_params)[0]
    torch.manual_seed(seed)
    model = entry.cls(cfg, task)
    model.train()
    return model, cfg


# --------------------------------------------------------------------------- parameters

def move_parameters(model, keys, scale: float = 0.05, seed: int = 0) -> None:
    """Add N(0, scale²) noise to the named parameters: a state away from initialisation (for
    trainable feature tables: the identical imputed rows become distinct, as training makes them)."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k in keys:
            params[k].add_(torch.randn(params[k].shape, generator=gen, dtype=params[k].dtype) * scale)


def params64(model, grad=()) -> dict[str, torch.Tensor]:
    """Every ``state_dict`` entry as a float64 copy; the keys in ``grad`` as leaves with gradient."""
    out = {}
    for k, v in model.state_dict().items():
        t = v.detach().clone().double() if v.is_floating_point() else v.detach().clone()
        if k in grad:
            t.requires_grad_(True)
        out[k] = t
    missing = set(grad) - set(out)
    assert not missing, f"no state_dict entries {missing}"
    return out


def linear(p: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """x Wᵀ + b of the Linear layer stored under ``prefix`` (bias optional)."""
    y = x @ p[f"{prefix}.weight"].T
    b = p.get(f"{prefix}.bias")
    return y if b is None else y + b


def feature(task: Task, m: str) -> torch.Tensor:
    return task.features[m].double()


# --------------------------------------------------------------------------- dense graphs

def interaction_matrix(task: Task) -> torch.Tensor:
    r = torch.zeros(task.n_users, task.n_items, dtype=torch.float64)
    r[torch.from_numpy(task.train_users), torch.from_numpy(task.train_items)] = 1.0
    return r


def joint(r: torch.Tensor) -> torch.Tensor:
    """[[0, R], [Rᵀ, 0]]."""
    nu, ni = r.shape
    a = torch.zeros(nu + ni, nu + ni, dtype=r.dtype)
    a[:nu, nu:] = r
    a[nu:, :nu] = r.T
    return a


def sym_norm(a: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """D^-1/2 A D^-1/2 with D the row sums + eps."""
    d = (a.sum(1) + eps).pow(-0.5)
    return d[:, None] * a * d[None, :]


def row_norm(a: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    return a / (a.sum(1, keepdim=True) + eps)


def lightgcn(a: torch.Tensor, e0: torch.Tensor, layers: int) -> torch.Tensor:
    """Mean of E0, A E0, ..., A^L E0."""
    out, e = [e0], e0
    for _ in range(layers):
        e = a @ e
        out.append(e)
    return torch.stack(out).mean(0)


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to norm 1; a zero row stays zero (its norm is taken as at least 1e-12)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def cosine(x: torch.Tensor) -> torch.Tensor:
    xn = unit(x)
    return xn @ xn.T


def topk_mask(s: torch.Tensor, k: int, interchangeable: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the k largest entries of every row of ``s``.

    A top-k is only defined where the k-th and (k+1)-th values differ; the hand tasks are built
    so that they do (exact ties among identical imputed rows stay inside or outside together),
    and this asserts it, so an ambiguous selection fails here instead of comparing two graphs
    that differ only by a tie-break. Ties among zeros are allowed (zero entries carry no
    weight), and so are ties among columns flagged ``interchangeable[c1, c2]`` (whichever is
    chosen, the result is the same).
    """
    n = s.shape[1]
    k = min(k, n)
    vals, idx = torch.sort(s, dim=1, descending=True)
    if k < n:
        for row in range(s.shape[0]):
            kth = vals[row, k - 1]
            if kth - vals[row, k] >= 1e-6 or (kth == 0 and vals[row, k] == 0):
                continue
            tied = idx[row][(vals[row] - kth).abs() < 1e-6]
            ok = interchangeable is not None and bool(interchangeable[tied][:, tied].all())
            assert ok, f"ambiguous top-{k} in row {row}: columns {tied.tolist()} tie at {float(kth)}"
    mask = torch.zeros_like(s, dtype=torch.bool)
    mask.scatter_(1, idx[:, :k], True)
    return mask


def knn(x: torch.Tensor, k: int, before=None, after=None, normalise: bool = True) -> torch.Tensor:
    """The feature kNN item graph: K[i, j] = cos(x_i, x_j) for the k most similar j of row i
    (i itself included), then D^-1/2 K D^-1/2 with D the row sums (an empty row stays empty).

    ``before``: flagged items lose their similarity row and column and get a self-loop of 1
    before the top-k (the others choose among the rest). ``after``: flagged items lose their
    row and column after the top-k and get a self-loop of 1.
    """
    s = cosine(x)
    if before is not None and np.any(before):
        s = self_loops_only(s, before)
    g = torch.where(topk_mask(s, k), s, torch.zeros_like(s))
    if after is not None and np.any(after):
        g = self_loops_only(g, after)
    if not normalise:
        return g
    deg = g.sum(1)
    d = torch.where(deg > 0, deg.clamp(min=1e-7).pow(-0.5), torch.zeros_like(deg))
    return d[:, None] * g * d[None, :]


def self_loops_only(s: torch.Tensor, flagged) -> torch.Tensor:
    """``s`` with the rows and columns of flagged items zeroed and a 1 on their diagonal."""
    f = torch.as_tensor(np.asarray(flagged), dtype=torch.bool)
    s = s.clone()
    s[f] = 0.0
    s[:, f] = 0.0
    idx = torch.nonzero(f).squeeze(1)
    s[idx, idx] = 1.0
    return s


def without(g: torch.Tensor, flagged) -> torch.Tensor:
    """``g`` with the rows and columns of flagged items zeroed (self-loops included)."""
    f = torch.as_tensor(np.asarray(flagged), dtype=torch.bool)
    g = g.clone()
    g[f] = 0.0
    g[:, f] = 0.0
    return g


def new_item_knn(x: torch.Tensor, k: int, new) -> torch.Tensor:
    """The new-item training graph: new items isolated before the top-k, then removed entirely."""
    return without(knn(x, k, before=new), new)


# --------------------------------------------------------------------------- losses

def bpr(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """mean -log σ(s⁺ - s⁻)."""
    return -torch.log(torch.sigmoid(pos - neg)).mean()


def nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Row-aligned InfoNCE, cosine similarities: mean_r -log(exp(cos(a_r,b_r)/τ) / Σ_j exp(cos(a_r,b_j)/τ))."""
    a, b = unit(a), unit(b)
    e = torch.exp(a @ b.T / tau)
    return (-torch.log(e.diagonal() / e.sum(1))).mean()


def sq_l2(*xs: torch.Tensor) -> torch.Tensor:
    return sum((x ** 2).sum() for x in xs)


# --------------------------------------------------------------------------- comparison

def assert_loss_and_grads(model, batch, oracle, grad_keys=("user_embedding",), rtol=1e-5, grad_rtol=1e-4,
                          before=None) -> dict:
    """The model's loss on ``batch`` equals ``oracle(params64)``, and so do the gradients of the
    state_dict entries ``grad_keys``. ``before`` is called right before each computation (to
    reseed random streams identically). Returns the oracle's terms for further checks."""
    p = params64(model, grad_keys)
    model.zero_grad(set_to_none=True)
    if before:
        before()
    loss = model.calculate_loss(*batch)
    if before:
        before()
    want, terms = oracle(p)
    value = float(want.detach())
    assert np.isfinite(value), "oracle is not finite"
    got = float(loss.detach())
    assert abs(got - value) <= rtol * abs(value) + 1e-8, (got, value, terms)
    if grad_keys:
        loss.backward()
        grads = torch.autograd.grad(want, [p[k] for k in grad_keys], allow_unused=True)
        params = dict(model.named_parameters())
        for k, g in zip(grad_keys, grads):
            mine = params[k].grad
            g = torch.zeros_like(p[k]) if g is None else g
            mine = torch.zeros_like(g) if mine is None else mine.double()
            scale = float(g.norm())
            assert float((mine - g).norm()) <= grad_rtol * scale + 1e-9, (k, float((mine - g).norm()), scale)
    return {k: float(torch.as_tensor(v).detach()) for k, v in terms.items()}


def assert_terms_matter(terms: dict, weights: dict, main: str = "bpr", share: float = 1e-3) -> None:
    """Every weighted term moves the total (``terms[main]`` + Σ weight · term) by more than
    ``share`` of it, so that dropping or mis-weighting any one of them is far outside the
    comparison's tolerance."""
    total = terms[main] + sum(w * terms[name] for name, w in weights.items())
    for name, w in weights.items():
        assert abs(w * terms[name]) > share * abs(total), (name, w * terms[name], total)
