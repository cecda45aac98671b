"""Training loss and scoring vectors of PGL against a dense float64 oracle.

The registered model is built on the hand tasks of ``dense_oracle`` (2 and 3 modalities, masked
modalities, ``missing`` and ``new_items``); one fixed batch goes through ``calculate_loss`` and the
loss is recomputed from ``model.state_dict()`` with explicit matrices written from the model's
definition:

* item graph G = Σ_m w_m B̂_m, B_m the binary top-k pattern of the cosine similarities of modality
  m (items missing m isolated before the ranking: a self-loop only), B̂ = D^-1/2 B D^-1/2 with D
  the row counts + 1e-7; w_v = mm_image_weight, the other modalities share the rest equally;
* items Z = [normalize(X_m W_mᵀ + b_m)]_m from the trainable features, users [E_m]_m;
* training graph: ``local``, the edges kept by the epoch's sample (each edge an Exp(1)/w key,
  w = (d_u d_i)^-1/2, the smallest keys kept; the generator reseeded identically before model
  and oracle), re-normalised on their own degrees; ``global``, the low-rank graph written as the
  reference computes it: the dense SVD of the whole normalised graph Â, components i < K = R/4
  weighted s_i · s_{R-K+i}, entries below 1e-3 dropped;
* u, i = LightGCN over the training graph, i + G^L Z;
* loss = BPR + reg_weight · ½ [InfoNCE(drop(u), drop(u)) + InfoNCE(drop(i⁺), drop(i⁺))] at temperature τ,
  the dropout masks drawn in the model's order after the same reseed.

Loss values agree to rtol 1e-5 and gradients (user tables, raw features, projections) to 1e-4;
each weighted term moves the total well beyond that tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dense_oracle import (PROTOCOLS, assert_loss_and_grads, assert_terms_matter, bpr, build, cosine, fixed_batch,
                          hand_task, interaction_matrix, joint, lightgcn, linear, move_parameters, nce, self_loops_only,
                          sym_norm, topk_mask, unit)

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(n, p) for n in (2, 3) for p in PROTOCOLS]
IDS = [f"{n}mod-{p}" for n, p in CASES]
D = 8                      # embedding_size: also the SVD rank of the global mode (K = 2 components)
SETS = dict(embedding_size=D, knn_k=5, n_ui_layers=2, n_mm_layers=2, mm_image_weight=0.3, reg_weight=0.5,
            temperature=0.3)
GRADS = ("user_embedding.v", "user_embedding.t", "features.v", "proj.t.weight")


def setup(n_mod, protocol, **sets):
    task = hand_task(n_mod, protocol)
    model, cfg = build("PGL", task, **dict(SETS, **sets))
    move_parameters(model, [f"features.{m}" for m in task.modalities])
    return model, cfg, task, fixed_batch(task)


# --------------------------------------------------------------------------- dense graphs

def binary_norm(pattern: torch.Tensor) -> torch.Tensor:
    b = pattern.double()
    d = (b.sum(1) + 1e-7).pow(-0.5)
    return d[:, None] * b * d[None, :]


def item_graph(task, k, image_weight):
    mods = task.modalities
    rest = (1 - image_weight) / (len(mods) - 1)
    g = 0.0
    for m in mods:
        s = self_loops_only(cosine(task.features[m].double()), task.missing[m])
        g = g + (image_weight if m == "v" else rest) * binary_norm(topk_mask(s, k) & (s != 0))
    return g


def edge_list(task):
    """Distinct training edges, user-major then item."""
    pairs = sorted(set(zip(task.train_users.tolist(), task.train_items.tolist())))
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def sampled_graph(task, keep_ratio, seed):
    """Â of the edges a weighted sample without replacement keeps (the model's rule, same draw)."""
    u, i = edge_list(task)
    r = interaction_matrix(task)
    w = (r.sum(1)[u] + 1e-7).pow(-0.5) * (r.sum(0)[i] + 1e-7).pow(-0.5)
    torch.manual_seed(seed)
    keys = -torch.log(1 - torch.rand(len(u)).double()) / w
    kept = torch.argsort(keys)[:int(len(u) * keep_ratio)]
    rs = torch.zeros_like(r)
    rs[u[kept], i[kept]] = 1.0
    return sym_norm(joint(rs))


def principal_graph(task, rank):
    a = sym_norm(joint(interaction_matrix(task)))
    u, s, vt = torch.linalg.svd(a)
    k = int(0.25 * rank)
    # Within a repeated singular value the components are not unique; the product is, as long as
    # a repeated pair is not split by the cut at k (true of a connected bipartite graph, whose
    # singular values come in equal pairs).
    assert float((s[k - 1] - s[k]).abs()) > 1e-6 and float((s[rank - k - 1] - s[rank - k]).abs()) > 1e-6
    g = (u[:, :k] * (s[:k] * s[rank - k:rank])) @ vt[:k]
    return torch.where(g.abs() >= 1e-3, g, torch.zeros_like(g))


# --------------------------------------------------------------------------- the oracle

def vectors(p, task, cfg, adj, g_items):
    mods = task.modalities
    items = torch.cat([unit(linear(p, f"proj.{m}", p[f"features.{m}"])) for m in mods], 1)
    users = torch.cat([p[f"user_embedding.{m}"] for m in mods], 1)
    h = items
    for _ in range(cfg["n_mm_layers"]):
        h = g_items @ h
    e = lightgcn(adj, torch.cat([users, items]), cfg["n_ui_layers"])
    return e[:task.n_users], e[task.n_users:] + h


def pgl_oracle(task, cfg, batch, adj):
    g_items = item_graph(task, cfg["knn_k"], cfg["mm_image_weight"])
    users, pos, neg = batch
    rate, tau = cfg["dropout"], cfg["temperature"]

    def oracle(p):
        u_all, i_all = vectors(p, task, cfg, adj, g_items)
        u, pi, ni = u_all[users], i_all[pos], i_all[neg]
        # dropout masks in the model's order (users twice, then positives twice); the 1/(1-p)
        # scale leaves cosines unchanged
        masks = [torch.empty(x.shape).bernoulli_(1 - rate).double() for x in (u, u, pi, pi)] if rate else [1.0] * 4
        terms = {"bpr": bpr((u * pi).sum(1), (u * ni).sum(1)),
                 "cl_users": nce(u * masks[0], u * masks[1], tau),
                 "cl_items": nce(pi * masks[2], pi * masks[3], tau)}
        w = cfg["reg_weight"] / 2
        return terms["bpr"] + w * (terms["cl_users"] + terms["cl_items"]), terms

    return oracle


def check(model, cfg, task, batch, adj, dropout_seed=None):
    before = (lambda: torch.manual_seed(dropout_seed)) if dropout_seed is not None else None
    terms = assert_loss_and_grads(model, batch, pgl_oracle(task, cfg, batch, adj), GRADS, before=before)
    w = cfg["reg_weight"] / 2
    assert_terms_matter(terms, {"cl_users": w, "cl_items": w})


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_pgl_loss_local_every_edge(n_mod, protocol):
    """Local mode keeping every edge (the whole normalised graph), no dropout: deterministic."""
    model, cfg, task, batch = setup(n_mod, protocol, mode="local", edge_keep_ratio=1.0, dropout=0.0)
    model.pre_epoch(0)
    check(model, cfg, task, batch, sym_norm(joint(interaction_matrix(task))))


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_pgl_loss_local_sampled_with_dropout(n_mod, protocol):
    """Local mode with half the edges and dropout 0.3, both draws reseeded identically."""
    model, cfg, task, batch = setup(n_mod, protocol, mode="local", edge_keep_ratio=0.5, dropout=0.3)
    torch.manual_seed(11)
    model.pre_epoch(0)
    check(model, cfg, task, batch, sampled_graph(task, 0.5, 11), dropout_seed=3)
    # the next epoch draws another sample
    torch.manual_seed(12)
    model.pre_epoch(1)
    check(model, cfg, task, batch, sampled_graph(task, 0.5, 12), dropout_seed=3)


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_pgl_loss_global(n_mod, protocol):
    """Global mode: the fixed low-rank principal graph; no dropout."""
    model, cfg, task, batch = setup(n_mod, protocol, mode="global", dropout=0.0)
    model.pre_epoch(0)
    check(model, cfg, task, batch, principal_graph(task, D))


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_pgl_scores_on_the_whole_graph(n_mod, protocol):
    """Scoring uses the whole normalised graph, whatever graph training used; new items (no edges)
    are scored from their features: layer 0 / (L+1) plus their kNN neighbourhood."""
    model, cfg, task, _ = setup(n_mod, protocol, mode="local", edge_keep_ratio=0.5)
    model.pre_epoch(0)
    model.eval()
    with torch.no_grad():
        u, i = model.scoring_vectors()
    p = {k: v.double() for k, v in model.state_dict().items()}
    want_u, want_i = vectors(p, task, cfg, sym_norm(joint(interaction_matrix(task))),
                             item_graph(task, cfg["knn_k"], cfg["mm_image_weight"]))
    assert torch.allclose(u.double(), want_u, rtol=1e-5, atol=1e-6)
    assert torch.allclose(i.double(), want_i, rtol=1e-5, atol=1e-6)
    if task.new_item_mode:
        new = torch.from_numpy(task.new_items)
        scores = u @ i.T
        assert scores[:, new].abs().min() > 0 and scores[:, new].std() > 0


def test_pgl_three_modalities_share_the_rest_of_the_image_weight():
    """With audio, text and audio share 1 - mm_image_weight equally; with two modalities text gets it all."""
    from baselines.pgl import modality_weights
    from data_prep.modalities import Modalities
    assert modality_weights(Modalities("vt"), 0.1) == {"v": 0.1, "t": 0.9}
    w = modality_weights(Modalities("vta"), 0.1)
    assert w["v"] == 0.1 and w["t"] == w["a"] == pytest.approx(0.45)


def test_pgl_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        setup(2, "missing", mode="both")


def test_pgl_missing_items_leave_the_neighbour_lists_of_the_others():
    """An observed item whose image feature sits next to the imputed rows would rank the masked
    items first: isolated before the ranking, they leave its list and it keeps k present
    neighbours (after the ranking it would keep fewer; without isolation it would keep them)."""
    task = hand_task(2, "missing")
    miss = torch.from_numpy(task.missing["v"])
    filler = task.features["v"][miss][0]
    j = int(torch.nonzero(~miss)[0])
    task.features["v"][j] = filler + 0.01 * torch.randn(filler.shape, generator=torch.Generator().manual_seed(0))
    s = cosine(task.features["v"].double())
    assert bool((s[j, miss] > s[j, ~miss].sort(descending=True).values[1]).all())  # they would outrank the rest
    model, cfg = build("PGL", task, **SETS)
    want = item_graph(task, cfg["knn_k"], cfg["mm_image_weight"])
    assert torch.allclose(model.mm_adj[0].to_dense().double(), want, atol=1e-7)
    assert int((want[j] != 0).sum()) >= cfg["knn_k"]


def test_pgl_principal_graph_drops_small_entries():
    """The global graph of a larger connected random graph against the dense SVD of the whole
    normalised graph: components i < R/4 weighted s_i · s_{R-R/4+i}, |entries| < 1e-3 dropped."""
    from types import SimpleNamespace

    from baselines.pgl import principal_graph as model_principal_graph
    rng = np.random.default_rng(3)
    n_users, n_items = 60, 40
    pairs = {(u, u % n_items) for u in range(n_users)} | {(u, (u + 1) % n_items) for u in range(n_users)}
    pairs |= {(int(rng.integers(n_users)), int(rng.integers(n_items))) for _ in range(150)}
    users, items = (np.array(x) for x in zip(*sorted(pairs)))
    task = SimpleNamespace(n_users=n_users, n_items=n_items, train_users=users, train_items=items,
                           cached=lambda kind, params, inputs, build: build())
    want = principal_graph(task, 16)
    got = torch.from_numpy(model_principal_graph(task, 16).toarray()).double()
    assert torch.allclose(got, want, atol=1e-6)
    # the threshold is exercised: some entries of the low-rank product are dropped, others kept
    a = sym_norm(joint(interaction_matrix(task)))
    u, s, vt = torch.linalg.svd(a)
    raw = (u[:, :4] * (s[:4] * s[12:16])) @ vt[:4]
    assert int(((raw.abs() < 1e-3) & (raw.abs() > 1e-5)).sum()) > 100 and int((want != 0).sum()) > 100
