"""Training losses of LATTICE, MGCN, LGMRec, DAMRS and GUME against dense float64 oracles.

Each test builds the registered model on a hand task (``dense_oracle.hand_task``: 2 and 3
modalities, masked modalities, both protocols), takes one fixed batch, and recomputes the loss
from ``model.state_dict()`` with explicit matrices: kNN graphs from cosine + top-k, normalised
adjacencies, the model's formulas written out. Loss values agree to rtol 1e-5 and the gradients
of the ID tables to 1e-4; every weighted loss term is checked to move the total well beyond
that tolerance, so dropping or mis-weighting any one of them fails.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dense_oracle import (PROTOCOLS, assert_loss_and_grads, assert_terms_matter, bpr, build, cosine, feature,
                          fixed_batch, hand_task, interaction_matrix, joint, knn, lightgcn, linear, move_parameters,
                          new_item_knn, nce, params64, row_norm, self_loops_only, sq_l2, sym_norm, topk_mask, unit,
                          without)

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(n, p) for n in (2, 3) for p in PROTOCOLS]
IDS = [f"{n}mod-{p}" for n, p in CASES]
K = 5


def setup(name, n_mod, protocol, **sets):
    """The registered model with ``sets`` on the hand task, and the task's fixed batch."""
    task = hand_task(n_mod, protocol)
    model, cfg = build(name, task, **sets)
    return model, cfg, task, fixed_batch(task)


def split(x, n_users):
    return x[:n_users], x[n_users:]


def cosine_pairs(a, b):
    """cos(a_r, b_c) for every row pair."""
    return unit(a) @ unit(b).T


# --------------------------------------------------------------------------- LATTICE

def lattice_oracle(task, cfg, batch):
    """BPR + reg of LATTICE on the first batch of an epoch (the learned graph built with gradient).

    Item graph A = (1-λ)·L̂ + λ Σ_m w_m S_m, w = softmax(modal weights): L = Σ_m w_m (top-k cosine
    graph of the projected trainable features), L̂ its symmetric row-sum normalisation (two
    modalities; three use L as is); S_m the static kNN graphs (two modalities: missing items
    isolated after the top-k; three: unmasked). New-item training (two modalities): new items
    are left out of both graphs. Items = LightGCN on D̃⁻¹(A_ui + I) + normalize(A^L E_item).
    """
    mods = task.modalities
    two = len(mods) == 2
    new = task.new_items if (task.new_item_mode and two) else None
    lam, k = cfg["lambda_coeff"], cfg["knn_k"]
    nu = task.n_users

    def oracle(p):
        w = torch.softmax(p["modal_weight"], 0)
        learned = 0.0
        for j, m in enumerate(mods):
            s = cosine(linear(p, f"trs.{m}", p[f"features.{m}"]))
            if new is not None:
                s = without(s, new)
            graph = torch.where(topk_mask(s.detach(), k), s, torch.zeros_like(s))
            learned = learned + w[j] * (without(graph, new) if new is not None else graph)
        if two:
            d = learned.sum(1).clamp(min=1e-7).pow(-0.5)
            learned = d[:, None] * learned * d[None, :]
        a = (1 - lam) * learned
        for j, m in enumerate(mods):
            x = feature(task, m)
            static = (new_item_knn(x, k, new) if new is not None else knn(x, k, after=task.missing[m])) if two \
                else knn(x, k)
            a = a + lam * w[j] * static
        h = p["item_embedding"]
        for _ in range(cfg["n_layers"]):
            h = a @ h
        r = interaction_matrix(task)
        adj = row_norm(joint(r) + torch.eye(nu + task.n_items, dtype=torch.float64))
        cf = lightgcn(adj, torch.cat([p["user_embedding"], p["item_embedding"]]), len(cfg["weight_size"]))
        u_all, i_all = split(cf, nu)
        i_all = i_all + unit(h)
        users, pos, neg = batch
        u, pi, ni = u_all[users], i_all[pos], i_all[neg]
        terms = {"bpr": bpr((u * pi).sum(1), (u * ni).sum(1)),
                 "reg": 0.5 * sq_l2(u, pi, ni) / cfg["train_batch_size"]}
        return terms["bpr"] + cfg["reg_weight"] * terms["reg"], terms

    return oracle


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_lattice_loss(n_mod, protocol):
    model, cfg, task, batch = setup("LATTICE", n_mod, protocol, embedding_size=4, feat_embed_dim=4, knn_k=K,
                                    weight_size=[4, 4], n_layers=2, lambda_coeff=0.6, reg_weight=0.5,
                                    train_batch_size=16)
    move_parameters(model, [f"features.{m}" for m in task.modalities] + ["modal_weight"])
    oracle = lattice_oracle(task, cfg, batch)
    model.pre_epoch(0)  # the engine's hook: the next batch rebuilds the learned graph
    terms = assert_loss_and_grads(model, batch, oracle, ("user_embedding", "item_embedding", "features.v"))
    assert_terms_matter(terms, {"reg": cfg["reg_weight"]})
    # Later batches of the epoch reuse the epoch's graph, detached: same value, no feature gradient.
    model.zero_grad(set_to_none=True)
    again = model.calculate_loss(*batch)
    want, _ = oracle(params64(model))
    assert abs(float(again.detach()) - float(want)) <= 1e-5 * abs(float(want))
    again.backward()
    assert model.features["v"].grad is None or not model.features["v"].grad.any()


