"""FREEDOM's training loss, scores and pruned graph against dense float64 oracles.

The registered model on the hand tasks of ``dense_oracle`` (2 and 3 modalities, masked
modalities, ``missing`` and ``new_items``), one fixed batch, the loss recomputed from
``model.state_dict()`` with explicit matrices:

* item graph: per modality the cosine similarities, the k largest of each row (the item itself
  included) as a 0/1 pattern, scaled (r_i r_j)^{-1/2} by the entries per row r (+1e-7); missing
  items isolated before the ranking (they keep only a self-loop and nobody picks them), after it,
  or not at all; the graphs summed with weight w for the image and (1 - w) shared equally by the
  other modalities;
* user-item graph: D^{-1/2} A D^{-1/2} of the training pairs (+1e-7), or of the pruned pairs with
  degrees counted on what is kept;
* loss: BPR(u, i⁺, i⁻) on u = LightGCN users, i = LightGCN items + G^L E_item, plus reg_weight ·
  Σ_m BPR(u, W_m x_m⁺ + b_m, W_m x_m⁻ + b_m) on the trainable raw features.

Edge pruning is random: with dropout 0 no edge is pruned; with dropout > 0 the oracle reads which
edges the model kept and recomputes the graph from them, and the law of the draw is checked on
its own. Loss values agree to rtol 1e-5 and the gradients to 1e-4; every weighted term moves the
total well beyond that tolerance.
"""
from __future__ import annotations

import pytest
import torch

from dense_oracle import (PROTOCOLS, assert_loss_and_grads, assert_terms_matter, bpr, build, cosine, feature,
                          fixed_batch, hand_task, interaction_matrix, joint, lightgcn, linear, move_parameters,
                          self_loops_only, sym_norm, topk_mask)

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(n, p) for n in (2, 3) for p in PROTOCOLS]
IDS = [f"{n}mod-{p}" for n, p in CASES]
SMALL = dict(embedding_size=4, feat_embed_dim=4, knn_k=5, n_ui_layers=2, n_mm_layers=2, mm_image_weight=0.3,
             reg_weight=0.5, dropout=0.0)
GRADS = ("user_embedding", "item_embedding", "features.v", "trs.t.weight")


def hub_task(n_mod: int):
    """A hand task whose items missing the image share a row close to item 0's (x_0 + δ): item 0 and
    its neighbours rank them at the top, so isolating them before or after the ranking differs."""
    task = hand_task(n_mod, "missing")
    x = task.features["v"]
    delta = torch.linspace(-0.2, 0.2, x.shape[1])
    x[torch.from_numpy(task.missing["v"])] = x[0] + delta
    return task


def setup(n_mod, protocol, task=None, **sets):
    task = task or hand_task(n_mod, protocol)
    model, cfg = build("FREEDOM", task, **{**SMALL, **sets})
    move_parameters(model, [f"features.{m}" for m in task.modalities] + [f"trs.{m}.weight" for m in task.modalities])
    return model, cfg, task, fixed_batch(task)


# --------------------------------------------------------------------------- the oracle

def binary_knn(x, k, missing, isolation):
    """0/1 top-k cosine pattern (zero similarities carry no link), rows scaled as described above.
    Isolated after the ranking, missing items are interchangeable in it: whichever ties are kept,
    they are cut."""
    s = cosine(x)
    if isolation == "before" and missing.any():
        s = self_loops_only(s, missing)
    twins = None
    if isolation == "after":
        flags = torch.from_numpy(missing)
        twins = flags[:, None] & flags[None, :]
    pattern = (topk_mask(s, k, twins) & (s != 0)).double()
    if isolation == "after" and missing.any():
        pattern = self_loops_only(pattern, missing)
    r = (pattern.sum(1) + 1e-7).pow(-0.5)
    return r[:, None] * pattern * r[None, :]


