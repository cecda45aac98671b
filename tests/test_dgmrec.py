"""DGMRec (models/dgmrec.py): loss terms pinned against an independent dense implementation of
its training objective on hand-made tasks, the 2- and 3-modality paths, the masking guarantee, new-item
generation, and what every quirk option changes."""
import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import models.registry as registry
from benchmarks.run.config import expand_grid, resolve
from benchmarks.core.engine import Trainer, seed_everything
from benchmarks.core.protocols import get_protocol, impute_features
from models.task import EvalSet, Task
from data_prep.masks import per_modality_missing
from data_prep.synthetic import make_replica
from models.club import CLUBSample
from models.dgmrec import blend_rows, perturb
from models.graphs.knn import knn_graph


pytestmark = pytest.mark.usefixtures("one_thread")


ENTRY = registry.get("DGMRec")


def config(kind, **sets):
    return expand_grid(resolve(ENTRY, kind, sets, quick=True))[0]


# --------------------------------------------------------------------------- hand-made tasks

TRAIN = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 3), (1, 4), (2, 2), (2, 4), (2, 5), (3, 0), (3, 5), (3, 6),
         (4, 3), (4, 6), (4, 0), (5, 1), (5, 5), (5, 6), (5, 3)]
DIMS = {"v": 5, "t": 4, "a": 3}


def hand_task(n_mod: int, new=()) -> Task:
    rng = np.random.default_rng(3)
    n_users, n_items = 6, 9
    pairs = [(u, i) for u, i in TRAIN if i not in new]
    users = np.array([p[0] for p in pairs]); items = np.array([p[1] for p in pairs])
    mods = ("v", "t", "a")[:n_mod]
    if n_mod == 2:
        groups = {"t": np.array([4]), "v": np.array([5, 8]), "all": np.array([6])}
    else:
        groups = {"t": np.array([4]), "v": np.array([5, 8]), "a": np.array([3]), "tv": np.array([6]),
                  "ta": np.array([], np.int64), "va": np.array([], np.int64), "all": np.array([7])}
    missing = per_modality_missing(groups, mods, n_items)
    new_items = np.zeros(n_items, bool); new_items[list(new)] = True
    feats = {m: torch.from_numpy(impute_features(rng.uniform(0.1, 1.0, (n_items, DIMS[m])).astype(np.float32),
                                                 missing[m], "mean", exclude=new_items)) for m in mods}
    ev = EvalSet.from_pairs("valid", np.array([0, 1, 2]), np.array([7, 8, 6]))
    return Task(dataset="baby" if n_mod == 2 else "tiktok",
                n_users=n_users, n_items=n_items, train_users=users, train_items=items, features=feats,
                modalities=mods, missing=missing, mask_groups=groups, new_items=new_items, valid=ev, test=ev)


def hand_model(n_mod: int, seed=0, new=(), **sets):
    task = hand_task(n_mod, new)
    base = dict(embedding_size=4, knn_k=3, n_mm_layers=2, perturb_scale=0.0, sampler=0.01, interModal=0.01,
                additive=1.0)
    base.update(sets)
    torch.manual_seed(seed)
    return ENTRY.cls(config(task.dataset, **base), task), task


# --------------------------------------------------------------------------- independent reference: every loss term, dense

def dense_knn(x, k, miss):
    xn = x / x.norm(dim=1, keepdim=True)
    s = xn @ xn.T
    v, i = s.topk(k, dim=1)
    a = torch.zeros_like(s).scatter(1, i, v)
    idx = torch.nonzero(torch.as_tensor(miss)).squeeze(1)
    a[idx, :] = 0.0
    a[:, idx] = 0.0
    a[idx, idx] = 1.0
    d = a.sum(1).clamp(min=1e-7).pow(-0.5)
    return d[:, None] * a * d[None, :]


def nce_ref(a, b, tau):
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    pos = torch.exp((a * b).sum(1) / tau)
    tot = torch.exp(a @ b.T / tau).sum(1)
    return (-torch.log(pos / tot)).mean()


SOURCES = {2: {"v": ["t"], "t": ["v"]}, 3: {"t": ["a", "v"], "v": ["t", "a"], "a": ["v", "t"]}}


