"""Training loss and scoring of MMGCF against a dense float64 oracle.

The model is built from its registered class and configuration on the hand tasks of
``dense_oracle`` (2 and 3 modalities, masked modalities, the ``missing`` and ``new_items``
protocols) with every fusion mode and weighting. Its loss on one fixed batch is recomputed from
``model.state_dict()`` with explicit matrices: the symmetric normalised user-item graph, the mean
of the LightGCN layers, each modality's linear projection of its imputed feature table, the
fusion written out per weighting, BPR, and the squared norms of the batch's un-propagated ID rows
over twice the batch length. Loss values agree to rtol 1e-5 and the gradients of the ID tables,
a projection (and the gate) to 1e-4; the regulariser is checked to move the total well beyond
that tolerance.

Randomness: the edge dropping is off (``dropout: 0``) in the loss comparisons; with it on, the
oracle takes the kept edges from the model's training graph and checks that the graph is the
symmetric normalisation of exactly those edges, that the loss uses it and scoring the full
graph, and (separately) that single-edge draws follow the edge weights 1/sqrt(d_u d_i).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dense_oracle import (PROTOCOLS, assert_loss_and_grads, assert_terms_matter, bpr, build, feature, fixed_batch,
                          hand_task, interaction_matrix, joint, lightgcn, linear, move_parameters, params64, sym_norm,
                          unit)

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(n, p) for n in (2, 3) for p in PROTOCOLS]
IDS = [f"{n}mod-{p}" for n, p in CASES]
FUSIONS = ("mean", "sum", "concat")
WEIGHTINGS = ("equal", "alpha", "normalized")
SIZES = dict(embedding_size=4, feat_embed_dim=4, n_ui_layers=2, reg_weight=0.5)


def setup(n_mod, protocol, **sets):
    task = hand_task(n_mod, protocol)
    model, cfg = build("MMGCF", task, **{**SIZES, **sets})
    extra = [k for k in ("mm_alpha", "all_concat.weight", "mm_concat.weight", "id_mm_concat.weight")
             if k in dict(model.named_parameters())]
    # away from initialisation: the gate off 1/2 (so that the ID and modality sides differ) and
    # the concatenation layers off PyTorch's default scale
    move_parameters(model, ["item_embedding"] + extra, scale=0.3)
    return model, cfg, task, fixed_batch(task)


def fused_items(p, task, cfg, ids, zero_new=False):
    """Item vectors from the propagated ID rows ``ids`` (every item) and the modality projections."""
    mods = list(task.modalities)
    feats = [linear(p, f"trs.{m}", feature(task, m)) for m in mods]
    if zero_new:
        ids = ids * torch.from_numpy(~task.new_items).double()[:, None]

    def combine(vectors, layer):
        if cfg["fusion_mode"] == "mean":
            return sum(vectors) / len(vectors)
        if cfg["fusion_mode"] == "sum":
            return sum(vectors)
        return linear(p, layer, torch.cat(vectors, dim=1))

    if cfg["weighting"] == "alpha":
        g = torch.sigmoid(p["mm_alpha"])
        return combine([g * ids] + [(1 - g) * f for f in feats], "all_concat")
    if cfg["weighting"] == "normalized":
        return combine([len(mods) * unit(ids)] + [unit(f) for f in feats], "all_concat")
    mm = combine(feats, "mm_concat") if len(mods) > 1 else feats[0]
    return combine([ids, mm], "id_mm_concat")


def propagate(p, task, cfg, adj):
    out = lightgcn(adj, torch.cat([p["user_embedding"], p["item_embedding"]]), cfg["n_ui_layers"])
    return out[:task.n_users], out[task.n_users:]


def mmgcf_oracle(task, cfg, batch, adj=None, zero_new=False):
    """BPR on (LightGCN user, fused item) vectors over ``adj`` (default: the full normalised graph)
    + reg_weight · (‖E_u[users]‖² + ‖E_i[pos]‖² + ‖E_i[neg]‖²) / (2 · batch length)."""
    adj = sym_norm(joint(interaction_matrix(task))) if adj is None else adj
    users, pos, neg = batch

    def oracle(p):
        u_all, i_ids = propagate(p, task, cfg, adj)
        i_all = fused_items(p, task, cfg, i_ids, zero_new)
        u = u_all[users]
        terms = {"bpr": bpr((u * i_all[pos]).sum(1), (u * i_all[neg]).sum(1)),
                 "reg": ((p["user_embedding"][users] ** 2).sum() + (p["item_embedding"][pos] ** 2).sum()
                         + (p["item_embedding"][neg] ** 2).sum()) / (2 * len(users))}
        return terms["bpr"] + cfg["reg_weight"] * terms["reg"], terms

    return oracle


def grad_keys(model):
    names = dict(model.named_parameters())
    return ("user_embedding", "item_embedding", "trs.v.weight") + tuple(k for k in ("mm_alpha",) if k in names)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_mmgcf_loss(n_mod, protocol, fusion, weighting):
    model, cfg, task, batch = setup(n_mod, protocol, fusion_mode=fusion, weighting=weighting, dropout=0.0)
    model.pre_epoch(0)
    terms = assert_loss_and_grads(model, batch, mmgcf_oracle(task, cfg, batch), grad_keys(model))
    assert_terms_matter(terms, {"reg": cfg["reg_weight"]})


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_mmgcf_dropped_graph_in_training_full_graph_in_scoring(n_mod, protocol):
    """dropout 0.5: the training graph is D^-1/2 A D^-1/2 of the kept edges only (degrees counted
    on them), half of the training edges kept, both directions; the loss uses it; the scoring
    vectors use the full graph; the next epoch draws another graph."""
    model, cfg, task, batch = setup(n_mod, protocol, fusion_mode="concat", weighting="alpha", dropout=0.5)
    torch.manual_seed(3)
    model.pre_epoch(0)
    dense = model.train_adj.to_dense().double()
    nu = task.n_users
    kept = (dense[:nu, nu:] != 0).double()
    r = interaction_matrix(task)
    assert torch.equal((dense != 0).double(), joint(kept)), "the training graph is not symmetric over user-item edges"
    assert int(kept.sum()) == int(int(r.sum()) * 0.5)
    assert bool((kept <= r).all()), "a kept edge is not a training edge"
    adj = sym_norm(joint(kept))
    torch.testing.assert_close(dense, adj, rtol=1e-6, atol=1e-7)
    assert_loss_and_grads(model, batch, mmgcf_oracle(task, cfg, batch, adj), grad_keys(model))

    p = params64(model)
    u_want, i_ids = propagate(p, task, cfg, sym_norm(joint(r)))
    with torch.no_grad():
        u_got, i_got = model.scoring_vectors()
    torch.testing.assert_close(u_got.double(), u_want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(i_got.double(), fused_items(p, task, cfg, i_ids), rtol=1e-5, atol=1e-6)

    model.pre_epoch(1)
    assert not torch.equal(model.train_adj.to_dense().double(), dense), "the next epoch kept the same edges"


def test_mmgcf_edges_kept_in_proportion_to_their_normalised_weight():
    """One edge kept per draw: it is edge e with probability w_e / Σ w, w_e = 1/sqrt(d_u d_i)."""
    task = hand_task(2, "missing")
    r = interaction_matrix(task)
    n_edges = int(r.sum())
    model, _ = build("MMGCF", task, **SIZES, fusion_mode="mean", weighting="equal", dropout=1.0 - 1.5 / n_edges)
    nu = task.n_users
    w = r / torch.sqrt(r.sum(1, keepdim=True) * r.sum(0, keepdim=True)).clamp_min(1e-12)
    want = (w / w.sum()).flatten()
    torch.manual_seed(11)
    counts = torch.zeros_like(want)
    draws = 3000
    for epoch in range(draws):
        model.pre_epoch(epoch)
        kept = model.train_adj.to_dense()[:nu, nu:] != 0
        assert int(kept.sum()) == 1
        counts += kept.double().flatten()
    freq = counts / draws
    bound = 4.5 * torch.sqrt(want * (1 - want) / draws) + 1e-12
    assert bool(((freq - want).abs() <= bound).all()), float(((freq - want).abs() / bound).max())
    # The share of draws that fall on the heavier half of the edges tells the laws apart: it
    # matches the weighted law and is far from the uniform one.
    heavy = want > want[want > 0].median()
    sigma = float(torch.sqrt(want[heavy].sum() * (1 - want[heavy].sum()) / draws))
    assert abs(float(freq[heavy].sum() - want[heavy].sum())) <= 4.5 * sigma
    assert abs(float(heavy.sum()) / n_edges - float(want[heavy].sum())) > 9 * sigma


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("n_mod", (2, 3))
@pytest.mark.parametrize("fix", (False, True))
def test_mmgcf_new_item_scores(n_mod, fix, weighting):
    """Under new_items a new item's vector is the fusion of its LightGCN row (its untrained ID row
    / (L+1): it has no edge) with its features; fix_new_item_ids fuses a zero ID vector instead,
    and leaves the training loss unchanged (new items are never in a batch)."""
    model, cfg, task, batch = setup(n_mod, "new_items", fusion_mode="mean", weighting=weighting, dropout=0.0,
                                    fix_new_item_ids=fix)
    model.pre_epoch(0)
    assert_loss_and_grads(model, batch, mmgcf_oracle(task, cfg, batch, zero_new=fix), grad_keys(model))
    p = params64(model)
    _, i_ids = propagate(p, task, cfg, sym_norm(joint(interaction_matrix(task))))
    new = torch.from_numpy(task.new_items)
    torch.testing.assert_close(i_ids[new], p["item_embedding"][new] / (cfg["n_ui_layers"] + 1))
    with torch.no_grad():
        _, items = model.scoring_vectors()
    want = fused_items(p, task, cfg, i_ids, zero_new=fix)
    torch.testing.assert_close(items.double(), want, rtol=1e-5, atol=1e-6)
    if fix:  # the new items' vectors depend on their features only
        torch.testing.assert_close(want[new], fused_items(p, task, cfg, torch.zeros_like(i_ids))[new])


def test_mmgcf_refuses_mismatched_widths_and_unknown_modes():
    task = hand_task(2, "missing")
    with pytest.raises(ValueError, match="feat_embed_dim"):
        build("MMGCF", task, embedding_size=4, feat_embed_dim=3, fusion_mode="mean", weighting="equal")
    build("MMGCF", task, embedding_size=4, feat_embed_dim=3, fusion_mode="concat", weighting="equal")
    with pytest.raises(ValueError, match="fusion_mode"):
        build("MMGCF", task, **SIZES, fusion_mode="prod", weighting="equal")
    with pytest.raises(ValueError, match="weighting"):
        build("MMGCF", task, **SIZES, fusion_mode="mean", weighting="learned")