# --------------------------------------------------------------------------- MGCN

def mgcn_oracle(task, cfg, batch):
    """BPR + reg + cl·(InfoNCE of the items' side vs LightGCN view + the same for users).

    Per modality: z = E_item ⊙ σ(gate(trs(X_m))) on the kNN graph with missing items isolated
    before the top-k (new-item training: the graph without new items, z zeroed there and, as the
    reference does it under no_grad, detached); view = [R̂ z; z] with R̂ the user×item block of
    the normalised user-item graph. Attention over views gives the common part, user-preference
    gates on the LightGCN view the specific parts; side = (Σ specific + common) / (M + 1).
    """
    mods, nu = task.modalities, task.n_users
    train_new = task.new_item_mode
    r = interaction_matrix(task)
    a_ui = sym_norm(joint(r))
    r_hat = a_ui[:nu, nu:]
    k, tau = cfg["knn_k"], cfg["cl_temperature"]
    graphs = {m: new_item_knn(feature(task, m), k, task.new_items) if train_new
              else knn(feature(task, m), k, before=task.missing[m]) for m in mods}
    keep = torch.from_numpy(~task.new_items).double()[:, None]
    users, pos, neg = batch

    def oracle(p):
        views = []
        for m in mods:
            z = p["item_embedding"] * torch.sigmoid(linear(p, f"gate.{m}.0", linear(p, f"trs.{m}", p[f"features.{m}"])))
            if train_new:
                z = (z * keep).detach()
            for _ in range(cfg["n_layers"]):
                z = graphs[m] @ z
            views.append(torch.cat([r_hat @ z, z]))
        content = lightgcn(a_ui, torch.cat([p["user_embedding"], p["item_embedding"]]), cfg["n_ui_layers"])
        logits = torch.cat([linear(p, "query_common.2", torch.tanh(linear(p, "query_common.0", v))) for v in views], 1)
        att = torch.softmax(logits, 1)
        common = sum(att[:, j:j + 1] * v for j, v in enumerate(views))
        specific = [torch.sigmoid(linear(p, f"prefer.{m}.0", content)) * (v - common) for m, v in zip(mods, views)]
        side = (sum(specific) + common) / (len(mods) + 1)
        u_all, i_all = split(content + side, nu)
        u, pi, ni = u_all[users], i_all[pos], i_all[neg]
        side_u, side_i = split(side, nu)
        cont_u, cont_i = split(content, nu)
        terms = {"bpr": bpr((u * pi).sum(1), (u * ni).sum(1)),
                 "reg": 0.5 * sq_l2(u, pi, ni) / cfg["train_batch_size"],
                 "cl_items": nce(side_i[pos], cont_i[pos], tau),
                 "cl_users": nce(side_u[users], cont_u[users], tau)}
        total = terms["bpr"] + cfg["reg_weight"] * terms["reg"] + \
            cfg["cl_loss"] * (terms["cl_items"] + terms["cl_users"])
        return total, terms

    return oracle


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_mgcn_loss(n_mod, protocol):
    model, cfg, task, batch = setup("MGCN", n_mod, protocol, embedding_size=4, n_ui_layers=2, n_layers=2, knn_k=K,
                                    reg_weight=0.5, cl_loss=0.5, cl_temperature=0.2, train_batch_size=16)
    move_parameters(model, [f"features.{m}" for m in task.modalities])
    terms = assert_loss_and_grads(model, batch, mgcn_oracle(task, cfg, batch),
                                  ("user_embedding", "item_embedding", "features.t"))
    assert_terms_matter(terms, {"reg": cfg["reg_weight"], "cl_items": cfg["cl_loss"], "cl_users": cfg["cl_loss"]})


