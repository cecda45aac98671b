"""DRAGON's training loss against a dense float64 oracle, and the behaviours around it.

The oracle (``dragon_oracle``) recomputes one batch's loss from ``model.state_dict()`` with
explicit matrices written from the model's definition: the user-item graph normalised by the
exact degrees (1/sqrt(d_u d_i), as the reference's message passing), each modality's binary
top-k cosine graph (masked items isolated before the top-k) normalised by its row counts and
mixed by the image weight, the user co-occurrence counts R Rᵀ with each user's heaviest
neighbours (ties to the smaller id) filled up to k by copying uniformly drawn slots one at a time
(the draws reproduced from the same seed), and the loss written out: -mean log2 σ(s⁺ - s⁻) plus
the preference and modality-weight squares. Values agree to rtol 1e-5 and the gradients of the
preference tables, the modality weights and a projection to 1e-4.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dense_oracle import (PROTOCOLS, assert_loss_and_grads, assert_terms_matter, build, feature, fixed_batch,
                          hand_task, interaction_matrix, joint, knn, linear, unit)

pytestmark = pytest.mark.usefixtures("one_thread")

# (item kNN k, user neighbours k): with 3 users per list several users choose among tied counts and
# two are filled up; with 6 most lists are filled up over several slots, and with 12 item neighbours
# the observed items would rank masked ones among their top-k if these were not isolated first.
KS = ((5, 3), (12, 6))
CASES = [(n, p, k) for n in (2, 3) for p in PROTOCOLS for k in KS]
IDS = [f"{n}mod-{p}-k{k[0]}-{k[1]}" for n, p, k in CASES]
SEED = 7
SETTINGS = dict(embedding_size=4, n_mm_layers=2, mm_image_weight=0.3, reg_weight=0.5)


def exact_sym_norm(a: torch.Tensor) -> torch.Tensor:
    """D^-1/2 A D^-1/2 with the exact degrees; a node without edges keeps an empty row."""
    deg = a.sum(1)
    d = torch.where(deg > 0, deg.clamp(min=1e-300).pow(-0.5), torch.zeros_like(deg))
    return d[:, None] * a * d[None, :]


def item_graph(task, k: int, image_weight: float) -> torch.Tensor:
    """Σ_m w_m B_m: B_m the top-k pattern of the cosines (missing items isolated before the top-k,
    self-loop only), weight 1 per entry, scaled (r_i + 1e-7)^-1/2 (r_j + 1e-7)^-1/2 by row counts r;
    w_image = image_weight, the other modalities share the rest equally."""
    mods = task.modalities
    others = [m for m in mods if m != "v"]
    total = 0.0
    for m in mods:
        b = (knn(feature(task, m), k, before=task.missing[m], normalise=False) != 0).double()
        r = (b.sum(1) + 1e-7).pow(-0.5)
        w = image_weight if m == "v" else (1.0 - image_weight) / len(others)
        total = total + w * (r[:, None] * b * r[None, :])
    return total


def user_lists(task, k: int) -> list[list[tuple[int, float]]]:
    """Per user: (neighbour, count) of its min(k, 200) heaviest co-occurring users, heaviest first,
    ties to the smaller id (counts = distinct shared training items)."""
    r = interaction_matrix(task)
    c = r @ r.T
    c.fill_diagonal_(0)
    out = []
    for u in range(task.n_users):
        nb = sorted((v for v in range(task.n_users) if c[u, v] > 0), key=lambda v: (-float(c[u, v]), v))
        out.append([(v, float(c[u, v])) for v in nb[:min(k, 200)]])
    return out


def user_graph(task, k: int, draws: torch.Tensor) -> torch.Tensor:
    """The epoch's user graph: a list shorter than k grows one slot at a time, slot p copying slot
    ⌊draws[u, p]·p⌋ of the list as it stands; weights = softmax of the k slots' counts."""
    g = torch.zeros(task.n_users, task.n_users, dtype=torch.float64)
    for u, lst in enumerate(user_lists(task, k)):
        if not lst:
            continue
        lst = list(lst)
        for p in range(len(lst), k):
            lst.append(lst[int(math.floor(float(draws[u, p]) * p))])
        w = torch.softmax(torch.tensor([c for _, c in lst], dtype=torch.float32), 0).double()
        for (v, _), wv in zip(lst, w):
            g[u, v] += wv
    return g


def dragon_oracle(task, cfg, batch, draws):
    mods, nu = task.modalities, task.n_users
    a = exact_sym_norm(joint(interaction_matrix(task)))
    s = item_graph(task, cfg["knn_k"], cfg["mm_image_weight"])
    g = user_graph(task, cfg["user_knn_k"], draws)
    users, pos, neg = batch

    def oracle(p):
        reps = []
        for m in mods:
            hidden = torch.nn.functional.leaky_relu(linear(p, f"mlp_in.{m}", feature(task, m)))
            content = linear(p, f"mlp_out.{m}", hidden)
            x = unit(torch.cat([p[f"preference.{m}"], content]))
            h = a @ x
            reps.append(x + h + a @ h)
        u_rep = torch.cat([p["weight_u"][:, j] * r[:nu] for j, r in enumerate(reps)], 1)  # U × M × 1
        i_rep = torch.cat([r[nu:] for r in reps], 1)
        h = i_rep
        for _ in range(cfg["n_mm_layers"]):
            h = s @ h
        u_all, i_all = u_rep + g @ u_rep, i_rep + h
        u = u_all[users]
        d = (u * i_all[pos]).sum(1) - (u * i_all[neg]).sum(1)
        terms = {"bpr": -torch.log2(torch.sigmoid(d)).mean(),
                 "reg_pref": sum((p[f"preference.{m}"][users] ** 2).mean() for m in mods),
                 "reg_weight_u": (p["weight_u"] ** 2).mean()}
        total = terms["bpr"] + cfg["reg_weight"] * (terms["reg_pref"] + terms["reg_weight_u"])
        return total, terms

    return oracle


