"""SMORE's training loss and scores against a dense float64 oracle.

The model is built from its registered class and configuration on the hand tasks of
``dense_oracle`` (2 and 3 modalities, masked modalities, both protocols). The oracle recomputes
the loss of one fixed batch from ``model.state_dict()``: kNN graphs from cosines and a top-k per
row, the fusion graph as the entrywise maximum over the union of their entries, the spectral
filters as explicit discrete Fourier sums (no FFT routine), the attention, gates and losses
written out. The dropout of the preference gates is on (rate 0.3); its masks are drawn again from
the same seed in the same order. Loss values agree to rtol 1e-5, gradients to 1e-4, and each
weighted loss term moves the total well beyond that.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dense_oracle import (PROTOCOLS, assert_loss_and_grads, assert_terms_matter, bpr, build, feature, fixed_batch,
                          hand_task, interaction_matrix, joint, knn, lightgcn, linear, move_parameters, nce, params64,
                          sq_l2, sym_norm, without)

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(n, p) for n in (2, 3) for p in PROTOCOLS]
IDS = [f"{n}mod-{p}" for n, p in CASES]
NAMES = {"v": "image", "t": "text", "a": "audio"}
K = {"v": 5, "t": 4, "a": 3}           # a different k per modality: each graph reads its own key
DIM = 8
DROPOUT = 0.3
SEED = 11
SETS = dict(embedding_size=DIM, n_ui_layers=2, n_layers=2, image_knn_k=K["v"], text_knn_k=K["t"],
            audio_knn_k=K["a"], reg_weight=0.5, cl_loss=0.5, cl_temperature=0.3, dropout_rate=DROPOUT,
            train_batch_size=16)


def setup(n_mod, protocol, **sets):
    task = hand_task(n_mod, protocol)
    model, cfg = build("SMORE", task, **{**SETS, **sets})
    # away from initialisation: distinct imputed rows, filters and ID rows of every size
    move_parameters(model, [f"features.{m}" for m in task.modalities] + ["item_embedding"], scale=0.3)
    return model, cfg, task, fixed_batch(task)


# --------------------------------------------------------------------------- the oracle

def item_graphs(task, cfg, train: bool):
    """Modality kNN graphs (missing items isolated before the top-k; new-item training: new items
    isolated too, then their rows and columns removed) and the fusion graph: at each position
    present in any modality graph, the largest of the values present there."""
    mods = task.modalities
    new = task.new_items if (train and task.new_item_mode) else None
    graphs = {}
    for m in mods:
        k = cfg[f"{NAMES[m]}_knn_k"]
        x = feature(task, m)
        if new is None:
            graphs[m] = knn(x, k, before=task.missing[m])
        else:
            graphs[m] = without(knn(x, k, before=task.missing[m] | new), new)
    stacked = torch.stack([torch.where(g != 0, g, torch.full_like(g, -math.inf)) for g in graphs.values()])
    best = stacked.max(0).values
    fusion = torch.where(torch.isinf(best), torch.zeros_like(best), best)
    return graphs, fusion


def dft_filter(x: torch.Tensor, spectrum_weight: torch.Tensor) -> torch.Tensor:
    """Each row x (length d, even) through a frequency-domain filter, written as sums:
    X_k = d^-1/2 Σ_n x_n e^{-2πikn/d} for k = 0..d/2, Y_k = X_k w_k, and back
    y_n = d^-1/2 [Re Y_0 + Re Y_{d/2} (-1)^n + 2 Σ_{0<k<d/2} Re(Y_k e^{2πikn/d})]
    (a real signal's spectrum is Hermitian; the imaginary parts at 0 and d/2 do not exist)."""
    d = x.shape[1]
    n = torch.arange(d, dtype=torch.float64)
    k = torch.arange(d // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * n[None, :] / d                  # (d/2+1) × d
    re = x @ torch.cos(angle).T / math.sqrt(d)
    im = -(x @ torch.sin(angle).T) / math.sqrt(d)
    return inverse_dft(re, im, spectrum_weight, d)


def inverse_dft(re, im, weight, d):
    """The real signal of the half spectrum (re + i im) · w, w = weight[..., 0] + i weight[..., 1]."""
    wr, wi = weight[0, :, 0], weight[0, :, 1]
    yr, yi = re * wr - im * wi, re * wi + im * wr
    n = torch.arange(d, dtype=torch.float64)
    k = torch.arange(d // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * n[None, :] / d
    factor = torch.full((d // 2 + 1, 1), 2.0, dtype=torch.float64)
    factor[0] = factor[-1] = 1.0
    return (yr @ (factor * torch.cos(angle)) - yi @ (factor * torch.sin(angle))) / math.sqrt(d)


def spectrum(x):
    """(re, im) of X_k = d^-1/2 Σ_n x_n e^{-2πikn/d}, k = 0..d/2."""
    d = x.shape[1]
    n = torch.arange(d, dtype=torch.float64)
    k = torch.arange(d // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * n[None, :] / d
    return x @ torch.cos(angle).T / math.sqrt(d), -(x @ torch.sin(angle).T) / math.sqrt(d)


def dropout_masks(shape, count):
    """The masks the model's dropout draws, in its order (each modality, then the fusion)."""
    out = []
    for _ in range(count):
        noise = torch.empty(shape).bernoulli_(1 - DROPOUT).div_(1 - DROPOUT)
        out.append(noise.double())
    return out


def embeddings(task, cfg, p, train: bool):
    """(final (U+I)×d, side view, LightGCN view) of the model's definition."""
    mods, nu = task.modalities, task.n_users
    graphs, fusion = item_graphs(task, cfg, train)
    r_hat = sym_norm(joint(interaction_matrix(task)))[:nu, nu:]
    e_item = p["item_embedding"]

    def view(z, g):
        for _ in range(cfg["n_layers"]):
            z = g @ z
        return torch.cat([r_hat @ z, z])

    projected = {m: linear(p, f"trs.{m}", p[f"features.{m}"]) for m in mods}
    views = {m: view(e_item * torch.sigmoid(linear(p, f"gate.{m}.0", dft_filter(projected[m], p[f"filters.{m}"]))),
                     graphs[m]) for m in mods}
    # fusion: the product of the modality spectra, times the fusion filter
    re, im = spectrum(projected[mods[0]])
    for m in mods[1:]:
        r2, i2 = spectrum(projected[m])
        re, im = re * r2 - im * i2, re * i2 + im * r2
    fused = inverse_dft(re, im, p["fusion_filter"], DIM)
    fusion_view = view(e_item * torch.sigmoid(linear(p, "gate_fusion.0", fused)), fusion)

    adj = sym_norm(joint(interaction_matrix(task)))
    content = lightgcn(adj, torch.cat([p["user_embedding"], e_item]), cfg["n_ui_layers"])
    masks = dropout_masks(content.shape, len(mods) + 1) if train else [1.0] * (len(mods) + 1)
    parts = []
    for j, m in enumerate(mods):
        attention = torch.softmax(linear(p, f"query.{m}.2", torch.tanh(linear(p, f"query.{m}.0", fusion_view))), 1)
        prefer = torch.sigmoid(linear(p, f"prefer.{m}.0", content)) * masks[j]
        parts.append(prefer * attention * views[m])
    parts.append(torch.sigmoid(linear(p, "prefer_fusion.0", content)) * masks[-1] * fusion_view)
    side = sum(parts) / len(parts)
    return content + side, side, content


def smore_oracle(task, cfg, batch):
    """BPR + reg · ½ SqL2(u, i+, i-) / B + cl · (InfoNCE(side, LightGCN) over the batch's
    positives + the same over its users), the final vectors = LightGCN view + side view."""
    nu = task.n_users
    users, pos, neg = batch
    tau = cfg["cl_temperature"]

    def oracle(p):
        final, side, content = embeddings(task, cfg, p, train=True)
        u, pi, ni = final[:nu][users], final[nu:][pos], final[nu:][neg]
        terms = {"bpr": bpr((u * pi).sum(1), (u * ni).sum(1)),
                 "reg": 0.5 * sq_l2(u, pi, ni) / cfg["train_batch_size"],
                 "cl_items": nce(side[nu:][pos], content[nu:][pos], tau),
                 "cl_users": nce(side[:nu][users], content[:nu][users], tau)}
        total = terms["bpr"] + cfg["reg_weight"] * terms["reg"] + \
            cfg["cl_loss"] * (terms["cl_items"] + terms["cl_users"])
        return total, terms

    return oracle


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_smore_loss(n_mod, protocol):
    model, cfg, task, batch = setup(n_mod, protocol)
    terms = assert_loss_and_grads(model, batch, smore_oracle(task, cfg, batch),
                                  ("user_embedding", "item_embedding", "features.t", "filters.v", "fusion_filter",
                                   "query.t.0.weight"),
                                  before=lambda: torch.manual_seed(SEED))
    assert_terms_matter(terms, {"reg": cfg["reg_weight"], "cl_items": cfg["cl_loss"], "cl_users": cfg["cl_loss"]})


@pytest.mark.parametrize("n_mod,protocol", CASES, ids=IDS)
def test_smore_scores(n_mod, protocol):
    """Scoring (no dropout; under ``new_items`` the prediction graphs hold the new items): the
    model's user and item vectors equal the oracle's."""
    model, cfg, task, _ = setup(n_mod, protocol)
    model.eval()
    with torch.no_grad():
        users, items = model.scoring_vectors()
    final, _, _ = embeddings(task, cfg, params64(model), train=False)
    want = final.float()
    assert torch.allclose(users, want[:task.n_users], rtol=1e-5, atol=1e-6)
    assert torch.allclose(items, want[task.n_users:], rtol=1e-5, atol=1e-6)


def test_new_items_start_from_zero_and_are_scored_from_their_feature_neighbours():
    """New items' ID rows start at zero and get no gradient in training (no training graph links to
    them, they are in no batch). At scoring time a new item with an observed modality has a vector
    of its own, gathered from its feature neighbours in the prediction graphs; one missing every
    modality is isolated in every graph and has nothing to be scored from: its vector is zero."""
    task = hand_task(2, "new_items")
    model, cfg = build("SMORE", task, **SETS)
    new = torch.from_numpy(task.new_items)
    assert not model.item_embedding[new].any()
    model.calculate_loss(*fixed_batch(task)).backward()
    assert not model.item_embedding.grad[new].any()
    assert model.item_embedding.grad[~new].any()
    model.eval()
    with torch.no_grad():
        _, items = model.scoring_vectors()
    observed = torch.from_numpy(~np.logical_and.reduce([task.missing[m] for m in task.modalities]))
    scored, blank = items[new & observed], items[new & ~observed]
    assert len(scored) == 3 and len(blank) == 1
    assert (scored.norm(dim=1) > 0).all() and not blank.any()
    assert torch.pdist(scored).min() > 0


def test_fusion_graph_takes_the_largest_value_present():
    """An entry present in one graph keeps its value even when negative (absent is not zero)."""
    from baselines.smore import max_pool_union
    a = sp.csr_matrix(np.array([[0.5, -0.2, 0.0], [0.0, 0.3, 0.0], [0.1, 0.0, 0.0]], dtype=np.float32))
    b = sp.csr_matrix(np.array([[0.4, 0.0, -0.7], [0.0, 0.6, 0.0], [-0.3, 0.0, 0.2]], dtype=np.float32))
    got = max_pool_union([a, b])
    want = np.array([[0.5, -0.2, -0.7], [0.0, 0.6, 0.0], [0.1, 0.0, 0.2]], dtype=np.float32)
    assert np.array_equal(got.toarray(), want)
    assert got.nnz == 6