def reference_terms(model, task, users, pos, neg, club_perms):
    c = model.config
    mods = task.modalities
    n_u, n_i = task.n_users, task.n_items
    R = torch.zeros(n_u, n_i)
    R[torch.from_numpy(task.train_users), torch.from_numpy(task.train_items)] = 1.0
    A = torch.zeros(n_u + n_i, n_u + n_i)
    A[:n_u, n_u:] = R
    A[n_u:, :n_u] = R.T
    dd = (A.sum(1) + 1e-7).pow(-0.5)
    Ah = dd[:, None] * A * dd[None, :]
    e = torch.cat([model.user_embedding, model.item_id_embedding])
    layers = [e]
    for _ in range(3):
        layers.append(Ah @ layers[-1])
    h = torch.stack(layers).mean(0)
    h_u, h_i = h[:n_u], h[n_u:]
    inv_u = 1 / (R.sum(1, keepdim=True) + 1e-7)
    inv_i = 1 / (R.sum(0).unsqueeze(1) + 1e-7)
    X = model.feat
    g, s, f, gbar, sbar, gu, su = {}, {}, {}, {}, {}, {}, {}
    for m in mods:
        g[m] = torch.sigmoid(model.shared_encoder(torch.tanh(model.encoder[m](X[m]))))
        s[m] = torch.sigmoid(model.encoder_s[m](X[m]))
        f[m] = (R.T @ torch.tanh(model.user_embedding @ model.filter_trans[m].weight.T)) * inv_i
        G = dense_knn(X[m].detach(), int(c["knn_k"]), task.missing[m])
        gb, sb = f[m] * g[m], f[m] * s[m]
        for _ in range(int(c["n_mm_layers"])):
            gb, sb = G @ gb, G @ sb
        gbar[m], sbar[m] = gb, sb
        gu[m], su[m] = (R @ gb) * inv_u, (R @ sb) * inv_u
    items = torch.unique(torch.cat([pos, neg]))
    miss_any = np.zeros(n_i, bool)
    for m in mods:
        miss_any |= task.missing[m]
    obs = {m: items[~torch.from_numpy(task.missing[m])[items]] for m in mods}
    comp = items[~torch.from_numpy(miss_any)[items]]
    t_inter, t_intra, t_bm = c["interModalTemp"], c["intraModalTemp"], c["alignBMTemp"]
    out = {}
    pairs = [("v", "t")] if len(mods) == 2 else [("v", "t"), ("t", "a"), ("a", "v")]
    out["interModal"] = sum(nce_ref(g[a][comp], g[b][comp], t_inter) for a, b in pairs) + \
        nce_ref(gu["v"][users], gu["t"][users], t_inter)
    gen = sum(F.mse_loss(s[m][obs[m]], model.gen[m](f[m][obs[m]])) for m in mods)
    for m in mods:
        src = torch.cat([gbar[k] for k in SOURCES[len(mods)][m]], dim=1)
        gen = gen + F.mse_loss(gbar[m][comp], model.translator[m](src)[comp])
    out["additive"] = gen
    out["sampler"] = 0.0
    for m, perm in zip(("v", "t"), club_perms):
        net = model.club[m]
        mu, logvar = net.p_mu(sbar[m]), net.p_logvar(sbar[m])
        p_ = -((mu - gbar[m]) ** 2 / logvar.exp()).sum(1)
        n_ = -((mu - gbar[m][perm]) ** 2 / logvar.exp()).sum(1)
        out["sampler"] = out["sampler"] + (p_ - n_).mean() / 2
    gus, gis = sum(gu.values()), sum(gbar.values())
    intra = nce_ref(h_u[users], h_i[pos], t_intra) + nce_ref(gus[users], gis[pos], t_inter)
    intra = intra + nce_ref(su["v"][users], sbar["v"][pos], t_intra) + nce_ref(su["t"][users], sbar["t"][pos], t_intra)
    if "a" in mods:  # the reference aligns the GENERAL audio parts here
        intra = intra + nce_ref(gu["a"][users], gbar["a"][pos], t_intra)
    out["intraModal"] = intra
    out["alignBM"] = nce_ref(h_i[pos], gis[pos], t_bm) + nce_ref(h_u[users], gus[users], t_bm)
    k = len(mods)
    z_u = h_u + (sum(gu.values()) / k + sum(su.values())) / (k + 1)
    z_i = h_i + (sum(gbar.values()) / k + sum(sbar.values())) / (k + 1)
    out["bpr"] = -torch.log(torch.sigmoid((z_u[users] * z_i[pos]).sum(1) - (z_u[users] * z_i[neg]).sum(1))).mean()
    B = len(users)
    reg = 1e-5 * (h_u[users].norm() + h_i[pos].norm() + h_i[neg].norm()) / B
    out["reg"] = reg + sum(0.1 * (gbar[m] + sbar[m])[pos].norm() / B for m in mods)
    out["recon"] = sum(F.mse_loss(model.decoder[m](torch.cat([gbar[m], sbar[m]], 1)), X[m]) for m in mods)
    return out


