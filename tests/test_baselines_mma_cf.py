"""Tests of the collaborative (NGCF, SGL, SimGCL) and missing-modality-aware (MILK, SIBRAR, CI2MG)
baselines and the shared blocks they added (edge dropping, Sinkhorn transport, hypergraph convolution)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.run.config import expand_grid, resolve
from benchmarks.core.engine import Trainer, seed_everything
from benchmarks.core.protocols import get_protocol, resolve_ratio
from benchmarks.core.sampling import BPRSampler
from data_prep.synthetic import make_replica
from models.graphs.propagation import hypergraph_conv, lightgcn
from models.graphs.sparse import to_torch_sparse
from models.graphs.transport import sinkhorn_transport
from models.graphs.user_item import EdgeDropper, ui_adjacency, ui_adjacency_rw
from models.losses import info_nce
from models.registry import get

MODELS = ("NGCF", "SGL", "SimGCL", "MILK", "SIBRAR", "CI2MG")
SCALE = 0.03


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return {"tiktok": make_replica("tiktok", SCALE), "baby": make_replica("baby", SCALE)}


def build(data, name, kind="tiktok", protocol="missing", seed=0, **sets):
    entry = get(name)
    cfg = expand_grid(resolve(entry, kind, sets, quick=True), entry.cls.list_params)[0]
    ds = data[kind]
    rng = seed_everything(seed)
    task = get_protocol(protocol).build_task(ds, cfg, entry.cls, resolve_ratio(ds, cfg.get("missing_ratio")))
    return entry.cls(cfg, task), task, cfg, rng


def batch(task, rng, size=256):
    return next(BPRSampler(task, rng).epoch(size))


# --------------------------------------------------------------------------- every model, both protocols

@pytest.mark.parametrize("kind", ["baby", "tiktok"])  # 2 and 3 modalities
@pytest.mark.parametrize("protocol", ["missing", "new_items"])
@pytest.mark.parametrize("name", MODELS)
def test_one_epoch(data, name, kind, protocol):
    model, task, cfg, rng = build(data, name, kind, protocol, epochs=1, train_batch_size=1024)
    assert len(task.modalities) == (2 if kind == "baby" else 3)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    result = Trainer(model, task, cfg, rng).run()
    assert np.isfinite(result.curve[0]["train_loss"]) and result.curve[0]["train_loss"] > 0
    assert all(0.0 <= v <= 1.0 for v in result.test.values())
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert "user_embedding" in changed and len(changed) >= 2
    # Cached scoring (begin_scoring) and direct scoring give the same ranking scores.
    model.eval()
    users = torch.arange(min(50, task.n_users))
    with torch.no_grad():
        direct = model.full_sort_predict(users)
        model.begin_scoring()
        cached = model.full_sort_predict(users)
        model.end_scoring()
    assert direct.shape == (len(users), task.n_items) and torch.isfinite(direct).all()
    assert torch.allclose(direct, cached, atol=1e-5)


# --------------------------------------------------------------------------- configuration

def test_fix_reference_defects_switches_every_option():
    for name in MODELS:
        entry = get(name)
        fixes = [k for k in entry.defaults if k.startswith("fix_")]
        cfg = resolve(entry, "tiktok", {})
        assert all(cfg[k] is False for k in fixes), name
        cfg = resolve(entry, "tiktok", {"fix_reference_defects": True})
        assert all(cfg[k] is True for k in fixes), name
    expected = {"SGL": 2, "SimGCL": 1, "MILK": 2, "SIBRAR": 1, "CI2MG": 3, "NGCF": 0}
    assert {n: sum(k.startswith("fix_") for k in get(n).defaults) for n in MODELS} == expected


def test_ngcf_list_params_are_not_grids(data):
    entry = get("NGCF")
    assert set(entry.cls.list_params) == {"weight_size", "mess_dropout"}
    baby = expand_grid(resolve(entry, "baby", {}), entry.cls.list_params)
    assert len(baby) == 1 and baby[0]["weight_size"] == [64, 64] and baby[0]["mess_dropout"] == [0.1, 0.1]
    assert baby[0]["reg_weight"] == 0.01
    tiktok = expand_grid(resolve(entry, "tiktok", {}), entry.cls.list_params)  # no best file: reg grid only
    assert sorted(s["reg_weight"] for s in tiktok) == [0.001, 0.01, 0.1]
    assert all(s["grid_keys"] == ["reg_weight"] and s["weight_size"] == [64, 64] for s in tiktok)
    # Three layers of widths 32, 16, 8: final vectors are 64 + 32 + 16 + 8 wide.
    model, task, _, _ = build(data, "NGCF", weight_size=[32, 16, 8], mess_dropout=[0.0, 0.0, 0.0], reg_weight=0.1)
    assert model.propagate().shape == (task.n_users + task.n_items, 120)
    with pytest.raises(ValueError, match="mess_dropout"):
        build(data, "NGCF", weight_size=[32, 16], mess_dropout=[0.1], reg_weight=0.1)


# --------------------------------------------------------------------------- collaborative models

def test_ngcf_layer_matches_hand_computation(data):
    model, task, _, rng = build(data, "NGCF", reg_weight=0.01)
    model.eval()
    a = ui_adjacency(task).to_dense()
    e = torch.cat([model.user_embedding, model.item_embedding]).detach()
    outs = [e]
    for gc, bi in zip(model.gc, model.bi):
        s = a @ e
        e = F.leaky_relu(gc(s + e) + bi(e * s), 0.2)
        outs.append(e)
    # outs[k] holds the raw layer outputs; the model concatenates E0 and the normalised layers.
    want = torch.cat([outs[0]] + [F.normalize(o, dim=1) for o in outs[1:]], dim=1)
    with torch.no_grad():
        got = model.propagate()
    assert torch.allclose(got, want, atol=1e-5)
    # Training loss on the batch's rows only equals the loss on the full propagation.
    users, pos, neg = batch(task, rng)
    loss = model.calculate_loss(users, pos, neg)
    u, i = want[:task.n_users][users], want[task.n_users:]
    ref = -torch.log(1e-10 + torch.sigmoid((u * i[pos]).sum(1) - (u * i[neg]).sum(1))).mean() + \
        0.01 * (u.norm() + i[pos].norm() + i[neg].norm()) / len(users)
    assert torch.allclose(loss, ref, atol=1e-6)


def test_edge_dropper_normalisation_by_hand(data):
    _, task, _, _ = build(data, "SGL", reg_weight=0.01)
    d = EdgeDropper(task)
    assert d.n_edges == task.train_matrix().nnz
    mask = torch.rand(d.n_edges) < 0.7
    adj = d.adjacency(mask).to_dense()
    u, i = d.users[mask], d.items[mask]
    du = torch.bincount(u, minlength=task.n_users).float()
    di = torch.bincount(i, minlength=task.n_items).float()
    want = torch.zeros_like(adj)
    val = 1.0 / torch.sqrt((du[u] + 1e-7) * (di[i] + 1e-7))
    want[u, i + task.n_users] = val
    want[i + task.n_users, u] = val
    assert torch.allclose(adj, want)
    full = d.adjacency(torch.ones(d.n_edges, dtype=torch.bool)).to_dense()
    assert torch.allclose(full, ui_adjacency(task).to_dense(), atol=1e-6)


def test_sgl_fix_edge_sampling_changes_which_edges_survive(data):
    """Reference: keep probability grows with the edge weight 1/sqrt(d_u d_i); fixed: uniform."""
    _, task, _, _ = build(data, "SGL", reg_weight=0.01)
    d = EdgeDropper(task)
    keep = d.n_edges // 2
    torch.manual_seed(0)
    counts = {True: torch.zeros(d.n_edges), False: torch.zeros(d.n_edges)}
    for weighted in (True, False):
        for _ in range(200):
            adj = d.sample(keep, weighted=weighted)
            assert adj._nnz() == 2 * keep
            kept = torch.zeros(task.n_users, task.n_items)
            rows = torch.repeat_interleave(torch.arange(task.n_users), torch.diff(adj.crow_indices()[:task.n_users + 1]))
            kept[rows, adj.col_indices()[:keep] - task.n_users] = 1.0
            counts[weighted] += kept[d.users, d.items]
    heavy = d.weights > d.weights.median()
    w_heavy, w_light = counts[True][heavy].mean() / 200, counts[True][~heavy].mean() / 200
    u_heavy, u_light = counts[False][heavy].mean() / 200, counts[False][~heavy].mean() / 200
    assert w_heavy - w_light > 0.1           # weighted: heavy edges clearly kept more often
    assert abs(u_heavy - u_light) < 0.03     # uniform: no preference
    assert abs(u_heavy - 0.5) < 0.03


def test_sgl_fix_drop_rates(data):
    ref, task, _, _ = build(data, "SGL", reg_weight=0.01)
    e = task.train_matrix().nnz
    assert ref.keep == [int(e * 0.9), int(e * 0.8)] and ref.weighted
    fixed, _, _, _ = build(data, "SGL", reg_weight=0.01, fix_drop_rates=True)
    assert fixed.keep == [int(e * 0.9)] * 2 and fixed.weighted
    uni, _, _, _ = build(data, "SGL", reg_weight=0.01, fix_edge_sampling=True)
    assert not uni.weighted and uni.keep == ref.keep


def test_sgl_loss_is_bpr_plus_weighted_nce(data):
    model, task, _, rng = build(data, "SGL", reg_weight=0.5)
    users, pos, neg = batch(task, rng)
    torch.manual_seed(3)
    loss = model.calculate_loss(users, pos, neg)
    torch.manual_seed(3)
    v1, v2 = (model.propagate(model.dropper.sample(k)) for k in model.keep)
    u, i = model.propagate(model.adj)
    bpr = -F.logsigmoid((u[users] * i[pos]).sum(1) - (u[users] * i[neg]).sum(1)).mean()
    uid, iid = torch.unique(users), torch.unique(torch.cat([pos, neg]))
    cl = info_nce(v1[0][uid], v2[0][uid], 0.2, 1e-9) + info_nce(v1[1][iid], v2[1][iid], 0.2, 1e-9)
    assert torch.allclose(loss, bpr + 0.5 * cl, atol=1e-5)


def test_simgcl_fix_perturbed_layer0(data):
    """With eps = 0 the perturbed view is LightGCN: layer 0 in the mean (reference) or not (fixed)."""
    ref, task, _, _ = build(data, "SimGCL", reg_weight=0.01, eps=0.0)
    fixed, _, _, _ = build(data, "SimGCL", reg_weight=0.01, eps=0.0, fix_perturbed_layer0=True)
    fixed.load_state_dict(ref.state_dict())
    adj = ui_adjacency(task).to_dense()
    e0 = torch.cat([ref.user_embedding, ref.item_embedding]).detach()
    layers = [e0]
    for _ in range(3):
        layers.append(adj @ layers[-1])
    with torch.no_grad():
        assert torch.allclose(torch.cat(ref.perturbed()), torch.stack(layers).mean(0), atol=1e-6)
        assert torch.allclose(torch.cat(fixed.perturbed()), torch.stack(layers[1:]).mean(0), atol=1e-6)
        assert torch.allclose(torch.cat(ref.propagate()), torch.cat(fixed.propagate()))  # clean view unchanged
    # eps > 0, one layer: view = (E0 + ÂE0 + sign(ÂE0) ⊙ normalize(U[0,1)) · eps) / 2.
    noisy, _, _, _ = build(data, "SimGCL", reg_weight=0.01, eps=0.1, n_ui_layers=1)
    noisy.load_state_dict(ref.state_dict())
    with torch.no_grad():
        noise = 2 * (torch.cat(noisy.perturbed()) - (layers[0] + layers[1]) / 2)
    full = (layers[1] != 0).all(1)
    assert torch.allclose(noise[full].norm(dim=1), torch.full((int(full.sum()),), 0.1), atol=1e-5)
    assert torch.all(torch.sign(noise) * torch.sign(layers[1]) >= 0)


# --------------------------------------------------------------------------- missing-modality-aware models

@pytest.mark.parametrize("name", ["MILK", "SIBRAR", "CI2MG"])
@pytest.mark.parametrize("kind", ["baby", "tiktok"])
def test_models_never_hold_true_values_of_masked_rows(data, name, kind):
    model, task, _, _ = build(data, name, kind)
    ds = data[kind]
    assert model.handles_missing == "impute" and task.imputation == "mean"
    for m in task.modalities:
        miss = task.missing[m]
        assert miss.any()
        true = torch.from_numpy(ds.features[m])
        fill = true[~miss].mean(0)  # the protocol's mean over observed items
        if name == "CI2MG":
            held = getattr(model, f"feat_{m}")
        else:
            held = model.features[m].detach()
        if name == "MILK" and kind == "baby":
            fill = F.normalize(fill, dim=0)  # two-modality MILK L2-normalises after imputation
        assert torch.allclose(held[torch.from_numpy(miss)], fill.expand(int(miss.sum()), -1), atol=1e-5)
        differs = (held[torch.from_numpy(miss)] - (F.normalize(true, dim=1) if name == "MILK" and kind == "baby"
                                                   else true)[torch.from_numpy(miss)]).abs().amax(1)
        assert (differs > 1e-4).all()  # no masked row equals its true value


def test_milk_modality_count_and_fix_zero_vectors(data):
    model, task, _, _ = build(data, "MILK", "tiktok")
    n_obs = sum((~task.missing[m]).astype(int) for m in task.modalities)
    c = model.modality_count.numpy()
    assert np.allclose(c[n_obs == 3], 1 / 3) and np.allclose(c[n_obs == 2], 1 / 2)
    assert np.allclose(c[n_obs == 1], 1.0) and np.all(c[n_obs == 0] == 0.0)
    none = torch.from_numpy(n_obs == 0)
    assert none.any()
    with torch.no_grad():
        scores = model.full_sort_predict(torch.arange(20))
        assert torch.all(scores[:, none] == 0)  # reference: fully missing items score 0 for everybody
    fixed, _, _, _ = build(data, "MILK", "tiktok", fix_zero_vectors=True)
    fixed.load_state_dict(model.state_dict(), strict=False)
    assert np.allclose(fixed.modality_count.numpy()[n_obs == 0], 1 / 3)
    with torch.no_grad():
        items = fixed.item_vectors()
        f = fixed.projections()
    assert torch.allclose(items[none], (sum(f[m] for m in task.modalities) / 3)[none], atol=1e-6)
    assert (items[none].norm(dim=1) > 0).all()


def test_milk_fix_align_items_and_loss_by_hand(data):
    model, task, _, rng = build(data, "MILK", "baby")
    g = task.mask_groups
    ex = model._excluded[("v", "t")].numpy()
    assert ex[g["t"]].all() and ex[g["v"]].all() and not ex[g["all"]].any()  # 'all' items still aligned
    fixed, _, _, _ = build(data, "MILK", "baby", fix_align_items=True)
    assert fixed._excluded[("v", "t")].numpy()[g["all"]].all()
    # Loss by hand with a known Dirichlet draw.
    users, pos, neg = batch(task, rng)
    np.random.seed(5)
    loss = model.calculate_loss(users, pos, neg)
    np.random.seed(5)
    lam = np.random.dirichlet([model.alpha] * 2)
    f = model.projections()
    c = model.modality_count.unsqueeze(1)
    u = model.user_embedding[users]
    terms, reg = [], None
    for w in ([0.5, 0.5], [lam[0], lam[1]], [lam[1], lam[0]]):
        item = c * (float(w[0]) * f["v"] + float(w[1]) * f["t"])
        terms.append(F.softplus((u * item[neg]).sum(1) - (u * item[pos]).sum(1)).mean())
        if reg is None:
            reg = 0.5 * (u.norm() ** 2 + item[pos].norm() ** 2 + item[neg].norm() ** 2) / len(users)
    upos = np.unique(pos.numpy())
    j = torch.from_numpy(np.setdiff1d(np.setdiff1d(upos, g["t"]), g["v"]))
    align = F.mse_loss(f["v"][j], f["t"][j])
    t = torch.stack(terms)
    ref = t.sum() + model.reg_coeff * reg + model.align_coeff * align + model.penalty_coeff * t.var()
    assert torch.allclose(loss, ref, rtol=1e-5)


def test_sibrar_fix_modality_sampling(data):
    ref, task, _, rng = build(data, "SIBRAR", "tiktok")
    fixed, _, _, _ = build(data, "SIBRAR", "tiktok", fix_modality_sampling=True)
    fixed.load_state_dict(ref.state_dict(), strict=False)
    items = torch.arange(task.n_items).repeat(40)
    avail = fixed.available[items]
    torch.manual_seed(0)
    k1, k2 = ref.sample_sources(items)
    assert (k1 != k2).all()
    assert (~avail[torch.arange(len(items)), k1]).any()  # reference picks missing modalities too
    counts = torch.bincount(k1 * 4 + k2, minlength=16).reshape(4, 4)
    off = counts[~torch.eye(4, dtype=torch.bool)].float()
    assert off.min() / off.max() > 0.8  # ordered pairs uniform over the 12 possibilities
    k1, k2 = fixed.sample_sources(items)
    r = torch.arange(len(items))
    assert avail[r, k1].all()
    two = k2 >= 0
    assert avail[r[two], k2[two]].all() and (k1[two] != k2[two]).all()
    assert torch.equal(two, avail.sum(1) >= 2)
    # Prediction: mean of all sources (reference) vs of the observed ones (fixed).
    with torch.no_grad():
        src = ref.sources()
        assert torch.allclose(ref.item_vectors(), src.mean(1), atol=1e-6)
        w = fixed.available.float()
        assert torch.allclose(fixed.item_vectors(), (src * w[:, :, None]).sum(1) / w.sum(1, keepdim=True), atol=1e-6)
        only_id = w.sum(1) == 1
        assert only_id.any() and torch.allclose(fixed.item_vectors()[only_id], src[only_id, 0], atol=1e-6)


def test_sibrar_loss_by_hand(data):
    model, task, _, rng = build(data, "SIBRAR", "baby")
    users, pos, neg = batch(task, rng)
    torch.manual_seed(11)
    loss = model.calculate_loss(users, pos, neg)
    torch.manual_seed(11)
    k1, k2 = model.sample_sources(pos)
    src = model.sources()
    p1, p2, n1, n2 = src[pos, k1], src[pos, k2], src[neg, k1], src[neg, k2]
    u = model.user_embedding[users]
    bpr = -F.logsigmoid((u * (p1 + p2)).sum(1) - (u * (n1 + n2)).sum(1)).mean()
    t = model.temp
    p, a, b = (p1 * p2).sum(1) / t, (p1 * n2).sum(1) / t, (p2 * n1).sum(1) / t
    info = (-torch.log(torch.exp(p) / (torch.exp(p) + torch.exp(a))) -
            torch.log(torch.exp(p) / (torch.exp(p) + torch.exp(b)))).mean()
    assert torch.allclose(loss, bpr + model.lamb * info, atol=1e-5)
    assert model.lamb > 0 and info.item() > 0.1  # the contrastive term weighs in: dropping it would show


def test_ci2mg_fix_contrastive_loss(data):
    ref, task, _, rng = build(data, "CI2MG", "tiktok")
    users, pos, neg = batch(task, rng)
    user, item, raw, y, gen, enh = ref.forward_all()
    idx = torch.unique(pos)
    s = ref.contrastive(y["v"], gen["v"], idx)
    assert abs(s.item() - math.log(2.0)) < 1e-6 and not s.requires_grad  # constant, no gradient
    fixed, _, _, _ = build(data, "CI2MG", "tiktok", fix_contrastive_loss=True)
    fixed.load_state_dict(ref.state_dict())
    s2 = fixed.contrastive(y["v"], gen["v"], idx)
    assert torch.allclose(s2, info_nce(y["v"][idx], gen["v"][idx], fixed.temp)) and s2.requires_grad
    # Total loss with the reference term = rec + M·log 2 + BPR.
    loss = ref.calculate_loss(users, pos, neg)
    rec = sum(F.mse_loss(enh[m][idx[ref.observed[m][idx]]], raw[m][idx[ref.observed[m][idx]]]) for m in "vta")
    bpr = -F.logsigmoid((user[users] * item[pos]).sum(1) - (user[users] * item[neg]).sum(1)).mean()
    assert torch.allclose(loss, rec + 3 * math.log(2.0) + bpr, atol=1e-4)


def test_ci2mg_fix_ot_offsets_and_audio_index(data):
    ref, task, _, rng = build(data, "CI2MG", "tiktok")
    assert ref.offsets is None
    assert torch.equal(ref.observed["a"], ref.observed["t"])  # reference: audio uses the text items
    fixed, _, _, _ = build(data, "CI2MG", "tiktok", fix_ot_offsets=True, fix_audio_index=True)
    assert torch.equal(fixed.observed["a"], torch.from_numpy(~task.missing["a"]))
    fixed.load_state_dict(ref.state_dict(), strict=False)
    assert all(torch.equal(p, torch.zeros(task.n_items)) for p in fixed.offsets.values())
    with torch.no_grad():  # zero offsets: identical outputs at initialisation
        assert torch.allclose(ref.forward_all()[1], fixed.forward_all()[1], atol=1e-6)
    users, pos, neg = batch(task, rng)
    fixed.calculate_loss(users, pos, neg).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fixed.offsets.values())
    with torch.no_grad():  # an offset δ adds δᵀ y to every row of the generated embedding
        fixed.offsets["v"][3] = 0.5
        _, _, _, y, gen, _ = fixed.forward_all()
        _, _, _, y0, gen0, _ = ref.forward_all()
    assert torch.allclose(gen["v"] - gen0["v"], (0.5 * y0["v"][3]).expand_as(gen0["v"]), atol=1e-5)


def test_ci2mg_refuses_oversized_runs_up_front(data):
    """The limit applies to one n_items² float32 kernel: refused just below that size, built just above it."""
    n_items = data["baby"].n_items
    kernel_gib = 4 * n_items ** 2 / 2 ** 30
    with pytest.raises(MemoryError, match=f"{n_items:,}\\^2 float32"):
        build(data, "CI2MG", "baby", max_dense_gib=kernel_gib * 0.99)
    model, _, _, _ = build(data, "CI2MG", "baby", max_dense_gib=kernel_gib * 1.01)
    assert model.n_items == n_items
    assert get("CI2MG").defaults["max_dense_gib"] >= 4 * 23033 ** 2 / 2 ** 30  # Clothing fits the default limit


# --------------------------------------------------------------------------- shared blocks

def _dense_sinkhorn(d, eps, iters):
    q = torch.exp(-d / eps)
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(1, keepdim=True) / q.shape[0]
        q = q / q.sum(0, keepdim=True) / q.shape[1]
    return q * q.shape[0]


@pytest.mark.parametrize("keep", [True, False])
def test_sinkhorn_transport_matches_dense_reference(keep, monkeypatch):
    import models.graphs.transport as g
    monkeypatch.setattr(g, "TRANSPORT_CHUNK_BYTES", 4 * 40 * 7)  # force several row blocks in backward
    torch.manual_seed(0)
    a, b = torch.sigmoid(torch.randn(90, 16)), torch.sigmoid(torch.randn(70, 16) * 2)
    y = torch.randn(70, 5, requires_grad=True)
    q = _dense_sinkhorn(torch.cdist(a, b) ** 2, 5.0, 10)
    want = q @ y
    grad = torch.randn(90, 5)
    (gw,) = torch.autograd.grad((want * grad).sum(), y)
    got = sinkhorn_transport(y, a, b, 5.0, 10, keep_kernel=keep)
    (gg,) = torch.autograd.grad((got * grad).sum(), y)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(gg, gw, atol=1e-5)
    assert torch.allclose(q.sum(0), torch.full((70,), 90 / 70), atol=1e-4)  # columns sum to n/m


def test_hypergraph_conv_matches_dense_operator():
    torch.manual_seed(1)
    h = torch.randn(50, 8)
    h[3] = 0.0  # zero row degree -> 1
    w, y = torch.randn(8, 8), torch.randn(50, 4)
    dv, de = h.sum(1), h.sum(0)
    dv[dv == 0] = 1.0
    r = torch.diag(1 / dv) @ h @ w @ torch.diag(1 / de) @ h.T
    assert torch.allclose(hypergraph_conv(h, w, y), r @ y, rtol=1e-4, atol=1e-4)


def test_ui_adjacency_rw(data):
    _, task, _, _ = build(data, "LightGCN")
    a = ui_adjacency_rw(task).to_dense()
    deg = torch.cat([torch.from_numpy(task.user_degree()), torch.from_numpy(task.item_degree())]).float()
    rows = a.sum(1)
    assert torch.allclose(rows[deg > 0], torch.ones(int((deg > 0).sum())), atol=1e-5)
    assert torch.all(rows[deg == 0] == 0)
    r = torch.from_numpy(task.train_matrix().toarray())
    assert torch.allclose(a[:task.n_users, task.n_users:], r / (deg[:task.n_users, None] + 1e-7), atol=1e-6)
    # LightGCN on it is a mean of layers (the helper is shared with the symmetric graph).
    x = torch.randn(a.shape[0], 3)
    assert torch.allclose(lightgcn(to_torch_sparse(a.numpy()), x, 2), (x + a @ x + a @ a @ x) / 3, atol=1e-5)