def item_graph(task, cfg):
    mods = list(task.modalities)
    w = cfg["mm_image_weight"]
    share = {"v": w, **{m: (1 - w) / (len(mods) - 1) for m in mods if m != "v"}}
    return sum(share[m] * binary_knn(feature(task, m), cfg["knn_k"], task.missing[m], cfg["isolate_missing"])
               for m in mods)


def pruned_adjacency(r_kept):
    """D^{-1/2} A D^{-1/2} of the kept pairs, degrees counted on them."""
    return sym_norm(joint(r_kept))


def representations(p, task, cfg, adj, graph):
    nu = task.n_users
    e = lightgcn(adj, torch.cat([p["user_embedding"], p["item_embedding"]]), cfg["n_ui_layers"])
    h = p["item_embedding"]
    for _ in range(cfg["n_mm_layers"]):
        h = graph @ h
    return e[:nu], e[nu:] + h


def freedom_oracle(task, cfg, batch, r_kept=None):
    users, pos, neg = batch
    adj = pruned_adjacency(interaction_matrix(task) if r_kept is None else r_kept)
    graph = item_graph(task, cfg)

    def oracle(p):
        u_all, i_all = representations(p, task, cfg, adj, graph)
        u = u_all[users]
        terms = {"bpr": bpr((u * i_all[pos]).sum(1), (u * i_all[neg]).sum(1))}
        for m in task.modalities:
            f = linear(p, f"trs.{m}", p[f"features.{m}"])
            terms[f"feat_{m}"] = bpr((u * f[pos]).sum(1), (u * f[neg]).sum(1))
        total = terms["bpr"] + cfg["reg_weight"] * sum(terms[f"feat_{m}"] for m in task.modalities)
        return total, terms

    return oracle


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_freedom_loss_on_the_full_graph(n_mod, protocol):
    """dropout 0: training propagates on the whole user-item graph."""
    model, cfg, task, batch = setup(n_mod, protocol)
    model.pre_epoch(0)
    terms = assert_loss_and_grads(model, batch, freedom_oracle(task, cfg, batch), GRADS)
    assert_terms_matter(terms, {f"feat_{m}": cfg["reg_weight"] for m in task.modalities})


@pytest.mark.parametrize("isolation", ["before", "after"])
@pytest.mark.parametrize("n_mod", [2, 3])
def test_freedom_loss_when_imputed_rows_rank_high(n_mod, isolation):
    model, cfg, task, batch = setup(n_mod, "missing", task=hub_task(n_mod), isolate_missing=isolation)
    model.pre_epoch(0)
    assert_loss_and_grads(model, batch, freedom_oracle(task, cfg, batch), GRADS)


@pytest.mark.parametrize("n_mod", [2, 3])
def test_freedom_loss_without_isolation(n_mod):
    """isolate_missing none: the identical imputed rows are ranked like the others (each other's
    nearest neighbours)."""
    model, cfg, task, batch = setup(n_mod, "missing", isolate_missing="none")
    model.pre_epoch(0)
    assert_loss_and_grads(model, batch, freedom_oracle(task, cfg, batch), GRADS)


@pytest.mark.parametrize("n_mod", [2, 3])
def test_isolation_changes_the_item_graph(n_mod):
    """Each isolation gives another item graph (so the comparisons above would see one used in
    place of another): before/after on the hub task, before/none on the hand task."""
    hub, plain = hub_task(n_mod), hand_task(n_mod, "missing")
    assert (item_graph(hub, dict(SMALL, isolate_missing="before"))
            - item_graph(hub, dict(SMALL, isolate_missing="after"))).abs().max() > 1e-3
    assert (item_graph(plain, dict(SMALL, isolate_missing="before"))
            - item_graph(plain, dict(SMALL, isolate_missing="none"))).abs().max() > 1e-3