BATCH = (torch.tensor([0, 1, 2, 3, 4, 5, 0, 2]), torch.tensor([0, 3, 2, 0, 3, 6, 1, 5]),
         torch.tensor([7, 8, 0, 2, 5, 4, 3, 1]))


@pytest.mark.parametrize("n_mod", [2, 3])
def test_every_loss_term_matches_the_dense_reference(n_mod):
    model, task = hand_model(n_mod)
    users, pos, neg = BATCH
    torch.manual_seed(7)
    terms = model.loss_terms(users, pos, neg)
    torch.manual_seed(7)
    perms = [torch.randperm(task.n_items) for _ in ("v", "t")]
    ref = reference_terms(model, task, users, pos, neg, perms)
    assert set(terms) == set(ref)
    for name in ref:
        assert torch.allclose(terms[name], torch.as_tensor(ref[name]), rtol=1e-4, atol=1e-6), name
    torch.manual_seed(7)
    total = model.calculate_loss(users, pos, neg)
    w = model.config
    expect = ref["bpr"] + ref["reg"] + sum(w[k] * ref[k] for k in
                                           ("interModal", "intraModal", "alignBM", "sampler", "additive", "recon"))
    assert torch.allclose(total, expect, rtol=1e-4)


def test_zero_weights_skip_terms_and_no_missing_skips_generation():
    model, _ = hand_model(2, sampler=0.0, interModal=0.0)
    terms = model.loss_terms(*BATCH)
    assert "sampler" not in terms and "interModal" not in terms and model.club is None
    task = hand_task(2)
    task.missing = {m: np.zeros(task.n_items, bool) for m in task.modalities}
    torch.manual_seed(0)
    model = ENTRY.cls(config("baby", embedding_size=4, knn_k=3), task)
    assert "additive" not in model.loss_terms(*BATCH)
    model.pre_epoch(0)
    assert not any(v.any() for v in model.generated.values())


def test_club_bound_and_learning_loss_by_hand():
    club = CLUBSample(2, hidden=4)
    with torch.no_grad():
        for net in (club.p_mu, club.p_logvar):
            for layer in net:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.zero_(); layer.bias.zero_()
        club.p_mu[0].weight.copy_(torch.eye(2)); club.p_mu[2].weight.copy_(torch.eye(2))  # mu(x) = x for x ≥ 0
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # pos = 0 (y = mu), neg = -|x_i - x_j|² = -2, bound = mean(0 - (-2)) / 2 = 1
    assert club(x, x, perm=torch.tensor([1, 0])).item() == pytest.approx(1.0)
    assert club.learning_loss(x, x).item() == pytest.approx(0.0)
    assert club.learning_loss(x, torch.zeros(2, 2)).item() == pytest.approx(1.0)  # mean ‖x‖² with logvar 0


def test_perturb_and_blend_rows_by_hand():
    x = torch.tensor([[1.0, -2.0, 3.0], [-1.0, -1.0, 0.5]])
    y = perturb(x, 0.1)
    d = y - x
    assert torch.allclose(d.norm(dim=1), torch.full((2,), 0.1), atol=1e-6)
    assert (torch.sign(d) == torch.sign(x)).all()  # noise points away from zero
    assert torch.equal(perturb(x, 0.0), x)
    g = sp.csr_matrix(np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3]], np.float32))
    r = sp.csr_matrix(np.array([[0, 4, 0], [4, 0, 0], [0, 8, 0]], np.float32))
    out = blend_rows(g, r, np.array([False, True, True]), 0.25).toarray()
    assert np.allclose(out, [[1, 0, 0], [1, 1.5, 0], [0, 2, 2.25]])


