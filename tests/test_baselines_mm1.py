"""Tests of the multi-modal baselines VBPR, MMGCN, GRCN, SLMRec, BM3 and their shared blocks.

Tiny synthetic replicas (scale 0.03): one short training pass of every model with 2 and 3
modalities under both protocols, then one test per reference-defect option showing what it
changes, and hand-checked values of the shared blocks (edge softmax, edge products, CE_NCE).
"""
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.run import config as C
from benchmarks.core.protocols import get_protocol
from benchmarks.core.sampling import BPRSampler
from data_prep.synthetic import make_replica
from models import registry
from models.graphs.propagation import EdgeGraph, segment_softmax, weighted_propagate
from models.graphs.user_item import ui_mean_adjacency
from models.losses import ce_nce

MODELS = ("VBPR", "MMGCN", "GRCN", "SLMRec", "BM3")
KINDS = ("baby", "tiktok")        # 2 and 3 modalities
PROTOCOLS = ("missing", "new_items")


pytestmark = pytest.mark.usefixtures("one_thread")


@lru_cache(maxsize=None)
def replica(kind):
    return make_replica(kind, 0.03)


@lru_cache(maxsize=None)
def task_for(kind, protocol):
    ds = replica(kind)
    entry = registry.get("VBPR")  # every model here takes mean-imputed features: the same task
    cfg = C.expand_grid(C.resolve(entry, ds.kind, {}, quick=True))[0]
    proto = get_protocol(protocol)
    return proto.build_task(ds, cfg, entry.cls, proto.ratios(ds, cfg)[0])


def build(name, kind="baby", protocol="missing", seed=0, **sets):
    entry = registry.get(name)
    cfg = C.expand_grid(C.resolve(entry, kind, sets, quick=True), entry.cls.list_params)[0]
    task = task_for(kind, protocol)
    torch.manual_seed(seed)
    return entry.cls(cfg, task), task, cfg


def batches(task, n=2, size=512, seed=0):
    sampler = BPRSampler(task, np.random.default_rng(seed))
    out = []
    for b in sampler.epoch(size):
        out.append(b)
        if len(out) == n:
            break
    return out


