"""LATTICE, MGCN, LGMRec, DAMRS, GUME: shared graph blocks against hand/dense computations,
one short epoch per model under both protocols with 2 and 3 modalities, and one test per
reference-defect option showing what it changes."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from benchmarks.run.config import expand_grid, resolve
from benchmarks.core.protocols import get_protocol
from benchmarks.core.sampling import BPRSampler
from data_prep.synthetic import make_replica
from models import registry
from models.graphs.item_item import cooccurrence_graph, shared_neighbours
from models.graphs.knn import cached_knn_graph, denoised_knn_graphs, topk_cosine_edges
from models.graphs.propagation import weighted_propagate
from models.graphs.sparse import binary_sym_normalize
from models.losses import (batch_info_nce, bernoulli_kl, info_nce, nce_over_candidates, nce_over_lowrank_candidates,
                           neighbour_discrimination, symmetric_bernoulli_kl)

MODELS = ("LATTICE", "MGCN", "LGMRec", "DAMRS", "GUME")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tasks():
    out = {}
    entry = registry.get("MGCN")
    for kind in ("baby", "tiktok"):
        ds = make_replica(kind, scale=0.03)
        for proto in ("missing", "new_items"):
            p = get_protocol(proto)
            cfg = resolve(entry, ds.kind, {}, quick=True)
            out[(kind, proto)] = p.build_task(ds, cfg, entry.cls, p.ratios(ds, cfg)[0])
    return out


def build(name, task, **sets):
    entry = registry.get(name)
    kind = task.dataset.removeprefix("synthetic:")
    cfg = expand_grid(resolve(entry, kind, sets, quick=True), entry.cls.list_params)[0]
    torch.manual_seed(0)
    return entry.cls(cfg, task), cfg


def batches(task, size, n, seed=0):
    out = []
    for b in BPRSampler(task, np.random.default_rng(seed)).epoch(size):
        out.append(b)
        if len(out) == n:
            break
    return out


# --------------------------------------------------------------------------- shared blocks

def test_cooccurrence_graph_hand_example():
    # u0: 0 1 2 (0 twice), u1: 0 1 3, u2: 1 2 3, u3: 0 1
    users = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
    items = np.array([0, 0, 1, 2, 0, 1, 3, 1, 2, 3, 0, 1])
    full = cooccurrence_graph(4, users, items, min_common=2).toarray()
    # common users: (0,1)=3, (1,2)=2, (1,3)=2; (0,2), (0,3), (2,3) have 1 < 2; no diagonal
    expect = np.zeros((4, 4))
    expect[0, 1] = expect[1, 0] = 3
    expect[1, 2] = expect[2, 1] = expect[1, 3] = expect[3, 1] = 2
    assert np.array_equal(full, expect)
    top2 = cooccurrence_graph(4, users, items, min_common=2, topk=2).toarray()
    assert np.array_equal(top2[1], [3, 0, 2, 0])  # tie between items 2 and 3 goes to the smaller id
    top1 = cooccurrence_graph(4, users, items, min_common=2, topk=1).toarray()
    assert np.array_equal(top1, np.array([[0, 3, 0, 0], [3, 0, 0, 0], [0, 2, 0, 0], [0, 2, 0, 0]]))
    assert cooccurrence_graph(4, users, items, min_common=4).nnz == 0
    # counted in blocks of rows (a catalogue's counts never exist at once): the same graph
    for topk in (None, 1, 2):
        whole = cooccurrence_graph(4, users, items, min_common=2, topk=topk)
        for block_pairs in (1, 5):
            parts = cooccurrence_graph(4, users, items, min_common=2, topk=topk, block_pairs=block_pairs)
            assert np.array_equal(parts.toarray(), whole.toarray())
    # DA-MRS behaviour graph: + self-loops, binary, (r_i r_j)^-1/2 with r the row counts
    g = binary_sym_normalize(top2 + np.eye(4)).toarray()
    r = np.array([2, 3, 2, 2])
    assert g[0, 1] == pytest.approx(1 / np.sqrt((r[0] + 1e-7) * (r[1] + 1e-7)))
    assert g[1, 2] == pytest.approx(1 / np.sqrt(3 * 2), rel=1e-6) and g[1, 3] == 0
    assert g[3, 3] == pytest.approx(0.5, rel=1e-6)


def test_damrs_behaviour_graph_uses_training_rows_only(tasks):
    task = tasks[("tiktok", "new_items")]
    model, cfg = build("DAMRS", task)
    c = cooccurrence_graph(task.n_items, task.train_users, task.train_items, min_common=2, topk=cfg["cooc_topk"])
    expect = binary_sym_normalize(c + sp.eye(task.n_items)).toarray()
    got = model.graphs_infer["s"][0].to_dense().numpy()
    assert np.allclose(got, expect, atol=1e-7)
    # new items have no training rows: their behaviour row is the self-loop alone
    new = np.flatnonzero(task.new_items)
    assert np.allclose(got[new][:, new], np.eye(len(new)), atol=1e-6)


def _dense_denoised(xs, k, isolate=None, exclude=None, eps=0.0):
    sims = []
    for x in xs:
        xn = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        sims.append(xn @ xn.T)
    means = [s.mean() for s in sims]
    keep = np.logical_and.reduce([s >= m for s, m in zip(sims, means)])
    out = []
    for j, s in enumerate(sims):
        s = s * keep
        for flags in ([] if isolate is None else [isolate[j]]) + ([] if exclude is None else [exclude]):
            s[:, flags] = 0
            s[flags] = 0
            idx = np.flatnonzero(flags)
            s[idx, idx] = 1
        g = np.zeros_like(s)
        for i in range(len(s)):
            c = int((s[i] != 0).sum())
            g[i, np.argsort(-s[i], kind="stable")[:min(c, k)]] = 1
        out.append(g)
    return out


def test_denoised_knn_matches_dense_reference():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(40, 6)).astype(np.float32) + 0.3, rng.normal(size=(40, 5)).astype(np.float32)]
    iso = [rng.random(40) < 0.2, rng.random(40) < 0.2]
    new = rng.random(40) < 0.1
    for kw in ({}, {"isolate": iso}, {"isolate": iso, "exclude": new}):
        got = denoised_knn_graphs(xs, 4, chunk_rows=7, **kw)
        want = _dense_denoised(xs, 4, **kw)
        for g, w in zip(got, want):
            assert np.array_equal(g.toarray(), w)
    # isolated items keep only their self-loop; a surviving pair is above the mean in BOTH modalities
    g = denoised_knn_graphs(xs, 4, isolate=iso)[0].toarray()
    assert np.array_equal(g[iso[0]], np.eye(40)[iso[0]])


def test_learned_graph_matches_dense_topk_and_gradient():
    torch.manual_seed(0)
    x = torch.randn(30, 8, requires_grad=True)
    excl = np.zeros(30, dtype=bool)
    excl[[3, 7]] = True
    rows, cols, vals = topk_cosine_edges(x, 5, exclude=excl, chunk_rows=4)
    sparse = torch.zeros(30, 30).index_put((rows, cols), vals, accumulate=True)
    # dense reference: build_sim, zero new rows/cols, top-k, scatter
    xn = x / x.norm(dim=1, keepdim=True)
    s = xn @ xn.T
    m = torch.ones(30)
    m[[3, 7]] = 0
    s = s * m[:, None] * m[None, :]
    v, i = torch.topk(s, 5, dim=1)
    dense = torch.zeros_like(s).scatter(1, i, v)
    assert torch.allclose(sparse, dense, atol=1e-6)
    e = torch.randn(30, 4)
    (gs,) = torch.autograd.grad(weighted_propagate(e, cols, rows, vals, 30).pow(2).sum(), x)
    (gd,) = torch.autograd.grad((dense @ e).pow(2).sum(), x)
    assert torch.allclose(gs, gd, atol=1e-5)


def test_losses_against_formulas():
    torch.manual_seed(0)
    a, c = torch.randn(5, 4), torch.randn(7, 4)
    an, cn = F.normalize(a, dim=1), F.normalize(c, dim=1)
    # LGMRec's contrast: sum over rows; row 0 appears twice (weight 2), positives among candidates
    labels = torch.tensor([6, 0, 2, 2, 5])
    rows = torch.tensor([0, 0, 1, 2, 3, 4])
    lab_rows = torch.tensor([6, 6, 0, 2, 2, 5])
    want = -torch.log(torch.exp((an[rows] * cn[lab_rows]).sum(1) / 0.2) / torch.exp(an[rows] @ cn.T / 0.2).sum(1)).sum()
    a_ = a.clone().requires_grad_(True)
    got = nce_over_candidates(a_, c, labels, 0.2, torch.tensor([2, 1, 1, 1, 1]))
    assert torch.allclose(got, want, rtol=1e-5)
    a2 = a.clone().requires_grad_(True)
    naive = -torch.log(torch.exp((F.normalize(a2, dim=1)[rows] * cn[lab_rows]).sum(1) / 0.2)
                       / torch.exp(F.normalize(a2, dim=1)[rows] @ cn.T / 0.2).sum(1)).sum()
    (g1,) = torch.autograd.grad(got, a_)
    (g2,) = torch.autograd.grad(naive, a2)
    assert torch.allclose(g1, g2, atol=1e-5)
    # low-rank candidates (LGMRec: hypergraph memberships × hyperedge states) give the same value and gradients
    fac, basis = torch.rand(7, 3, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    w = torch.tensor([2, 1, 1, 1, 1])
    full = nce_over_candidates(a, fac @ basis, labels, 0.2, w)
    low = nce_over_lowrank_candidates(a, fac, basis, labels, 0.2, w)
    assert torch.allclose(full, low, rtol=1e-5)
    gf, gl = torch.autograd.grad(full, (fac, basis)), torch.autograd.grad(low, (fac, basis))
    assert all(torch.allclose(p_, q_, atol=1e-5) for p_, q_ in zip(gf, gl))
    # MGCN / GUME batch InfoNCE on distinct ids == the reference's info_nce over duplicated rows
    x, y = torch.randn(9, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    ids = torch.tensor([3, 1, 3, 3, 8, 0, 1])
    v1, v2 = batch_info_nce(x, y, ids, 0.2), info_nce(x[ids], y[ids], 0.2)
    assert torch.allclose(v1, v2, rtol=1e-5)
    g1, g2 = torch.autograd.grad(v1, (x, y)), torch.autograd.grad(v2, (x, y))
    assert all(torch.allclose(p_, q_, atol=1e-6) for p_, q_ in zip(g1, g2))
    mm, single = torch.tensor([[0, 1]] * 5), torch.tensor([[2, 3]] * 5)
    sc = torch.exp(an @ cn.T / 0.2)
    s_mm, s_s, s_all = sc[:, :2].sum(1), sc[:, 2:4].sum(1), sc.sum(1)
    want = -torch.log(s_mm / s_all + 1e-9) - torch.log(s_s / (s_all - s_mm) + 1e-9)
    assert torch.allclose(neighbour_discrimination(a, c, mm, single, 0.2), want, rtol=1e-4)
    p, q = torch.randn(6), torch.randn(6)
    sp_, sq_ = torch.sigmoid(p), torch.sigmoid(q)
    want = sp_ * torch.log(sp_) - sp_ * torch.log(sq_) + (1 - sp_) * torch.log(1 - sp_) - (1 - sp_) * torch.log(1 - sq_)
    assert torch.allclose(bernoulli_kl(p, q), want, atol=1e-6)
    assert torch.isfinite(bernoulli_kl(torch.tensor([60.0]), torch.tensor([-60.0]))).all()
    assert torch.allclose(symmetric_bernoulli_kl(p, q), bernoulli_kl(p, q) + bernoulli_kl(q, p), atol=1e-6)


# --------------------------------------------------------------------------- one short epoch each

@pytest.mark.parametrize("kind", ["baby", "tiktok"])
@pytest.mark.parametrize("proto", ["missing", "new_items"])
@pytest.mark.parametrize("name", MODELS)
def test_short_epoch_and_scores(tasks, name, kind, proto):
    task = tasks[(kind, proto)]
    model, cfg = build(name, task)
    assert len(model.mods) == len(task.modalities) == (2 if kind == "baby" else 3)
    params = list(model.optimizer_parameters())
    model.train()
    model.pre_epoch(0)
    for users, pos, neg in batches(task, min(256, int(cfg["train_batch_size"])), 2):
        loss = model.calculate_loss(users, pos, neg)
        assert loss.dim() == 0 and torch.isfinite(loss)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():  # plain SGD step (a torch optimiser's first use imports torch._dynamo: ~10 s)
            for p in params:
                if p.grad is not None:
                    assert torch.isfinite(p.grad).all()
                    p -= 1e-2 * p.grad
    model.eval()
    with torch.no_grad():
        model.begin_scoring()
        scores = model.full_sort_predict(torch.arange(7))
        model.end_scoring()
    assert scores.shape == (7, task.n_items) and torch.isfinite(scores).all()


# --------------------------------------------------------------------------- defect options

def _grads_after_step(model, task, size=256):
    model.train()
    users, pos, neg = batches(task, size, 1)[0]
    model.zero_grad()
    model.calculate_loss(users, pos, neg).backward()


@pytest.mark.parametrize("name", ["MGCN", "GUME"])
def test_fix_new_item_grad(tasks, name):
    task = tasks[("tiktok", "new_items")]
    for fix in (False, True):
        model, _ = build(name, task, fix_new_item_grad=fix)
        _grads_after_step(model, task)
        g = model.features["v"].grad
        # reference: the no_grad zeroing detaches every item's gated vector -> raw features get nothing
        assert (g is not None and g.abs().sum() > 0) == fix
        if fix:  # new items themselves still get no gradient through the zeroed vectors
            assert g[torch.from_numpy(task.new_items)].abs().sum() == 0
    # the missing-only protocol is unaffected by the option
    model, _ = build(name, tasks[("tiktok", "missing")])
    _grads_after_step(model, tasks[("tiktok", "missing")])
    assert model.features["v"].grad.abs().sum() > 0


def test_gume_fix_align_index(tasks):
    task = tasks[("tiktok", "missing")]
    items = torch.tensor([1, 4, 9, 20])
    for fix in (False, True):
        model, _ = build("GUME", task, fix_align_index=fix)
        model.eval()
        with torch.no_grad():
            _, _, _, _, explicit = model.forward()
            got = model.alignment(explicit, items)
        rows = items + task.n_users if fix else items  # reference: user rows with the items' ids
        want = sum((explicit[x][rows].var() - explicit[y][rows].var()).abs() +
                   (explicit[x][rows].mean() - explicit[y][rows].mean()).abs()
                   for x, y in (("v", "t"), ("a", "t"), ("v", "a"))) / 3
        assert torch.allclose(got, want)


def test_gume_fix_ii_edges(tasks):
    task = tasks[("baby", "missing")]
    nu = task.n_users
    off, _ = build("GUME", task)
    on, _ = build("GUME", task, fix_ii_edges=True)
    assert off.n_ii_edges == 0  # reference (two modalities): the edge enhancement is disabled
    expect = shared_neighbours(cached_knn_graph(task, "v", 10, "before"), cached_knn_graph(task, "t", 10, "before"))
    assert on.n_ii_edges == expect.nnz > 0
    block = on.adj[0].to_dense()[nu:, nu:].numpy()
    assert np.array_equal(block != 0, expect.toarray() != 0)
    # three modalities: always enhanced, from the masked (after-kNN) image and text graphs
    t3 = tasks[("tiktok", "missing")]
    m3, _ = build("GUME", t3)
    e3 = shared_neighbours(cached_knn_graph(t3, "v", 10, "after"), cached_knn_graph(t3, "t", 10, "after"))
    assert m3.n_ii_edges == e3.nnz
    missing = t3.missing["v"] | t3.missing["t"]
    assert e3.toarray()[missing].sum() == 0  # isolated (missing) items get no item-item edge


def test_lgmrec_fix_eval_noise(tasks):
    task = tasks[("tiktok", "missing")]
    users = torch.arange(10)
    for fix in (False, True):
        model, _ = build("LGMRec", task, fix_eval_noise=fix)
        model.eval()
        with torch.no_grad():
            s1, s2 = model.full_sort_predict(users), model.full_sort_predict(users)
        assert torch.equal(s1, s2) == fix  # reference: Gumbel noise at evaluation -> random scores


def test_lgmrec_fix_complete_items(tasks):
    task = tasks[("tiktok", "missing")]
    pos = torch.arange(task.n_items).repeat(2)
    complete = ~(task.missing["v"] | task.missing["t"] | task.missing["a"])
    off, _ = build("LGMRec", task)
    rows, cand = off._item_contrast_sets(pos)
    assert torch.equal(rows, pos) and cand is None  # reference: duplicates kept, all items as candidates
    on, _ = build("LGMRec", task, fix_complete_items=True)
    rows, cand = on._item_contrast_sets(pos)
    assert np.array_equal(rows.numpy(), np.flatnonzero(complete)) and np.array_equal(cand.numpy(), rows.numpy())
    # two modalities always restrict to complete items
    t2 = tasks[("baby", "missing")]
    m2, _ = build("LGMRec", t2)
    rows, cand = m2._item_contrast_sets(torch.arange(t2.n_items))
    assert np.array_equal(cand.numpy(), np.flatnonzero(~(t2.missing["v"] | t2.missing["t"])))


def test_damrs_fix_mask_missing(tasks):
    task = tasks[("baby", "missing")]
    miss = task.missing["v"]
    for fix in (False, True):
        model, _ = build("DAMRS", task, fix_mask_missing=fix)
        g = model.graphs_infer["v"][0].to_dense().numpy()
        rows = g[miss] != 0
        only_self = np.array_equal(rows, np.eye(task.n_items, dtype=bool)[miss])
        assert only_self == fix  # reference: mean-imputed missing items link to each other
    # three modalities always isolate missing items
    t3 = tasks[("tiktok", "missing")]
    g3 = build("DAMRS", t3)[0].graphs_infer["a"][0].to_dense().numpy()
    assert np.array_equal(g3[t3.missing["a"]] != 0, np.eye(t3.n_items, dtype=bool)[t3.missing["a"]])


def test_lattice_fix_inference_normalization(tasks):
    task = tasks[("baby", "missing")]
    for fix in (False, True):
        model, cfg = build("LATTICE", task, fix_inference_normalization=fix)
        lam = cfg["lambda_coeff"]
        with torch.no_grad():
            (r, c, v), _ = model._item_graph(inference=True)
            (rt, ct, vt), _ = model._item_graph(inference=False)
        row_sum = torch.zeros(task.n_items).index_add(0, r, v)
        if fix:  # same normalised graph as training (no new items here)
            assert torch.allclose(v, vt) and torch.equal(r, rt)
        else:  # reference: raw weighted similarities, rows sum to about (1-λ)·k
            w = torch.softmax(model.modal_weight, 0)
            assert row_sum.max() > 2 * (1 - lam) and not torch.allclose(v, vt)
            sims = torch.cat([topk_cosine_edges(model.trs[m](model.features[m]), 10)[2] * w[j]
                              for j, m in enumerate(model.mods)])
            assert torch.allclose(v, (1 - lam) * sims, atol=1e-6)
    # three modalities: one un-normalised mix in training and prediction, option irrelevant
    t3 = tasks[("tiktok", "missing")]
    m3, _ = build("LATTICE", t3)
    with torch.no_grad():
        (_, _, a), _ = m3._item_graph(inference=True)
        (_, _, b), _ = m3._item_graph(inference=False)
    assert torch.allclose(a, b)


def test_lattice_new_items_excluded_from_training_graph_only(tasks):
    task = tasks[("baby", "new_items")]
    model, _ = build("LATTICE", task)
    new = torch.from_numpy(task.new_items)
    assert model.item_embedding[new].abs().sum() == 0  # two-modality path zeroes new items at start
    with torch.no_grad():
        (r, c, _), static = model._item_graph(inference=False)
        (ri, ci, _), static_i = model._item_graph(inference=True)
    assert not (new[r] | new[c]).any() and (new[ri] | new[ci]).any()
    assert static[0][1][0].to_dense()[new].abs().sum() == 0 and static_i[0][1][0].to_dense()[new].abs().sum() > 0