def kept_pairs(model, task) -> torch.Tensor:
    """The user x item 0/1 matrix of the edges in the model's pruned graph of this epoch."""
    dense = model.train_adj.to_dense().double()
    nu = task.n_users
    block = (dense[:nu, nu:] != 0).double()
    assert torch.equal(block, (dense[nu:, :nu] != 0).double().T), "the pruned graph is not symmetric"
    assert not dense[:nu, :nu].any() and not dense[nu:, nu:].any()
    return block


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_freedom_loss_on_the_pruned_graph(n_mod, protocol):
    """dropout 0.6: int(E · 0.4) training pairs kept, the loss propagates on their own normalised graph."""
    model, cfg, task, batch = setup(n_mod, protocol, dropout=0.6)
    torch.manual_seed(3)
    model.pre_epoch(0)
    kept = kept_pairs(model, task)
    full = interaction_matrix(task)
    assert int(kept.sum()) == int(int(full.sum()) * (1. - 0.6))
    assert not (kept * (1 - full)).any(), "a kept edge is not a training pair"
    terms = assert_loss_and_grads(model, batch, freedom_oracle(task, cfg, batch, r_kept=kept), GRADS)
    assert_terms_matter(terms, {f"feat_{m}": cfg["reg_weight"] for m in task.modalities})
    # a new epoch draws another graph
    model.pre_epoch(1)
    assert not torch.equal(kept_pairs(model, task), kept)


def test_pruning_keeps_edges_in_proportion_to_inverse_root_degrees():
    """A dropout that keeps one edge: the model's draw is edge (u, i) with probability
    (d_u d_i)^{-1/2} / Σ over all edges, so edges between popular users and items are pruned first.
    4000 seeded draws: Pearson's χ² against that law stays far below 100 (E - 1 ≈ 45 degrees of
    freedom, so 100 is about six standard deviations above the mean), and against a uniform law
    it is far above."""
    task = hand_task(2, "missing")
    full = interaction_matrix(task)
    n_edges = int(full.sum())
    model, _, _, _ = setup(2, "missing", task=task, dropout=1 - 1.5 / n_edges)
    assert model.keep == 1
    du, di = full.sum(1), full.sum(0)
    weight = full * (du[:, None] * di[None, :]).clamp(min=1).rsqrt()
    law = weight / weight.sum()
    counts = torch.zeros_like(full)
    torch.manual_seed(11)
    draws = 4000
    for epoch in range(draws):
        model.pre_epoch(epoch)
        counts += kept_pairs(model, task)
    edges = full > 0

    def chi2(p):
        return float(((counts - draws * p) ** 2 / (draws * p))[edges].sum())

    assert chi2(law) < 100
    assert chi2(full / n_edges) > 100


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_freedom_scores_use_the_full_graph(n_mod, protocol):
    """Scores: LightGCN on the whole user-item graph (never the pruned one) plus the item-graph
    term; under new_items, new items (no training pair) are scored through their feature neighbours."""
    model, cfg, task, _ = setup(n_mod, protocol, dropout=0.6)
    model.pre_epoch(0)
    p = {k: v.detach().double() for k, v in model.state_dict().items()}
    u_want, i_want = representations(p, task, cfg, sym_norm(joint(interaction_matrix(task))), item_graph(task, cfg))
    with torch.no_grad():
        u, i = model.scoring_vectors()
    assert torch.allclose(u.double() @ i.double().T, u_want @ i_want.T, rtol=1e-5, atol=1e-7)
    if protocol == "new_items":
        new = torch.from_numpy(task.new_items)
        own = p["item_embedding"][new] / (cfg["n_ui_layers"] + 1)   # what the user-item graph gives them
        assert (i_want[new] - own).abs().max() > 1e-3                # the rest comes from the item graph


def test_feature_dim_must_match_the_embedding():
    task = hand_task(2, "missing")
    with pytest.raises(ValueError, match="feat_embed_dim"):
        build("FREEDOM", task, **{**SMALL, "feat_embed_dim": 3})


def test_unknown_isolation_is_refused():
    task = hand_task(2, "missing")
    with pytest.raises(ValueError, match="isolate_missing"):
        build("FREEDOM", task, **{**SMALL, "isolate_missing": "sideways"})