def train_steps(model, task, cfg, n=2):
    opt = torch.optim.Adam(model.optimizer_parameters(), lr=float(cfg["learning_rate"]),
                           weight_decay=float(cfg.get("weight_decay", 0.0)))
    losses = []
    for users, pos, neg in batches(task, n):
        loss = model.calculate_loss(users, pos, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def scores(model, users):
    model.eval()
    with torch.no_grad():
        model.begin_scoring()
        s = model.full_sort_predict(users)
        model.end_scoring()
    model.train()
    return s


# ----------------------------------------------------------------------------- every model runs
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", MODELS)
def test_short_epoch_shapes_no_nan(name, kind, protocol):
    model, task, cfg = build(name, kind, protocol)
    assert model.group == "multi-modal"
    assert len(task.modalities) == (3 if kind == "tiktok" else 2)
    losses = train_steps(model, task, cfg)
    assert all(np.isfinite(losses))
    users = torch.arange(min(37, task.n_users))
    s = scores(model, users)
    assert s.shape == (len(users), task.n_items)
    assert torch.isfinite(s).all()


def test_fix_reference_defects_switches_every_fix_option():
    for name in MODELS:
        entry = registry.get(name)
        fixes = [k for k in entry.defaults if k.startswith("fix_")]
        assert fixes, name
        assert not any(C.resolve(entry, "baby", {})[k] for k in fixes)
        cfg = C.resolve(entry, "baby", {"fix_reference_defects": True})
        assert all(cfg[k] is True for k in fixes)


def test_grcn_tiktok_best_is_a_grid():
    entry = registry.get("GRCN")
    grid = C.expand_grid(C.resolve(entry, "tiktok", {}), entry.cls.list_params)
    assert len(grid) == 8
    assert {(g["n_layers"], g["learning_rate"]) for g in grid} == \
        {(n, lr) for n in (1, 2) for lr in (0.001, 0.005, 0.007, 0.01)}


# ----------------------------------------------------------------------------- VBPR: which modalities feed the projection
@pytest.mark.parametrize("kind", KINDS)
def test_vbpr_text_only_input(kind):
    task = task_for(kind, "missing")
    dims = {m: task.features[m].shape[1] for m in task.modalities}
    ref, _, _ = build("VBPR", kind)
    fixed, _, _ = build("VBPR", kind, fix_text_only=True)
    # reference: the projection sees the text features only; fixed: text ⊕ image (⊕ audio)
    assert ref.projection.in_features == dims["t"]
    assert torch.equal(ref.content, task.features["t"])
    assert fixed.projection.in_features == sum(dims.values())
    others = [m for m in task.modalities if m != "t"]
    assert torch.equal(fixed.content, torch.cat([task.features["t"]] + [task.features[m] for m in others], 1))
    # with the fix, the image block moves the scores
    users = torch.arange(5)
    before = scores(fixed, users)
    fixed.content[:, dims["t"]:dims["t"] + dims["v"]] += 1.0
    assert not torch.allclose(before, scores(fixed, users))
    # the item vector is [ID factors | projection]: 64 + 64 wide, user vectors 128
    assert ref.item_vectors().shape == (task.n_items, 128) and ref.user_factors.shape[1] == 128


# ----------------------------------------------------------------------------- MMGCN: untrained ID tables, stale scoring vectors
def test_mmgcn_untrained_embeddings():
    ref, task, _ = build("MMGCN", "baby")
    names = {n for n, _ in ref.named_parameters()}
    assert "id_embedding" not in names and not any("preference" in n for n in names)
    (u, p, n), = batches(task, 1)
    ref.calculate_loss(u, p, n).backward()
    assert ref.id_embedding.grad is None
    fixed, _, _ = build("MMGCN", "baby", fix_untrained_embeddings=True)
    names = {n for n, _ in fixed.named_parameters()}
    assert "id_embedding" in names and any("preference" in n for n in names)
    fixed.calculate_loss(u, p, n).backward()
    assert fixed.id_embedding.grad.abs().sum() > 0
    assert all(b.preference.grad.abs().sum() > 0 for b in fixed.branches.values())
    # the regulariser: zero gradient by default, a real gradient with the fix
    fixed.zero_grad()
    (fixed.calculate_loss(u, p, n) * 0 + fixed.id_embedding.pow(2).mean()).backward()
    assert fixed.id_embedding.grad.abs().sum() > 0


def test_mmgcn_conv_variant_follows_modality_count():
    two, _, _ = build("MMGCN", "baby")
    three, _, _ = build("MMGCN", "tiktok")
    assert all(b.bias_and_norm and b.conv_b is not None for b in two.branches.values())
    assert all(not b.bias_and_norm and b.conv_b is None for b in three.branches.values())
    assert list(three.branches) == ["v", "t", "a"]
    assert three.branches["v"].mlp.out_features == 256 and three.branches["t"].mlp is None


def test_mmgcn_mean_adjacency_is_neighbour_mean():
    task = task_for("baby", "missing")
    m = ui_mean_adjacency(task)
    x = torch.randn(task.n_users + task.n_items, 3)
    out = torch.sparse.mm(m, x)
    u = int(task.train_users[0])
    items = np.unique(task.train_items[task.train_users == u])
    assert torch.allclose(out[u], x[task.n_users + items].mean(0), atol=1e-5)


@pytest.mark.parametrize("name", ["MMGCN", "GRCN", "SLMRec"])
def test_stale_evaluation_cache(name):
    """Default: scores come from the representation of the last training batch, computed
    before its optimiser step; fix_stale_eval: from the current parameters."""
    users = torch.arange(20)
    for fix in (False, True):
        model, task, cfg = build(name, "baby", fix_stale_eval=fix, n_layers=1)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        (u, p, n), = batches(task, 1)
        with torch.no_grad():
            model.begin_scoring()
            before = model.full_sort_predict(users).clone()  # fresh (nothing cached yet)
            model.end_scoring()
        loss = model.calculate_loss(u, p, n)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.fix_stale_eval = True
        fresh = scores(model, users)
        model.fix_stale_eval = fix
        got = scores(model, users)
        assert not torch.allclose(before, fresh)
        if fix:
            assert torch.allclose(got, fresh)
        else:
            assert torch.allclose(got, before, atol=1e-6)


# ----------------------------------------------------------------------------- GRCN: the routing that changes nothing
def test_grcn_routing_noop_and_fix():
    users = torch.arange(15)
    out = {}
    for fix in (False, True):
        for n_layers in (1, 3):
            model, task, _ = build("GRCN", "tiktok", fix_routing=fix, n_layers=n_layers)
            with torch.no_grad():
                out[fix, n_layers] = model.forward()[:20]
    assert torch.equal(out[False, 1], out[False, 3])          # reference: n_layers has no effect
    assert not torch.allclose(out[True, 1], out[True, 3])      # fixed routing refines the preferences
    assert not torch.allclose(out[False, 1], out[True, 1])


def test_grcn_attention_hand_checked():
    model, task, _ = build("GRCN", "baby")
    with torch.no_grad():
        rep, a_item, a_user = model.content("v")
        u, i = model.edge_u, model.edge_i
        f = F.normalize(F.leaky_relu(model.mlp["v"](model.feat_v)), dim=1)
        p = F.normalize(model.preference["v"], dim=1)
        item = int(i[0])
        nb = u[i == item]
        alpha = torch.softmax(p[nb] @ f[item], 0)
        assert torch.allclose(a_item[i == item], alpha, atol=1e-5)
        assert torch.allclose(rep[task.n_users + item], f[item] + alpha @ p[nb], atol=1e-5)
        user = int(u[0])
        its = i[u == user]
        beta = torch.softmax(f[its] @ p[user], 0)
        assert torch.allclose(rep[user], p[user] + beta @ f[its], atol=1e-5)
    assert rep.shape == (task.n_users + task.n_items, 64)
    assert model.forward().shape[1] == 64 * 3  # id + v + t


# ----------------------------------------------------------------------------- SLMRec: which batch rows the FAC terms use
def _fac_by_hand(model, views, idx, rows_v, rows_t):
    a = model.g_i_iv(views["id"][idx])
    bv = model.g_v_iv(views["v"][idx])
    c = model.g_iva_ivat(model.g_iv_iva(a))
    bt = model.g_t_ivat(views["t"][idx])
    lab = torch.arange(len(idx))
    lv = F.cross_entropy((a @ bv.T / model.ssl_temp)[rows_v], lab[rows_v])
    lt = F.cross_entropy((c @ bt.T / model.ssl_temp)[rows_t], lab[rows_t])
    return lv + lt


@pytest.mark.parametrize("kind", KINDS)
def test_slmrec_fac_mask(kind):
    for fix in (False, True):
        model, task, _ = build("SLMRec", kind, fix_fac_mask=fix)
        (u, p, n), = batches(task, 1)
        miss_v = torch.from_numpy(task.missing["v"])[p]
        miss_t = torch.from_numpy(task.missing["t"])[p]
        assert 0 < miss_v.sum() < len(p)
        with torch.no_grad():
            _, _, views = model.compute()
            got = model.fac_loss(views, p)
            if fix:
                want = _fac_by_hand(model, views, p, ~miss_v, ~miss_t)       # observed items
            elif kind == "baby":
                want = _fac_by_hand(model, views, p, miss_v, miss_t)         # reference: missing items
            else:
                every = torch.ones(len(p), dtype=torch.bool)
                want = _fac_by_hand(model, views, p, every, every)            # reference 3 modalities: all rows
        assert torch.allclose(got, want, rtol=1e-5), (kind, fix)


def test_slmrec_main_loss_is_inbatch_softmax():
    model, task, _ = build("SLMRec", "tiktok")
    (u, p, n), = batches(task, 1)
    with torch.no_grad():
        user, item, views = model.compute()
        total = model.calculate_loss(u, p, n)
        a, b = F.normalize(user[u], dim=1), F.normalize(item[p], dim=1)
        main = F.cross_entropy(a @ b.T / model.temp, torch.arange(len(u)))
        assert torch.allclose(total, main + model.ssl_alpha * model.fac_loss(views, p), rtol=1e-5)


# ----------------------------------------------------------------------------- BM3: new-item scores, the audio projection's init
def test_bm3_new_item_scores():
    users = torch.arange(10)
    ref, task, cfg = build("BM3", "baby", "new_items")
    new = torch.from_numpy(task.new_items)
    assert new.any() and (ref.item_embedding[new] == 0).all()
    train_steps(ref, task, cfg)
    s = scores(ref, users)[:, new]
    assert torch.allclose(s, s[:, :1].expand_as(s))                  # every new item: the same score
    fixed, _, cfg = build("BM3", "baby", "new_items", fix_new_item_scores=True)
    train_steps(fixed, task, cfg)
    s = scores(fixed, users)[:, new]
    assert (s.std(dim=1) > 0).all()                                   # content-based, distinct scores


def test_bm3_audio_init_and_missing_mask():
    ref, task, _ = build("BM3", "tiktok")
    fixed, _, _ = build("BM3", "tiktok", fix_audio_init=True)
    fan_in = ref.trs["a"].in_features
    bound = 1.0 / np.sqrt(fan_in)                                     # PyTorch default (kaiming a=√5)
    xavier = np.sqrt(2.0 / (fan_in + ref.trs["a"].out_features))
    assert ref.trs["a"].weight.abs().max() <= bound + 1e-6
    assert abs(float(fixed.trs["a"].weight.std()) - xavier) < 0.15 * xavier
    assert not ref.keep                                               # 3 modalities: no masking
    two, task2, _ = build("BM3", "baby")
    feats = two.projections()
    for m in ("v", "t"):
        miss = torch.from_numpy(task2.missing[m])
        assert (feats[m][miss] == 0).all() and (feats[m][~miss].abs().sum(1) > 0).all()


def test_bm3_ignores_negatives():
    model, task, _ = build("BM3", "baby")
    (u, p, n), = batches(task, 1)
    torch.manual_seed(1)
    a = model.calculate_loss(u, p, n)
    torch.manual_seed(1)
    b = model.calculate_loss(u, p, torch.zeros_like(n))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- shared blocks
def test_segment_softmax_and_edge_graph():
    torch.manual_seed(0)
    key = torch.unique(torch.randint(0, 40 * 30, (300,)))
    src, dst = key % 40, key // 40
    logits = torch.randn(len(src), dtype=torch.float64)
    a = segment_softmax(logits, dst, 30)
    for t in dst.unique():
        sel = dst == t
        assert torch.allclose(a[sel], torch.softmax(logits[sel], 0))
    g = EdgeGraph(src, dst, 40, 30)
    x = torch.randn(40, 4, dtype=torch.float64, requires_grad=True)
    v = torch.rand(len(src), dtype=torch.float64, requires_grad=True)
    y = torch.randn(30, 4, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(g.propagate(v, x), weighted_propagate(x, src, dst, v, 30))
    assert torch.allclose(g.edge_dot(y, x), (y[dst] * x[src]).sum(1))
    assert torch.autograd.gradcheck(lambda v, x: g.propagate(v, x), (v, x))
    assert torch.autograd.gradcheck(lambda y, x: g.edge_dot(y, x), (y, x))


def test_ce_nce_matches_cross_entropy_with_duplicates():
    torch.manual_seed(0)
    ids_a, ids_b = torch.randint(0, 50, (120,)), torch.randint(0, 70, (120,))
    A = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    B = torch.randn(70, 8, dtype=torch.float64, requires_grad=True)
    rows = torch.rand(120) < 0.4
    got = ce_nce(A[ids_a], B[ids_b], 0.3, rows, a_ids=ids_a, b_ids=ids_b)
    g1 = torch.autograd.grad(got, (A, B))
    lab = torch.arange(120)
    want = F.cross_entropy((A[ids_a] @ B[ids_b].T / 0.3)[rows], lab[rows])
    g2 = torch.autograd.grad(want, (A, B))
    assert torch.allclose(got, want)
    assert all(torch.allclose(x, y) for x, y in zip(g1, g2))
    assert torch.isnan(ce_nce(A[ids_a], B[ids_b], 0.3, torch.zeros(120, dtype=torch.bool)))