# --------------------------------------------------------------------------- LGMRec

def gumbel(shape) -> torch.Tensor:
    """Gumbel(0, 1) noise as -log(Exp(1)), drawn in float32 like the model's draws."""
    return -torch.empty(shape).exponential_().log().double()


def lgmrec_oracle(task, cfg, batch):
    """BPR + cl·hypergraph contrast + reg·(Σ‖·‖_F)/B.

    Local: LightGCN + Σ_m normalize(Â^L [R X_m W_m / deg_u; X_m W_m]). Global: per modality soft
    hyperedge memberships Gumbel-softmax((X_m H_m + g) / τ) for items and ((R X_m H_m + g') / τ)
    for users (noise g, g' reproduced from the same seed, items first), hyperedge states
    lat = Hᵢᵀ e, items Hᵢ lat, users Hᵤ lat. The contrast between modalities x, y sums, over the
    batch rows (duplicates counted), -log softmax_c(cos(x_r, y_c)/τ) at the row's own column:
    users against all users; items: with two modalities the distinct complete positives against
    complete items, with three modalities every positive against all items (the reference).
    """
    mods, nu, ni = task.modalities, task.n_users, task.n_items
    three = len(mods) == 3
    r = interaction_matrix(task)
    a = sym_norm(joint(r))
    deg_u = r.sum(1, keepdim=True)
    tau = cfg["tau"]
    complete = ~np.logical_or.reduce([task.missing[m] for m in mods])
    users, pos, neg = batch
    if three:
        item_rows, cands = pos, torch.arange(ni)
    else:
        item_rows = torch.unique(pos[torch.from_numpy(complete)[pos]])
        cands = torch.from_numpy(np.flatnonzero(complete))
    pairs = (("v", "t"), ("a", "v"), ("t", "a")) if three else ((mods[0], mods[1]),)

    def contrast(x, y, rows, cand):
        logits = cosine_pairs(x[rows], y[cand]) / tau
        label = torch.searchsorted(cand, rows)
        return -torch.log_softmax(logits, 1)[torch.arange(len(rows)), label].sum()

    def oracle(p):
        noise = {m: (gumbel((ni, cfg["hyper_num"])), gumbel((nu, cfg["hyper_num"]))) for m in mods}
        cge = lightgcn(a, torch.cat([p["user_embedding"], p["item_embedding"]]), cfg["n_ui_layers"])
        local, hyper = cge, {}
        for m in mods:
            x = feature(task, m)
            f = x @ p[f"trs.{m}"]
            y = torch.cat([r @ f / (deg_u + 1e-7), f])
            for _ in range(cfg["n_mm_layers"]):
                y = a @ y
            local = local + unit(y)
            item_logits = x @ p[f"hyper.{m}"]
            hi = torch.softmax((item_logits + noise[m][0]) / tau, 1)
            hu = torch.softmax((r @ item_logits + noise[m][1]) / tau, 1)
            e = cge[nu:]
            for _ in range(cfg["n_hyper_layer"]):
                lat = hi.T @ e
                e, hu_e = hi @ lat, hu @ lat
            hyper[m] = (hu_e, e)
        glob = sum(torch.cat(h) for h in hyper.values())
        u_all, i_all = split(local + cfg["alpha"] * unit(glob), nu)
        u, pi, ni_ = u_all[users], i_all[pos], i_all[neg]
        hcl = sum(contrast(hyper[x][0], hyper[y][0], users, torch.arange(nu)) +
                  contrast(hyper[x][1], hyper[y][1], item_rows, cands) for x, y in pairs)
        terms = {"bpr": bpr((u * pi).sum(1), (u * ni_).sum(1)),
                 "hcl": hcl / 3.0 if three else hcl,
                 "reg": (u.norm() + pi.norm() + ni_.norm()) / len(users)}
        return terms["bpr"] + cfg["cl_weight"] * terms["hcl"] + cfg["reg_weight"] * terms["reg"], terms

    return oracle


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_lgmrec_loss(n_mod, protocol):
    """Dropout off (keep_rate 1); the Gumbel noise reseeded identically before model and oracle."""
    model, cfg, task, batch = setup("LGMRec", n_mod, protocol, embedding_size=4, feat_embed_dim=4, n_ui_layers=2,
                                    n_mm_layers=2, n_hyper_layer=2, hyper_num=3, keep_rate=1.0, alpha=0.3,
                                    cl_weight=0.01, reg_weight=0.1, tau=0.2)
    terms = assert_loss_and_grads(model, batch, lgmrec_oracle(task, cfg, batch),
                                  ("user_embedding", "item_embedding", "hyper.v"), before=lambda: torch.manual_seed(7))
    assert_terms_matter(terms, {"hcl": cfg["cl_weight"], "reg": cfg["reg_weight"]})