def setup(n_mod, protocol, **sets):
    task = hand_task(n_mod, protocol)
    model, cfg = build("DRAGON", task, **{**SETTINGS, "knn_k": 5, "user_knn_k": 3, **sets})
    torch.manual_seed(SEED)
    model.pre_epoch(0)
    torch.manual_seed(SEED)
    draws = torch.rand(task.n_users, cfg["user_knn_k"])
    return model, cfg, task, fixed_batch(task), draws


@pytest.mark.parametrize("n_mod,protocol,ks", CASES, ids=IDS)
def test_dragon_loss(n_mod, protocol, ks):
    model, cfg, task, batch, draws = setup(n_mod, protocol, knn_k=ks[0], user_knn_k=ks[1])
    lengths = [len(lst) for lst in user_lists(task, ks[1])]
    assert min(lengths) < ks[1]  # some users' lists are filled up
    grads = ("preference.v", "preference.t", "weight_u", "mlp_in.t.weight", "mlp_out.v.bias")
    terms = assert_loss_and_grads(model, batch, dragon_oracle(task, cfg, batch, draws), grads)
    assert_terms_matter(terms, {"reg_pref": cfg["reg_weight"], "reg_weight_u": cfg["reg_weight"]})


def test_the_user_graph_is_filled_up_one_copied_slot_at_a_time():
    """Many users with short lists and k = 40 (long chains of copies of copies): the sampled ids and
    weights equal the plain slot-by-slot filling with the same uniform draws."""
    from baselines.dragon import sample_user_graph
    rng = np.random.default_rng(3)
    n_users, k = 300, 40
    lengths = rng.integers(0, k + 1, n_users)
    lengths[:100] = rng.integers(1, 4, 100)
    neighbours = torch.from_numpy(rng.integers(0, n_users, (n_users, k)))
    counts = torch.from_numpy(rng.integers(1, 6, (n_users, k)).astype(np.float32))
    slots = torch.arange(k)
    neighbours[slots >= torch.from_numpy(lengths)[:, None]] = 0
    counts[slots >= torch.from_numpy(lengths)[:, None]] = 0.0
    torch.manual_seed(SEED)
    ids, weights = sample_user_graph(neighbours, counts, torch.from_numpy(lengths))
    torch.manual_seed(SEED)
    draws = torch.rand(n_users, k)
    for u in range(n_users):
        n = int(lengths[u])
        if n == 0:
            assert not weights[u].any()
            continue
        lst = [(int(neighbours[u, j]), float(counts[u, j])) for j in range(n)]
        for p in range(n, k):
            lst.append(lst[int(math.floor(float(draws[u, p]) * p))])
        assert ids[u].tolist() == [v for v, _ in lst], u
        want = torch.softmax(torch.tensor([c for _, c in lst]), 0)
        assert torch.allclose(weights[u], want, rtol=1e-6, atol=0), u


def test_a_user_without_co_occurring_users_gets_nothing_from_the_user_graph():
    from baselines.dragon import sample_user_graph
    neighbours = torch.tensor([[1, 2, 0], [0, 0, 0], [0, 0, 0]])
    counts = torch.tensor([[3.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ids, weights = sample_user_graph(neighbours, counts, torch.tensor([2, 1, 0]))
    assert torch.equal(weights[2], torch.zeros(3))
    assert torch.equal(ids[1], torch.zeros(3, dtype=torch.long)) and torch.allclose(weights[1], torch.full((3,), 1 / 3))
    assert set(ids[0].tolist()) <= {1, 2} and ids[0, :2].tolist() == [1, 2]
    assert torch.allclose(weights.sum(1), torch.tensor([1.0, 1.0, 0.0]))


def test_scores_come_from_the_last_training_batch_unless_fixed():
    """The reference scores with the vectors of the last training batch, computed before that
    batch's update; fix_stale_eval recomputes them from the current weights."""
    for fix in (False, True):
        model, cfg, task, batch, _ = setup(2, "missing", fix_stale_eval=fix)
        with torch.no_grad():
            before = model.forward()
        loss = model.calculate_loss(*batch)
        loss.backward()
        with torch.no_grad():
            for prm in model.parameters():
                if prm.grad is not None:
                    prm.sub_(0.5 * prm.grad)
            after = model.forward()
            model.begin_scoring()
            users, items = model._scoring
            model.end_scoring()
        want = after if fix else before
        assert torch.allclose(users, want[0]) and torch.allclose(items, want[1])
        assert not torch.allclose(items, (before if fix else after)[1])


def test_new_items_are_scored_from_their_features():
    model, cfg, task, batch, _ = setup(2, "new_items", fix_stale_eval=True)
    with torch.no_grad():
        _, items = model.scoring_vectors()
    new = np.flatnonzero(task.new_items)
    assert np.all(np.asarray(task.item_degree())[new] == 0)
    vecs = items[torch.from_numpy(new)]
    assert torch.isfinite(vecs).all()
    assert torch.cdist(vecs, vecs)[~torch.eye(len(new), dtype=torch.bool)].min() > 1e-3  # all distinct