# --------------------------------------------------------------------------- paths and shapes

@pytest.mark.parametrize("n_mod", [2, 3])
def test_paths_and_shapes(n_mod):
    model, task = hand_model(n_mod)
    d = 4
    assert model.mods == task.modalities
    for m in model.mods:
        assert model.translator[m][0].in_features == d * (n_mod - 1)
        assert model.feat[m].shape == (task.n_items, DIMS[m]) and model.feat[m].requires_grad
    # translator inputs: 2-mod the other modality, 3-mod (text <- [a, v], image <- [t, a], audio <- [v, t])
    assert {m: model.sources(m) for m in model.mods} == SOURCES[n_mod]
    assert model.club_mods == ("v", "t")
    scores = model.full_sort_predict(torch.tensor([0, 3]))
    assert scores.shape == (2, task.n_items)
    model.pre_epoch(0)
    gen = model.generated_features()
    for m in model.mods:
        ids, x = gen[m]
        assert np.array_equal(ids, np.sort(task.mask_groups[m]))  # single-missing rows only
        assert x.shape == (len(ids), DIMS[m])
        assert torch.equal(x, model.feat[m][torch.from_numpy(ids)])
    re = model.generated_features("recompute")
    assert all(re[m][1].shape == gen[m][1].shape for m in model.mods)
    ids = {id(p) for p in model.optimizer_parameters()}
    assert not any(id(p) in ids for p in model.club.parameters())
    assert all(id(getattr(model, f"feat_{m}")) in ids for m in model.mods)


def test_config_layers():
    tk = resolve(ENTRY, "tiktok")
    assert (tk["train_batch_size"], tk["eval_batch_size"], tk["eval_step"], tk["stopping_step"]) == (2048, 2048, 1, 20)
    assert (tk["n_mm_layers"], tk["sampler"], tk["interModal"], tk["avg_lambda"]) == (2, 0.0, 0.0, 0.4)
    assert tk["topk"] == [5, 10, 20, 50] and tk["learning_rate_scheduler"] == [0.96, 50]
    baby = resolve(ENTRY, "baby")
    assert (baby["train_batch_size"], baby["eval_step"], baby["stopping_step"], baby["n_mm_layers"]) == (2048, 3, 30, 2)
    assert (baby["additive"], baby["infer_adj_update"]) == (0.1, 0)
    assert resolve(ENTRY, "clothing")["avg_lambda"] == 0.0 and resolve(ENTRY, "elec")["train_batch_size"] == 4096
    assert resolve(ENTRY, "sports")["intraModalTemp"] == 0.1
    d = resolve(ENTRY, "baby")
    assert d["eval_graph"] == "initial" and d["gen_rows"] == "single_missing"
    assert d["fix_new_item_3mod_generation"] is True and d["fix_trainable_features"] is False
    fixed = resolve(ENTRY, "baby", {"fix_reference_defects": True})
    assert all(fixed[k] is True for k in fixed if k.startswith("fix_") and k != "fix_reference_defects")


# --------------------------------------------------------------------------- masked features never reach the model

def _poisoned(ds, ratio_key):
    miss = per_modality_missing(ds.masks[ratio_key], ds.modalities, ds.n_items)
    feats = {}
    for m, x in ds.features.items():
        y = x.copy()
        y[miss[m]] = np.nan if m == "t" else 1e30
        feats[m] = y
    return dataclasses.replace(ds, features=feats)


@pytest.mark.parametrize("kind,scale,ratio", [("tiktok", 0.03, 0.6), ("baby", 0.02, 0.666)])
def test_masked_true_features_never_reach_the_model(kind, scale, ratio):
    ds = make_replica(kind, scale)
    bad = _poisoned(ds, str(ratio))
    cfg = config(kind, epochs=2, refresh_every=1, sampler=0.01)
    runs = []
    for d in (ds, bad):
        task = get_protocol("missing").build_task(d, cfg, ENTRY.cls, ratio)
        rng = seed_everything(5)
        model = ENTRY.cls(cfg, task)
        res = Trainer(model, task, cfg, rng).run()
        model.eval()
        with torch.no_grad():
            runs.append((res.curve, res.test, model.full_sort_predict(torch.arange(task.n_users))))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2]) and torch.isfinite(runs[0][2]).all()


# --------------------------------------------------------------------------- new items