# --------------------------------------------------------------------------- DAMRS

def binary_sym(pattern: torch.Tensor) -> torch.Tensor:
    """The non-zero pattern weighted (r_i + 1e-7)^-1/2 (r_j + 1e-7)^-1/2, r the row counts."""
    b = (pattern != 0).double()
    d = (b.sum(1) + 1e-7).pow(-0.5)
    return d[:, None] * b * d[None, :]


def damrs_graphs(task, k, train: bool):
    """Denoised kNN graphs: a pair survives where its cosine is at least the mean cosine (over all
    n² pairs) in every modality; three modalities isolate each modality's missing items (self-loop
    only), new items are isolated in the training graphs; each row keeps its k largest survivors;
    binary, then binary_sym. Behaviour graph: pairs with ≥ 2 common training users, the 2 largest
    counts per row (ties to the smaller item id), plus self-loops, binary_sym."""
    mods = task.modalities
    three = len(mods) == 3
    eps = 1e-5 if three else 0.0
    sims = {}
    for m in mods:
        x = feature(task, m)
        xn = x / (x.norm(dim=1, keepdim=True) + eps)
        sims[m] = xn @ xn.T
    keep = torch.stack([s >= s.mean() for s in sims.values()]).all(0)
    graphs = {}
    for m in mods:
        s = sims[m] * keep
        if three:
            s = self_loops_only(s, task.missing[m])
        if train and task.new_item_mode:
            s = self_loops_only(s, task.new_items)
        graphs[m] = binary_sym(topk_mask(s, k) & (s != 0))
    r = interaction_matrix(task)
    c = r.T @ r
    c.fill_diagonal_(0)
    c[c < 2] = 0
    top2 = torch.zeros_like(c, dtype=torch.bool)
    for i in range(c.shape[0]):
        order = sorted(range(c.shape[1]), key=lambda j: (-float(c[i, j]), j))[:2]
        top2[i, [j for j in order if c[i, j] > 0]] = True
    graphs["s"] = binary_sym(top2 | torch.eye(c.shape[0], dtype=torch.bool))
    return graphs


