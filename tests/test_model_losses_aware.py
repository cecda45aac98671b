"""Training losses of MILK, SIBRAR and CI2MG against dense float64 oracles.

As in ``test_model_losses_mma``: the registered model on a hand task (2 and 3 modalities,
masked modalities, both protocols), one fixed batch, the loss recomputed from
``model.state_dict()`` with explicit formulas; values to rtol 1e-5, ID-table gradients to 1e-4,
and every weighted term large enough that dropping or mis-weighting it fails. Random draws
(MILK's Dirichlet environments, SiBraR's source pairs) are reseeded identically before the
model and the oracle, which draws them itself.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dense_oracle import (PROTOCOLS, assert_loss_and_grads, assert_terms_matter, bpr, build, feature, fixed_batch,
                          hand_task, interaction_matrix, joint, lightgcn, linear, move_parameters, nce, row_norm, sq_l2,
                          unit)

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(n, p) for n in (2, 3) for p in PROTOCOLS]
IDS = [f"{n}mod-{p}" for n, p in CASES]


def setup(name, n_mod, protocol, **sets):
    task = hand_task(n_mod, protocol)
    model, cfg = build(name, task, **sets)
    return model, cfg, task, fixed_batch(task)


def observed_count_weight(task) -> torch.Tensor:
    """1 / (number of observed modalities), 0 for an item that observes none."""
    n = sum((~task.missing[m]).astype(float) for m in task.modalities)
    return torch.from_numpy(np.where(n > 0, 1.0 / np.maximum(n, 1), 0.0))


# --------------------------------------------------------------------------- MILK

def milk_oracle(task, cfg, batch):
    """Σ_e L_e + reg·½(‖u‖² + ‖i⁺‖² + ‖i⁻‖²)/B + align·Σ_pairs MSE + penalty·Var_e(L_e).

    Item vector under environment weights w: c_i Σ_m w_m (X_m W_mᵀ + b_m)_i, c_i as
    ``observed_count_weight``; environments: equal weights, then the M cyclic shifts of one
    Dirichlet(α) draw; L_e = mean softplus(u·i⁻ - u·i⁺); the regulariser takes the equal-weight
    vectors. Alignment of each modality pair over the distinct positives, leaving out the items
    of the single-missing groups of the two modalities (items of 'all' stay: the reference).
    """
    mods = task.modalities
    users, pos, neg = batch
    c = observed_count_weight(task)
    pairs = [("v", "t")] if len(mods) == 2 else [("t", "v"), ("t", "a"), ("v", "a")]
    upos = torch.unique(pos)

    def oracle(p):
        lam = np.random.dirichlet([cfg["alpha"]] * len(mods))
        envs = [np.full(len(mods), 1.0 / len(mods))] + [np.roll(lam, s) for s in range(len(mods))]
        f = {m: linear(p, f"proj.{m}", p[f"features.{m}"]) for m in mods}
        u = p["user_embedding"][users]
        losses, vectors = [], []
        for w in envs:
            item = c[:, None] * sum(float(w[j]) * f[m] for j, m in enumerate(mods))
            vectors.append(item)
            losses.append(torch.log1p(torch.exp((u * item[neg]).sum(1) - (u * item[pos]).sum(1))).mean())
        losses = torch.stack(losses)
        align = 0.0
        for x, y in pairs:
            left_out = set(task.mask_groups[x].tolist()) | set(task.mask_groups[y].tolist())
            j = torch.tensor([i for i in upos.tolist() if i not in left_out])
            align = align + ((f[x][j] - f[y][j]) ** 2).mean()
        terms = {"envs": losses.sum(),
                 "reg": 0.5 * sq_l2(u, vectors[0][pos], vectors[0][neg]) / len(users),
                 "align": align, "var": losses.var()}
        total = terms["envs"] + cfg["reg_coeff"] * terms["reg"] + cfg["align_coeff"] * terms["align"] + \
            cfg["penalty_coeff"] * terms["var"]
        return total, terms

    return oracle


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_milk_loss(n_mod, protocol):
    model, cfg, task, batch = setup("MILK", n_mod, protocol, embedding_size=4, reg_coeff=0.5, align_coeff=0.5,
                                    penalty_coeff=100.0, alpha=0.1)
    # scores large enough for the environments' losses to differ visibly
    move_parameters(model, ["user_embedding"] + [f"proj.{m}.weight" for m in task.modalities], scale=1.0)
    terms = assert_loss_and_grads(model, batch, milk_oracle(task, cfg, batch),
                                  ("user_embedding", "features.v", "proj.t.weight"), before=lambda: np.random.seed(5))
    assert_terms_matter(terms, {"reg": cfg["reg_coeff"], "align": cfg["align_coeff"], "var": cfg["penalty_coeff"]},
                        main="envs")


# --------------------------------------------------------------------------- SIBRAR

def sibrar_oracle(task, cfg, batch, fixed: bool):
    """BPR on u·(s_k1 + s_k2) + lamb·pairwise InfoNCE between the two sources.

    Sources of item i: f(E_i), then normalize(f(X_m W_mᵀ + b_m)) per modality, with one shared
    f(x) = fc2(relu(fc1(x))). Per row, (k1, k2) are the sources with the largest and second
    largest of 1 + M uniform keys (reseeded identically); ``fixed``: only the positive item's
    observed sources take part, and a row left with its ID alone uses it alone and has no
    contrastive term. With p = s_k1(i⁺)·s_k2(i⁺)/T, a = s_k1(i⁺)·s_k2(i⁻)/T, b = s_k2(i⁺)·s_k1(i⁻)/T:
    InfoNCE = mean over rows of -log(eᵖ/(eᵖ+eᵃ)) - log(eᵖ/(eᵖ+eᵇ)).
    """
    mods = task.modalities
    users, pos, neg = batch
    avail = torch.from_numpy(np.stack([np.ones(task.n_items, bool)] + [~task.missing[m] for m in mods], 1))
    t = cfg["temp"]

    def f(p, x):
        return linear(p, "fc2", torch.relu(linear(p, "fc1", x)))

    def oracle(p):
        keys = torch.rand(len(pos), 1 + len(mods)).double()
        if fixed:
            keys = torch.where(avail[pos], keys, torch.full_like(keys, -1.0))
        k1 = keys.argmax(1)
        k2 = keys.masked_fill(torch.nn.functional.one_hot(k1, keys.shape[1]).bool(), -2.0).argmax(1)
        two = avail[pos].sum(1) >= 2 if fixed else torch.ones(len(pos), dtype=torch.bool)
        src = torch.stack([f(p, p["item_embedding"])] +
                          [unit(f(p, linear(p, f"proj.{m}", p[f"features.{m}"]))) for m in mods], 1)
        r = torch.arange(len(pos))
        p1, p2, n1, n2 = src[pos, k1], src[pos, k2], src[neg, k1], src[neg, k2]
        w = two.double()[:, None]
        u = p["user_embedding"][users]
        pp, a, b = (p1 * p2).sum(1) / t, (p1 * n2).sum(1) / t, (p2 * n1).sum(1) / t
        info = -torch.log(torch.exp(pp) / (torch.exp(pp) + torch.exp(a))) - \
            torch.log(torch.exp(pp) / (torch.exp(pp) + torch.exp(b)))
        assert len(r) == len(pos)
        terms = {"bpr": bpr((u * (p1 + w * p2)).sum(1), (u * (n1 + w * n2)).sum(1)), "info": info[two].mean()}
        return terms["bpr"] + cfg["lamb"] * terms["info"], terms

    return oracle


@pytest.mark.parametrize("fixed", [False, True], ids=["reference", "fix_modality_sampling"])
@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_sibrar_loss(n_mod, protocol, fixed):
    model, cfg, task, batch = setup("SIBRAR", n_mod, protocol, embedding_size=4, temp=0.5, lamb=0.5,
                                    fix_modality_sampling=fixed)
    terms = assert_loss_and_grads(model, batch, sibrar_oracle(task, cfg, batch, fixed),
                                  ("user_embedding", "item_embedding", "fc1.weight"),
                                  before=lambda: torch.manual_seed(9))
    assert_terms_matter(terms, {"info": cfg["lamb"]})


# --------------------------------------------------------------------------- CI2MG

def sinkhorn_plan(a: torch.Tensor, b: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Entropic OT plan of the cost ‖a_i - b_j‖²: Q = K/ΣK, K = exp(-cost/eps); then ``iters`` times
    rows rescaled to sum 1/n and columns to sum 1/m; finally n·Q."""
    q = torch.exp(-torch.cdist(a, b) ** 2 / eps)
    q = q / q.sum()
    n, m = q.shape
    for _ in range(iters):
        q = q / q.sum(1, keepdim=True) / n
        q = q / q.sum(0, keepdim=True) / m
    return q * n