def _new_item_model(kind, scale, **sets):
    ds = make_replica(kind, scale)
    cfg = config(kind, refresh_every=1, infer_adj_update=1, avg_lambda=0.8, **sets)
    task = get_protocol("new_items").build_task(ds, cfg, ENTRY.cls, 0.6 if kind == "tiktok" else 0.666)
    torch.manual_seed(11)
    return ENTRY.cls(cfg, task), task


@pytest.mark.parametrize("kind,scale", [("baby", 0.03), ("tiktok", 0.05)])
def test_generated_features_of_new_items_change_their_scores(kind, scale):
    a, task = _new_item_model(kind, scale)
    b, _ = _new_item_model(kind, scale)
    b.gen_rows_infer = {m: np.zeros(task.n_items, bool) for m in b.mods}  # no inference-time generation
    users = torch.arange(task.n_users)
    scores = []
    for model in (a, b):
        torch.manual_seed(3)  # same generation noise for the training-time writes of both
        model.pre_epoch(0)
        model.pre_evaluation()
        model.eval()
        with torch.no_grad():
            model.begin_scoring()
            scores.append(model.full_sort_predict(users))
            model.end_scoring()
    gen_new = np.zeros(task.n_items, bool)
    for m in a.mods:
        assert not (a.gen_rows_infer[m] & ~task.new_items).any()  # only new items are generated
        gen_new |= a.gen_rows_infer[m]
    assert gen_new.any()
    changed = (scores[0] != scores[1]).any(dim=0).numpy()
    assert changed.any()
    refreshed = np.zeros(task.n_items, bool)
    for m in a.mods:
        refreshed |= a.refresh_rows_infer[m]
    assert not (changed & ~refreshed).any()  # only rows of missing new items moved
    assert (changed & gen_new).any()


def test_new_item_graphs():
    model, task = _new_item_model("baby", 0.03)
    new = task.new_items
    for m in model.mods:
        g = model.graph_sp[m].tocsr()
        for i in np.flatnonzero(new)[:5]:  # training graph: new items isolated before the top-k
            row = g.getrow(i)
            assert list(row.indices) == [i]
        assert g[:, new].nnz == int(new.sum())
        assert (abs(model.graph_infer_sp[m] - knn_graph(task.features[m], model.knn_k,
                                                        isolate_after=task.missing[m])) > 1e-6).nnz == 0
    masked, _ = _new_item_model("baby", 0.03, fix_new_item_train_graph_mask=True)
    for m in masked.mods:
        miss_old = task.missing[m] & ~new
        rows_plain = [model.graph_sp[m].getrow(i).nnz for i in np.flatnonzero(miss_old)]
        rows_masked = [masked.graph_sp[m].getrow(i).nnz for i in np.flatnonzero(miss_old)]
        assert max(rows_plain) > 1 and max(rows_masked) == 1


# --------------------------------------------------------------------------- quirk options

def test_eval_graph_initial_vs_refreshed():
    model, task = hand_model(2, avg_lambda=0.8, refresh_every=1)
    initial = {m: model.graph_sp[m].copy() for m in model.mods}
    model.pre_epoch(0)  # generation + refresh of the training graphs
    users = torch.arange(task.n_users)
    with torch.no_grad():
        s_init = model.full_sort_predict(users)
        model.eval_graph = "refreshed"
        s_ref = model.full_sort_predict(users)
    assert not torch.allclose(s_init, s_ref)
    for m in model.mods:
        assert (abs(model.graph_infer_sp[m] - initial[m]) > 0).nnz == 0  # scoring graph untouched
        diff_rows = np.unique((abs(model.graph_sp[m] - initial[m]) > 1e-7).tocoo().row)
        assert len(diff_rows) and set(diff_rows) <= set(np.flatnonzero(model.refresh_rows_train[m]))
    # 2-mod refresh covers Miss_m ('all' too); 3-mod only the generated single group
    assert model.refresh_rows_train["t"][6]
    m3, _ = hand_model(3)
    assert not m3.refresh_rows_train["t"][6] and m3.refresh_rows_train["t"][4]