def damrs_oracle(task, cfg, batch):
    """Weighted BPR + neighbor_weight·neighbour discrimination + kl_weight·symmetric Bernoulli KL.

    Views h_v = G_v^L E_item for every modality graph and the behaviour graph s. Neighbour
    discrimination of view t over the batch items (three modalities: only the positives observed
    in every modality): p_v = softmax(cos(h_v[row], h_v[candidates])) per view, candidates = all
    (new-item protocol: old) items; positives mm = top-k of Σ_{other views} p + 2 p_t, single =
    top-k of p_t outside mm (k = 10 with two modalities, knn_k with three); with
    S_x = Σ_{c∈x} exp(cos/τ): -log(S_mm/S_all + 1e-9) - log(S_single/(S_all - S_mm) + 1e-9), mean
    over rows, then mean over views (three modalities: half of it). KL between σ(u·normalize(i))
    of the LightGCN items and of the mean view, over distinct users × distinct batch items. BPR
    weights (constants): from the views' σ(u·normalize(h_v[item])) (mean, variance, max).
    """
    mods, nu = task.modalities, task.n_users
    three = len(mods) == 3
    views = mods + ("s",)
    graphs = damrs_graphs(task, cfg["knn_k"], train=True)
    a_ui = sym_norm(joint(interaction_matrix(task)))
    users, pos, neg = batch
    tau = cfg["nd_temperature"]
    pk = cfg["knn_k"] if three else 10
    cand = torch.from_numpy(np.flatnonzero(~task.new_items))
    i_id = torch.unique(torch.cat([pos, neg]))
    if three:
        complete = torch.from_numpy(~np.logical_or.reduce([task.missing[m] for m in mods]))
        rows = i_id[torch.isin(i_id, torch.unique(pos[complete[pos]]))]
    else:
        rows = i_id
    others = {"s": ("t", "v", "a"), "v": ("t", "a", "s"), "t": ("v", "a", "s"), "a": ("v", "t", "s")} if three else \
        {"s": ("t", "v"), "v": ("t", "s"), "t": ("v", "s")}

    def kl(p, q):
        return p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))

    def oracle(p):
        e_u, e_i = p["user_embedding"], p["item_embedding"]
        u_all, i_all = split(lightgcn(a_ui, torch.cat([e_u, e_i]), cfg["n_ui_layers"]), nu)
        h = {}
        for v in views:
            x = e_i
            for _ in range(cfg["n_mm_layers"]):
                x = graphs[v] @ x
            h[v] = x
        with torch.no_grad():
            probs = {v: torch.softmax(cosine_pairs(h[v][rows], h[v][cand]), 1) for v in views}
        nd = []
        for t, o in others.items():
            with torch.no_grad():
                # candidates with the same vector in view t add the same to every sum below: a tie
                # between them does not change the loss
                same = torch.cdist(h[t][cand], h[t][cand]) < 1e-12
                total = sum(probs[x] for x in o) + 2 * probs[t]
                mm = topk_mask(total, pk, same)
                single = topk_mask(probs[t].masked_fill(mm, 0.0), pk, same)
            e = torch.exp(cosine_pairs(h[t][rows], h[t][cand]) / tau)
            s_all, s_mm, s_single = e.sum(1), (e * mm).sum(1), (e * single).sum(1)
            nd.append((-torch.log(s_mm / s_all + 1e-9) - torch.log(s_single / (s_all - s_mm) + 1e-9)).mean())
        it = sum(h[v] for v in views) / len(views)
        u_id = torch.unique(users)
        pg = torch.sigmoid(u_all[u_id] @ unit(i_all[i_id]).T)
        pt = torch.sigmoid(u_all[u_id] @ unit(it[i_id]).T)
        u = u_all[users]
        with torch.no_grad():
            ps = torch.sigmoid(torch.stack([(u * unit(h[v][pos])).sum(1) for v in views]))
            ns = torch.sigmoid(torch.stack([(u * unit(h[v][neg])).sum(1) for v in views]))
            p_mean = ps.mean(0)
            pos_w = (p_mean * torch.exp(-ps.var(0)) ** 2).clamp(0, 1)
            neg_w = ((ps.max(0).values - ns.mean()) * (p_mean < ns.mean()).double()).clamp(0, 1)
        items = i_all + it
        d = (u * items[pos]).sum(1) - (u * items[neg]).sum(1)
        terms = {"bpr": -(torch.log(torch.sigmoid(d)) * pos_w + torch.log(torch.sigmoid(-d)) * neg_w).mean(),
                 "nd": 0.5 * sum(nd) / 4.0 if three else sum(nd) / 3.0,
                 "kl": (kl(pg, pt) + kl(pt, pg)).mean()}
        return terms["bpr"] + cfg["neighbor_weight"] * terms["nd"] + cfg["kl_weight"] * terms["kl"], terms

    return oracle


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_damrs_loss(n_mod, protocol):
    # knn_k 3: with two modalities the identical imputed rows are not masked (the reference), and
    # with k = 3 they never straddle a row's k-th place in these tasks (damrs_graphs asserts it).
    model, cfg, task, batch = setup("DAMRS", n_mod, protocol, embedding_size=4, n_ui_layers=2, n_mm_layers=2,
                                    knn_k=3, kl_weight=2.0, neighbor_weight=0.1, nd_temperature=0.2)
    move_parameters(model, ["user_embedding", "item_embedding"], scale=0.3)  # BPR weights away from σ(0)
    terms = assert_loss_and_grads(model, batch, damrs_oracle(task, cfg, batch), ("user_embedding", "item_embedding"))
    assert_terms_matter(terms, {"nd": cfg["neighbor_weight"], "kl": cfg["kl_weight"]})


