"""DGMRec's training loss, term by term, against a dense float64 oracle.

The registered model on a hand task (``dense_oracle.hand_task``: 2 and 3 modalities, masked
modalities, ``missing`` and ``new_items``), after ``pre_epoch`` as the engine runs it (CLUB
estimators fitted, features of missing items generated into the tables, and with
``refresh_every = 1`` the training graph rows of missing items refreshed). The oracle reads
every parameter from ``model.state_dict()`` and recomputes all eight terms with dense
matrices; the sign-aligned perturbation noise and the CLUB permutations are reseeded
identically before the model and the oracle, which draws them itself in the model's order.
Each term is pinned twice: every term against the oracle's with all weights on, and the total
with one optional weight on at a time.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dense_oracle import (PROTOCOLS, bpr, build, fixed_batch, hand_task, interaction_matrix, joint, knn, lightgcn,
                          linear, move_parameters, nce, params64, sym_norm, unit)

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(n, p) for n in (2, 3) for p in PROTOCOLS]
IDS = [f"{n}mod-{p}" for n, p in CASES]
OPTIONAL = ("interModal", "intraModal", "alignBM", "recon", "sampler", "additive")
# Weights such that every term moves the total far beyond the tolerance (the CLUB bound of these
# tiny, untrained tasks is a sampled difference of order 1e-4 to 1e-3, hence its large weight).
WEIGHTS = dict(interModal=0.5, intraModal=0.3, alignBM=0.4, recon=0.6, sampler=1000.0, additive=0.8)
SMALL = dict(embedding_size=4, knn_k=5, n_mm_layers=2, reg=0.5, cf_reg=0.2, perturb_scale=0.1, club_hidden=8,
             club_steps=2, club_batch=16, interModalTemp=0.4, intraModalTemp=0.2, alignBMTemp=0.3)
SEED = 14


def setup(n_mod, protocol, pre_epoch=True, **sets):
    task = hand_task(n_mod, protocol)
    model, cfg = build("DGMRec", task, **{**SMALL, **WEIGHTS, **sets})
    # Away from initialisation: larger user vectors (larger filters, so the CLUB bound is not a
    # near-cancellation) and feature tables whose identical imputed rows have become distinct.
    move_parameters(model, ["user_embedding"], scale=0.5)
    move_parameters(model, [f"feat_{m}" for m in task.modalities], scale=0.05, seed=1)
    if pre_epoch:
        torch.manual_seed(4)
        model.pre_epoch(0)  # as the engine runs it before the first epoch
    return model, cfg, task, fixed_batch(task)


def value(x) -> float:
    return float(torch.as_tensor(x).detach())


def training_graphs(task, k):
    """Missing protocol: the kNN graphs with missing items isolated after the top-k; new-item
    protocol: new items isolated before the top-k (their self-loop kept), missing items not."""
    x = {m: task.features[m].double() for m in task.modalities}
    if task.new_item_mode:
        return {m: knn(x[m], k, before=task.new_items) for m in task.modalities}
    return {m: knn(x[m], k, after=task.missing[m]) for m in task.modalities}


def mlp(p, prefix, x):
    return linear(p, f"{prefix}.2", torch.tanh(linear(p, f"{prefix}.0", x)))


def club_bound(p, m, x, y, perm):
    """CLUB with q(y|x) = N(μ(x), exp(logvar(x))): mean_i [log q(y_i|x_i) - log q(y_π(i)|x_i)] / 2
    without the constants: -Σ_d (μ - y)² e^{-logvar} for the pair and the permuted pair."""
    mu = linear(p, f"club.{m}.p_mu.2", torch.relu(linear(p, f"club.{m}.p_mu.0", x)))
    logvar = torch.tanh(linear(p, f"club.{m}.p_logvar.2", torch.relu(linear(p, f"club.{m}.p_logvar.0", x))))
    pos = -((mu - y) ** 2 * torch.exp(-logvar)).sum(1)
    neg = -((mu - y[perm]) ** 2 * torch.exp(-logvar)).sum(1)
    return (pos - neg).mean() / 2


def dgmrec_terms(task, cfg, batch, graphs):
    """Every term of DGMRec's loss (the model's names), from the parameters ``p``.

    h: LightGCN (3 layers) on the normalised user-item graph. Per modality: general part
    g = σ(W_sh tanh(W_m x + b_m) + b_sh), specific s = σ(W_s x + b_s), filter
    f = Rᵀ tanh(E_user Pᵀ) / deg_i; ḡ = G^L (f ⊙ g), s̄ = G^L (f ⊙ s); users average their items.
    complete / observed: the batch's distinct items observing every / that modality.
    Perturbation x + sign(x) ⊙ normalize(U[0,1)) · scale, drawn in the model's order: generator
    inputs, translator inputs, CLUB permutations, decoder inputs.
    """
    mods, nu, ni = task.modalities, task.n_users, task.n_items
    n_mod = len(mods)
    r = interaction_matrix(task)
    a_ui = sym_norm(joint(r))
    inv_u, inv_i = 1 / (r.sum(1, keepdim=True) + 1e-7), 1 / (r.sum(0)[:, None] + 1e-7)
    users, pos, neg = batch
    items = torch.unique(torch.cat([pos, neg]))
    miss = {m: torch.from_numpy(task.missing[m]) for m in mods}
    obs = {m: items[~miss[m][items]] for m in mods}
    complete = items[~torch.stack([miss[m] for m in mods]).any(0)[items]]
    pairs = [(mods[i], mods[(i + 1) % n_mod]) for i in range(n_mod if n_mod > 2 else 1)]
    sources = {m: [mods[(mods.index(m) + j) % n_mod] for j in range(1, n_mod)] for m in mods}
    club_mods = ("v", "t") if cfg["sampler"] else ()
    t_inter, t_intra, t_bm = cfg["interModalTemp"], cfg["intraModalTemp"], cfg["alignBMTemp"]
    b = len(users)
    d = cfg["embedding_size"]

    def perturb(x, noise):
        return x + torch.sign(x) * unit(noise) * cfg["perturb_scale"]

    def terms(p):
        draw = lambda *shape: torch.rand(*shape).double()  # noqa: E731
        generation = cfg["additive"] != 0  # the model skips the term (and its draws) at weight 0
        noise_gen = {m: draw(len(obs[m]), d) for m in mods} if generation else {}
        noise_tr = {m: draw(len(complete), d * (n_mod - 1)) for m in mods} if generation else {}
        perms = {m: torch.randperm(ni) for m in club_mods}
        noise_rec = {m: draw(ni, 2 * d) for m in mods}

        h_u, h_i = torch.split(lightgcn(a_ui, torch.cat([p["user_embedding"], p["item_id_embedding"]]), 3), [nu, ni])
        x = {m: p[f"feat_{m}"] for m in mods}
        g = {m: torch.sigmoid(linear(p, "shared_encoder", torch.tanh(linear(p, f"encoder.{m}", x[m])))) for m in mods}
        s = {m: torch.sigmoid(linear(p, f"encoder_s.{m}", x[m])) for m in mods}
        f = {m: (r.T @ torch.tanh(p["user_embedding"] @ p[f"filter_trans.{m}.weight"].T)) * inv_i for m in mods}
        gbar, sbar = {}, {}
        for m in mods:
            gbar[m], sbar[m] = f[m] * g[m], f[m] * s[m]
            for _ in range(cfg["n_mm_layers"]):
                gbar[m], sbar[m] = graphs[m] @ gbar[m], graphs[m] @ sbar[m]
        gu = {m: (r @ gbar[m]) * inv_u for m in mods}
        su = {m: (r @ sbar[m]) * inv_u for m in mods}
        out = {}
        if cfg["interModal"]:
            out["interModal"] = sum(nce(g[a][complete], g[c][complete], t_inter) for a, c in pairs) + \
                nce(gu["v"][users], gu["t"][users], t_inter)
        mse = lambda a, c: ((a - c) ** 2).mean()  # noqa: E731
        if generation:
            out["additive"] = sum(mse(s[m][obs[m]], mlp(p, f"gen.{m}", perturb(f[m][obs[m]], noise_gen[m])))
                                  for m in mods) + \
                sum(mse(gbar[m][complete], mlp(p, f"translator.{m}", perturb(
                    torch.cat([gbar[k][complete] for k in sources[m]], 1), noise_tr[m]))) for m in mods)
        if club_mods:
            out["sampler"] = sum(club_bound(p, m, sbar[m], gbar[m], perms[m]) for m in club_mods)
        gu_sum, gi_sum = sum(gu.values()), sum(gbar.values())
        intra = nce(h_u[users], h_i[pos], t_intra) + nce(gu_sum[users], gi_sum[pos], t_inter)
        for m in mods:  # the audio term aligns the GENERAL parts (the reference)
            intra = intra + (nce(gu[m][users], gbar[m][pos], t_intra) if m == "a" else
                             nce(su[m][users], sbar[m][pos], t_intra))
        out["intraModal"] = intra
        out["alignBM"] = nce(h_i[pos], gi_sum[pos], t_bm) + nce(h_u[users], gu_sum[users], t_bm)
        z_u = h_u + (sum(gu.values()) / n_mod + sum(su.values())) / (n_mod + 1)
        z_i = h_i + (sum(gbar.values()) / n_mod + sum(sbar.values())) / (n_mod + 1)
        out["bpr"] = bpr((z_u[users] * z_i[pos]).sum(1), (z_u[users] * z_i[neg]).sum(1))
        out["reg"] = cfg["cf_reg"] * (h_u[users].norm() + h_i[pos].norm() + h_i[neg].norm()) / b + \
            sum(cfg["reg"] * (gbar[m] + sbar[m])[pos].norm() / b for m in mods)
        # the decoder input is detached, the target (the trainable table) is not: the reference
        out["recon"] = sum(mse(linear(p, f"decoder.{m}", perturb(torch.cat([gbar[m], sbar[m]], 1).detach(),
                                                                 noise_rec[m])), x[m]) for m in mods)
        return out

    return terms


def total(terms, cfg):
    return terms["bpr"] + terms["reg"] + sum(cfg[k] * terms[k] for k in terms if k not in ("bpr", "reg"))


GRADS = ("user_embedding", "item_id_embedding", "feat_v", "encoder_s.t.weight")


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_every_term_and_the_total(n_mod, protocol):
    model, cfg, task, batch = setup(n_mod, protocol)
    terms = dgmrec_terms(task, cfg, batch, training_graphs(task, cfg["knn_k"]))
    p = params64(model, GRADS)
    torch.manual_seed(SEED)
    got = model.loss_terms(*batch)
    torch.manual_seed(SEED)
    want = terms(p)
    assert set(got) == set(want) == {"bpr", "reg", *OPTIONAL}
    for name in want:
        assert abs(value(got[name]) - value(want[name])) <= 1e-5 * abs(value(want[name])) + 1e-8, name
    torch.manual_seed(SEED)
    loss = model.calculate_loss(*batch)
    expect = total(want, cfg)
    assert abs(value(loss) - value(expect)) <= 1e-5 * abs(value(expect))
    for name in OPTIONAL + ("reg",):  # each term moves the total far beyond the tolerance
        w = 1.0 if name == "reg" else cfg[name]
        assert abs(w * value(want[name])) > 1e-3 * abs(value(expect)), name
    loss.backward()
    params = dict(model.named_parameters())
    for key, g in zip(GRADS, torch.autograd.grad(expect, [p[k] for k in GRADS])):
        assert float((params[key].grad.double() - g).norm()) <= 1e-4 * float(g.norm()), key


@pytest.mark.parametrize("n_mod", [2, 3])
@pytest.mark.parametrize("term", OPTIONAL)
def test_each_weight_alone(n_mod, term):
    """One optional weight on, the others 0: the total is bpr + reg + weight · that term."""
    sets = {k: (WEIGHTS[k] if k == term else 0.0) for k in OPTIONAL}
    model, cfg, task, batch = setup(n_mod, "missing", **sets)
    terms = dgmrec_terms(task, cfg, batch, training_graphs(task, cfg["knn_k"]))
    torch.manual_seed(SEED)
    loss = model.calculate_loss(*batch)
    torch.manual_seed(SEED)
    want = terms(params64(model))
    expect = want["bpr"] + want["reg"] + WEIGHTS[term] * want[term]
    assert abs(value(loss) - value(expect)) <= 1e-5 * abs(value(expect))
    assert abs(WEIGHTS[term] * value(want[term])) > 1e-3 * abs(value(expect))


@pytest.mark.parametrize("n_mod", [2, 3])
def test_refreshed_training_graph(n_mod):
    """With refresh_every = 1 the first pre_epoch blends the training-graph rows of missing items
    (two modalities: every missing item; three: the single-missing generated ones) with a kNN graph
    rebuilt from the current feature tables: row ← λ·rebuilt + (1-λ)·row; the loss uses it."""
    model, cfg, task, batch = setup(n_mod, "missing", refresh_every=1, avg_lambda=0.7)
    p = params64(model)
    graphs = training_graphs(task, cfg["knn_k"])
    lam = cfg["avg_lambda"]
    for m in task.modalities:
        rows = task.missing[m] if n_mod == 2 else np.isin(np.arange(task.n_items), task.mask_groups[m])
        rebuilt = knn(p[f"feat_{m}"], cfg["knn_k"])
        sel = torch.from_numpy(rows)
        graphs[m][sel] = lam * rebuilt[sel] + (1 - lam) * graphs[m][sel]
    torch.manual_seed(SEED)
    loss = model.calculate_loss(*batch)
    torch.manual_seed(SEED)
    expect = total(dgmrec_terms(task, cfg, batch, graphs)(p), cfg)
    assert abs(value(loss) - value(expect)) <= 1e-5 * abs(value(expect))
    # and the refresh changed the loss: the initial graphs give another value
    torch.manual_seed(SEED)
    initial = total(dgmrec_terms(task, cfg, batch, training_graphs(task, cfg["knn_k"]))(p), cfg)
    assert abs(value(initial) - value(expect)) > 1e-3 * abs(value(expect))


def generated_rows(task, cfg, p, graphs, rows):
    """Generated raw features (reference inputs): decoder(perturb([G^L translator(raw general parts
    of the source modalities) ‖ G^L generator(f)])) at the flagged rows; noise drawn per modality."""
    mods = task.modalities
    n_mod = len(mods)
    r = interaction_matrix(task)
    inv_i = 1 / (r.sum(0)[:, None] + 1e-7)
    x = {m: p[f"feat_{m}"] for m in mods}
    g = {m: torch.sigmoid(linear(p, "shared_encoder", torch.tanh(linear(p, f"encoder.{m}", x[m])))) for m in mods}
    f = {m: (r.T @ torch.tanh(p["user_embedding"] @ p[f"filter_trans.{m}.weight"].T)) * inv_i for m in mods}
    out = {}
    for m in mods:
        src = torch.cat([g[mods[(mods.index(m) + j) % n_mod]] for j in range(1, n_mod)], 1)
        parts = [mlp(p, f"translator.{m}", src), mlp(p, f"gen.{m}", f[m])]
        for _ in range(cfg["n_mm_layers"]):
            parts = [graphs[m] @ q for q in parts]
        z = torch.cat(parts, 1)[torch.from_numpy(rows[m])]
        noise = torch.rand(z.shape).double()
        out[m] = linear(p, f"decoder.{m}", z + torch.sign(z) * unit(noise) * cfg["perturb_scale"])
    return out


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_generation_writes_the_generated_rows(n_mod, protocol):
    """What the hooks write into the feature tables before the loss reads them: pre_epoch, the
    generated features of the single-missing old items, on the training graphs; under
    ``new_items``, pre_evaluation then those of the single-missing new items, on the inference
    graphs (missing items isolated after the top-k, over all items). No CLUB (sampler 0), so the
    generation noise is the hooks' only random draw; no refresh (first of every 5 calls)."""
    model, cfg, task, _ = setup(n_mod, protocol, pre_epoch=False, sampler=0.0)
    old = ~task.new_items
    single = {m: np.isin(np.arange(task.n_items), task.mask_groups[m]) for m in task.modalities}
    steps = [(lambda: model.pre_epoch(0), {m: single[m] & old for m in task.modalities},
              training_graphs(task, cfg["knn_k"]))]
    if task.new_item_mode:
        infer = {m: knn(task.features[m].double(), cfg["knn_k"], after=task.missing[m]) for m in task.modalities}
        steps.append((model.pre_evaluation, {m: single[m] & task.new_items for m in task.modalities}, infer))
    written = 0
    for hook, rows, dense in steps:
        before = params64(model)
        torch.manual_seed(SEED)
        hook()
        torch.manual_seed(SEED)
        want = generated_rows(task, cfg, before, dense, rows)
        for m in task.modalities:
            now = model.feat[m].detach().double()
            sel = torch.from_numpy(rows[m])
            assert torch.allclose(now[sel], want[m], rtol=1e-5, atol=1e-6), m
            assert torch.equal(now[~sel], before[f"feat_{m}"][~sel])
            written += int(sel.sum())
    assert written >= 3