@pytest.mark.parametrize("n_mod", [2, 3])
def test_gen_rows_option(n_mod):
    single, task = hand_model(n_mod)
    every, _ = hand_model(n_mod, gen_rows="all_missing")
    for model in (single, every):
        model.pre_epoch(0)
    for m in task.modalities:
        miss = np.flatnonzero(task.missing[m])
        only = np.setdiff1d(miss, task.mask_groups[m])
        assert torch.equal(single.feat[m][only], task.features[m][only])  # mean-imputed forever
        assert not torch.equal(every.feat[m][only], task.features[m][only])
        assert np.array_equal(every.generation_rows()[m], miss)


def test_fix_new_item_3mod_generation():
    for fixed in (True, False):
        model, task = _new_item_model("tiktok", 0.05, fix_new_item_3mod_generation=fixed)
        before = {m: model.feat[m].detach().clone() for m in model.mods}
        model.pre_evaluation()
        changed = np.zeros(task.n_items, bool)
        for m in model.mods:
            changed |= (model.feat[m] != before[m]).any(dim=1).numpy()
        assert changed.any()
        if fixed:
            assert not (changed & ~task.new_items).any()
        else:  # the reference bug: inference-time generation rewrites old items, never new ones
            assert not (changed & task.new_items).any()


def test_fix_trainable_features_and_recon_target():
    frozen, task = hand_model(2, fix_trainable_features=True)
    assert all(not frozen.feat[m].requires_grad for m in frozen.mods)
    assert not any(p is frozen.feat[m] for p in frozen.optimizer_parameters() for m in frozen.mods)
    opt = torch.optim.Adam(frozen.optimizer_parameters(), lr=0.1)
    before = {m: frozen.feat[m].clone() for m in frozen.mods}
    frozen.calculate_loss(*BATCH).backward(); opt.step()
    assert all(torch.equal(frozen.feat[m], before[m]) for m in frozen.mods)
    grads = {}
    for fix in (False, True):
        model, _ = hand_model(2, fix_recon_target=fix)
        model.loss_terms(*BATCH)["recon"].backward()
        grads[fix] = model.feat_t.grad
    assert grads[False].abs().sum() > 0  # the non-detached target pulls the table
    assert grads[True] is None or grads[True].abs().sum() == 0


def test_fix_recon_rows():
    model, task = hand_model(2, fix_recon_rows=True)
    recon = model.loss_terms(*BATCH)["recon"]
    torch.manual_seed(0)
    plain, _ = hand_model(2)
    with torch.no_grad():
        g, s = model.encode()
        gbar, sbar, _, _ = model.modal_embeddings(model.graph, g, s, model.filters())
        expect = 0.0
        for m in model.mods:
            rows = ~task.missing[m]
            rec = model.decoder[m](torch.cat([gbar[m], sbar[m]], 1))
            expect += F.mse_loss(rec[rows], model.feat[m][rows])
    assert torch.allclose(recon, expect)
    assert not torch.allclose(plain.loss_terms(*BATCH)["recon"], recon)


def test_fix_generation_inputs_and_club_inputs():
    out = {}
    for fix in (False, True):
        model, _ = hand_model(2, fix_generation_inputs=fix)
        out[fix] = model.generated_raw(model.graph, model.gen_rows_train)
    assert all(o.shape == out[True][m].shape for m, o in out[False].items())
    assert not all(torch.allclose(out[False][m], out[True][m]) for m in out[True])
    club = {}
    for fix in (False, True):
        model, _ = hand_model(2, fix_club_inputs=fix)
        torch.manual_seed(1)
        model._fit_club()
        club[fix] = torch.cat([p.detach().flatten() for p in model.club.parameters()])
    assert not torch.allclose(club[False], club[True])


def test_fix_audio_options():
    plain, _ = hand_model(3)
    fixed, _ = hand_model(3, fix_audio_intra=True, fix_audio_club=True)
    assert plain.club_mods == ("v", "t") and fixed.club_mods == ("v", "t", "a")
    a = hand_model(3, fix_audio_intra=False)[0].loss_terms(*BATCH)["intraModal"]
    b = hand_model(3, fix_audio_intra=True)[0].loss_terms(*BATCH)["intraModal"]
    assert not torch.allclose(a, b)
    c = hand_model(2, fix_audio_intra=False)[0].loss_terms(*BATCH)["intraModal"]
    d = hand_model(2, fix_audio_intra=True)[0].loss_terms(*BATCH)["intraModal"]
    assert torch.equal(c, d)  # no audio, nothing changes