def ci2mg_oracle(task, cfg, batch, fixed_contrastive: bool):
    """L_rec + lamb_1·L_s + lamb_2·BPR.

    IDs: LightGCN on (D + 1e-7)⁻¹A. Per modality: r = X_m W_mᵀ + b_m; user means u_m = D_u⁻¹ R r,
    item means i_m = D_i⁻¹ Rᵀ u_m; hypergraph over prototypes P_m with incidence
    H = normalize(i_m) normalize(P_m)ᵀ, refined y ← σ(D_v⁻¹ H W D_e⁻¹ Hᵀ y) from y = i_m (D_v / D_e
    the row / column sums of H, zeros taken as 1); generated g_m = Q y_m with Q the Sinkhorn plan
    between the sum of the other modalities' y and y_m (Q a constant); enhanced
    e_m = BatchNorm(W [y_m ‖ g_m] + b) with the statistics of all items. User = [ids ‖ normalize(u_m)],
    item = [ids ‖ normalize(e_m)]. L_rec = Σ_m MSE(e_m, r_m) over the distinct positives observing
    m (audio: those observing text, the reference); L_s: log 2 per modality (the reference's
    negative equals its positive), or with the fix InfoNCE(y_m, g_m, temp) over the same rows.
    """
    mods, nu = task.modalities, task.n_users
    users, pos, neg = batch
    r = interaction_matrix(task)
    adj = row_norm(joint(r), eps=1e-7)
    deg_u, deg_i = r.sum(1, keepdim=True), r.sum(0)[:, None]
    upos = torch.unique(pos)
    observed = {m: torch.from_numpy(~task.missing["t" if m == "a" else m]) for m in mods}

    def oracle(p):
        ids = lightgcn(adj, torch.cat([p["user_embedding"], p["item_embedding"]]), cfg["n_ui_layers"])
        raw, um, y = {}, {}, {}
        for m in mods:
            raw[m] = linear(p, f"proj.{m}", feature(task, m))
            um[m] = r @ raw[m] / (deg_u + 1e-7)
            im = r.T @ um[m] / (deg_i + 1e-7)
            h = unit(im) @ unit(p[f"prototypes.{m}"]).T
            dv, de = h.sum(1), h.sum(0)
            dv = torch.where(dv == 0, torch.ones_like(dv), dv)
            de = torch.where(de == 0, torch.ones_like(de), de)
            op = torch.diag(1 / dv) @ h @ p[f"hyper.{m}.weight"] @ torch.diag(1 / de) @ h.T
            y[m] = im
            for _ in range(cfg["n_hyper_layers"]):
                y[m] = torch.sigmoid(op @ y[m])
        enh, gen = {}, {}
        for m in mods:
            cost_rows = sum(y[o] for o in mods if o != m)
            gen[m] = sinkhorn_plan(cost_rows.detach(), y[m].detach(), cfg["sinkhorn_eps"], cfg["sinkhorn_iters"]) @ y[m]
            x = linear(p, f"enhance.{m}", torch.cat([y[m], gen[m]], 1))
            x = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)
            enh[m] = x * p["bn.weight"] + p["bn.bias"]
        user = torch.cat([ids[:nu]] + [unit(um[m]) for m in mods], 1)
        item = torch.cat([ids[nu:]] + [unit(enh[m]) for m in mods], 1)
        rec, con = 0.0, 0.0
        for m in mods:
            idx = upos[observed[m][upos]]
            rec = rec + ((enh[m][idx] - raw[m][idx]) ** 2).mean()
            con = con + (nce(y[m][idx], gen[m][idx], cfg["temp"]) if fixed_contrastive else math.log(2.0))
        u = user[users]
        terms = {"rec": rec, "con": torch.as_tensor(con), "bpr": bpr((u * item[pos]).sum(1), (u * item[neg]).sum(1))}
        return terms["rec"] + cfg["lamb_1"] * terms["con"] + cfg["lamb_2"] * terms["bpr"], terms

    return oracle


@pytest.mark.parametrize("fixed", [False, True], ids=["reference", "fix_contrastive_loss"])
@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_ci2mg_loss(n_mod, protocol, fixed):
    model, cfg, task, batch = setup("CI2MG", n_mod, protocol, embedding_size=4, n_ui_layers=2, n_hyper_layers=2,
                                    n_prototypes=3, temp=0.5, lamb_1=0.7, lamb_2=1.3, fix_contrastive_loss=fixed)
    terms = assert_loss_and_grads(model, batch, ci2mg_oracle(task, cfg, batch, fixed),
                                  ("user_embedding", "item_embedding", "proj.v.weight", "prototypes.t"))
    assert_terms_matter(terms, {"con": cfg["lamb_1"], "bpr": cfg["lamb_2"]}, main="rec")