# --------------------------------------------------------------------------- GUME

def gume_oracle(task, cfg, batch):
    """BPR + reg_1·SqL2 + vt·moment alignment + bm·(2 InfoNCE) + um·(3 InfoNCE) + reg_2·½‖·‖²/b.

    Enhanced user-item graph: [[0, R], [Rᵀ, II]] with II[i, j] = 1 where j ≠ i is a neighbour
    of i in both the image and the text kNN graph (three modalities only, the reference's two-
    modality path has no such edges), D^-1/2 A D^-1/2 with row sums; R̂ its user×item block. kNN
    graphs: missing items isolated before (two modalities) / after (three) the top-k; new-item
    training graphs without new items, whose gated vectors are zeroed and (reference) detached.
    Integrated view: attention over the explicit views [R̂ z; z] (coarse) and behaviour-gated
    differences (fine), (Σ fine + coarse)/(M+1). Complete positives tv: alignment of the
    modality views at rows tv of [users; items] (the reference's item ids on the joint table)
    and the item InfoNCE, each only with at least two of them. User-modality terms: extended
    (mean of LightGCN over [E_user^m; z_m]) vs integrated users, and two noise views of each,
    x + sign(x) ⊙ normalize(U[0,1)) · noise_scale, noise reproduced from the same seed.
    """
    mods, nu = task.modalities, task.n_users
    three = len(mods) == 3
    k = cfg["knn_k"]
    train_new = task.new_item_mode
    if train_new:
        graphs = {m: new_item_knn(feature(task, m), k, task.new_items) for m in mods}
    else:
        graphs = {m: knn(feature(task, m), k, **({"after": task.missing[m]} if three else {"before": task.missing[m]}))
                  for m in mods}
    a = joint(interaction_matrix(task))
    if three:
        ii = (graphs["v"] != 0) & (graphs["t"] != 0)
        ii.fill_diagonal_(False)
        a[nu:, nu:] = ii.double()
    adj = sym_norm(a)
    r_hat = adj[:nu, nu:]
    keep = torch.from_numpy(~task.new_items).double()[:, None]
    users, pos, neg = batch
    complete = torch.from_numpy(~np.logical_or.reduce([task.missing[m] for m in mods]))
    tv = torch.unique(pos[complete[pos]])
    pairs = (("v", "t"), ("a", "t"), ("v", "a")) if three else ((mods[0], mods[1]),)
    bs = cfg["train_batch_size"]

    def moment(x, y):
        return (x.var() - y.var()).abs() + (x.mean() - y.mean()).abs()

    def noisy(x):
        return x + torch.sign(x) * unit(torch.rand(x.shape).double()) * cfg["noise_scale"]

    def oracle(p):
        ext_id = lightgcn(adj, torch.cat([p["user_embedding"], p["item_embedding"]]), cfg["n_ui_layers"])
        explicit, extended = {}, []
        for m in mods:
            gate = linear(p, f"space_trans.{m}.1", linear(p, f"space_trans.{m}.0", p[f"features.{m}"]))
            z = p["item_embedding"] * torch.sigmoid(gate)
            if train_new:
                z = (z * keep).detach()
            for _ in range(cfg["n_layers"]):
                z = graphs[m] @ z
            explicit[m] = torch.cat([r_hat @ z, z])
            extended.append(lightgcn(adj, torch.cat([p[f"ext_user.{m}"], z]), cfg["n_ui_layers"]))
        ext_it = sum(extended) / len(mods)
        logits = torch.cat([linear(p, "separate_coarse.2", torch.tanh(linear(p, "separate_coarse.0", explicit[m])))
                            for m in mods], 1)
        att = torch.softmax(logits, 1)
        coarse = sum(att[:, j:j + 1] * explicit[m] for j, m in enumerate(mods))
        fine = [torch.sigmoid(linear(p, f"behavior.{m}.0", ext_id)) * (explicit[m] - coarse) for m in mods]
        integ = (sum(fine) + coarse) / (len(mods) + 1)
        u_all, i_all = split(ext_id + integ, nu)
        u, pi, ni_ = u_all[users], i_all[pos], i_all[neg]
        integ_u, integ_i = split(integ, nu)
        ext_u, ext_i = split(ext_id, nu)
        it_u, it_i = split(ext_it, nu)
        n1, n2 = noisy(integ_u), noisy(integ_u)
        n3, n4 = noisy(it_u), noisy(it_u)
        terms = {"bpr": bpr((u * pi).sum(1), (u * ni_).sum(1)),
                 "reg1": 0.5 * sq_l2(u, pi, ni_) / bs,
                 "align": sum(moment(explicit[x][tv], explicit[y][tv]) for x, y in pairs) / len(pairs),
                 "bm": nce(integ_u[users], ext_u[users], cfg["bm_temp"]) + nce(integ_i[tv], ext_i[tv], cfg["bm_temp"]),
                 "um": nce(it_u[users], integ_u[users], cfg["um_temp"]) + nce(n1[users], n2[users], cfg["um_temp"]) +
                 nce(n3[users], n4[users], cfg["um_temp"]),
                 "reg2": 0.5 * (it_i[pos] ** 2).sum() / bs}
        assert len(tv) > 1  # both tv terms take part in these tasks
        weights = {"reg1": cfg["reg_weight_1"], "align": cfg["vt_loss"], "bm": cfg["bm_loss"], "um": cfg["um_loss"],
                   "reg2": cfg["reg_weight_2"]}
        return terms["bpr"] + sum(w * terms[n] for n, w in weights.items()), terms

    return oracle


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_gume_loss(n_mod, protocol):
    """The noise of the two noise views is reseeded identically before model and oracle."""
    model, cfg, task, batch = setup("GUME", n_mod, protocol, embedding_size=4, n_ui_layers=2, n_layers=2, knn_k=K,
                                    reg_weight_1=0.5, reg_weight_2=2.0, bm_loss=0.2, bm_temp=0.4, um_loss=0.2,
                                    um_temp=0.3, vt_loss=5.0, noise_scale=0.1, train_batch_size=16)
    move_parameters(model, [f"features.{m}" for m in task.modalities] +
                    [f"ext_user.{m}" for m in task.modalities])
    terms = assert_loss_and_grads(model, batch, gume_oracle(task, cfg, batch),
                                  ("user_embedding", "item_embedding", "ext_user.t"),
                                  before=lambda: torch.manual_seed(3))
    assert_terms_matter(terms, {"reg1": cfg["reg_weight_1"], "align": cfg["vt_loss"], "bm": cfg["bm_loss"],
                                "um": cfg["um_loss"], "reg2": cfg["reg_weight_2"]})
