"""DRAGON: dyadic relations enhanced by homogeneous graphs (Zhou, Zhou, Shen, ECAI 2023).

Per modality, a two-layer graph network on the user-item graph turns a user preference table and
projected item features into representations; users concatenate theirs weighted by learned
per-user modality weights, items concatenate theirs. Items then add one pass over a fixed
feature kNN item graph (a weighted mix of the modalities' binary kNN graphs), users the weighted
sum of their co-occurrence neighbours (the users sharing most training items, re-sampled every
epoch). Missing modalities: imputed features, and the masked items of a modality isolated
before the top-k of its item graph. Details, options and the reference defects it can fix:
docs/models/DRAGON.md.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.item_item import cooccurrence_graph
from models.graphs.knn import built_on, knn_graph
from models.graphs.sparse import sparse_with_transpose, spmm_t, sym_normalize
from models.graphs.user_item import ui_adjacency
from models.layers import xavier_normal
from models.losses import bpr_loss
from models.registry import register

USER_LIST_CAP = 200  # the reference keeps at most this many co-occurrence neighbours per user
MLP_WIDTH = 4        # the hidden layer of each modality's projection is 4 × the latent width


# --------------------------------------------------------------------------- graphs

def item_knn_graph(task, modality: str, k: int) -> sp.csr_matrix:
    """The binary top-k cosine graph of a modality's features, D^-1/2 A D^-1/2 with D the row
    counts (+1e-7), cached by content.

    Row i holds its ``k`` most similar items (itself included), each with weight 1: with k
    entries in every row each weight is 1/k, a mean over the neighbours. The modality's masked
    items are isolated before the ranking (a self-loop only; the others choose among the
    observed items), so the identical imputed rows never become each other's neighbours.
    """
    x = task.features[modality].detach()
    missing = task.missing.get(modality)

    def build():
        g = knn_graph(x, k, isolate_before=missing, normalize=False)
        g.data[:] = 1.0
        return sym_normalize(g, eps=1e-7)

    return task.cached("knn_binary", {"modality": modality, "k": int(k), "mask": "before", **built_on(x)},
                       (f"features:{modality}", "missing"), build)


def mixed_item_graph(task, k: int, image_weight: float) -> sp.csr_matrix:
    """Σ_m w_m G_m over the modalities: the image graph weighs ``image_weight``, the other
    modalities share the rest equally (text alone with two modalities, text and audio with three)."""
    mods = Modalities(task.modalities)
    others = [m for m in mods if m != "v"]
    rest = 1.0 - image_weight if "v" in mods and others else 1.0
    weights = {m: (rest / len(others) if m in others else (image_weight if others else 1.0)) for m in mods}
    total = None
    for m in mods:
        g = weights[m] * item_knn_graph(task, m, k)
        total = g if total is None else total + g
    return sp.csr_matrix(total)


def user_cooccurrence(task, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every user's co-occurrence neighbours from the training interactions, cached by content.

    The weight of users (u, v), v ≠ u, is the number of distinct items both have a training row
    with. Each user keeps its ``min(k, 200)`` heaviest neighbours, ties to the smaller user id.
    Returns (neighbours U×k, their counts U×k, how many are real per user); slots past a user's
    count hold user 0 with count 0.
    """
    kept = min(int(k), USER_LIST_CAP)

    def build():
        # the items play the "users" of the co-occurrence count: users co-occur through items
        c = cooccurrence_graph(task.n_users, task.train_items, task.train_users, min_common=1, topk=kept,
                               n_users=task.n_items)
        rows = np.repeat(np.arange(task.n_users), np.diff(c.indptr))
        order = np.lexsort((c.indices, -c.data, rows))          # heaviest first, ties to the smaller id
        slot = np.arange(len(order)) - c.indptr[rows[order]]
        neighbours = np.zeros((task.n_users, k), dtype=np.int64)
        counts = np.zeros((task.n_users, k), dtype=np.float32)
        neighbours[rows[order], slot] = c.indices[order]
        counts[rows[order], slot] = c.data[order]
        return neighbours, counts, np.diff(c.indptr).astype(np.int64)

    return task.cached("user_cooccurrence", {"k": int(k), "cap": USER_LIST_CAP}, ("train",), build)


def sample_user_graph(neighbours: torch.Tensor, counts: torch.Tensor, length: torch.Tensor):
    """One epoch's k neighbours per user and their weights (the reference's sampling).

    A user with at least k neighbours keeps them. A user with 0 < n < k fills slot p = n..k-1 with
    a copy of slot ⌊U·p⌋, U uniform: each new slot copies a uniform draw from the list as it
    stands, earlier copies included. Weights are the softmax of the slots' counts; a user
    without neighbours gets weight 0 everywhere. Returns (neighbour ids U×k, weights U×k).
    """
    n_users, k = neighbours.shape
    slot = torch.arange(k, device=neighbours.device).expand(n_users, k)
    draw = (torch.rand(n_users, k, device=neighbours.device) * slot).floor().long()
    source = torch.where(slot < length.unsqueeze(1), slot, draw)
    # every filled slot copies an earlier one: follow the copies back to a real neighbour
    # (pointer doubling: after t rounds a chain of 2^t copies is resolved)
    for _ in range(max(1, math.ceil(math.log2(k)))):
        source = source.gather(1, source)
    ids, weights = neighbours.gather(1, source), counts.gather(1, source)
    weights = torch.softmax(weights, dim=1) * (length > 0).unsqueeze(1).to(weights.dtype)
    return ids, weights


def user_graph_matrices(ids: torch.Tensor, weights: torch.Tensor):
    """(G, Gᵀ) as torch CSR: G[u, v] = Σ of u's weights on the slots holding v."""
    n_users, k = ids.shape
    rows = torch.arange(n_users, device=ids.device).repeat_interleave(k)
    cols, vals = ids.reshape(-1), weights.reshape(-1)
    g = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n_users, n_users)).coalesce()
    g_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, (n_users, n_users)).coalesce()
    return g.to_sparse_csr(), g_t.to_sparse_csr()


# --------------------------------------------------------------------------- model

@register("DRAGON")
class DRAGON(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.fix_stale_eval = bool(config.get("fix_stale_eval", False))
        self.mods = Modalities(task.modalities)

        # per-user weight of each modality's part of the user vector: softmax of a xavier draw (U × M × 1,
        # the reference's shape, whose fan-in and fan-out are those of U × M)
        self.weight_u = nn.Parameter(torch.softmax(xavier_normal(self.n_users, self.mods.count), dim=1).unsqueeze(2))
        self.preference = nn.ParameterDict({m: nn.Parameter(xavier_normal(self.n_users, d)) for m in self.mods})
        self.mlp_in = nn.ModuleDict({m: nn.Linear(task.features[m].shape[1], MLP_WIDTH * d) for m in self.mods})
        self.mlp_out = nn.ModuleDict({m: nn.Linear(MLP_WIDTH * d, d) for m in self.mods})
        for m in self.mods:
            self.register_buffer(f"feat_{m}", task.features[m], persistent=False)

        self.adj = ui_adjacency(task)
        self.item_graph = sparse_with_transpose(
            mixed_item_graph(task, int(config["knn_k"]), float(config["mm_image_weight"])), self.device)
        neighbours, counts, length = user_cooccurrence(task, int(config["user_knn_k"]))
        self.register_buffer("user_neighbours", torch.from_numpy(neighbours).to(self.device), persistent=False)
        self.register_buffer("user_counts", torch.from_numpy(counts).to(self.device), persistent=False)
        self.register_buffer("user_lengths", torch.from_numpy(length).to(self.device), persistent=False)
        self.pre_epoch(-1)  # a user graph exists before the first epoch (scoring an untrained model)
        self._cached = None  # the last training batch's vectors (the reference scores with them)

    def pre_epoch(self, epoch: int) -> None:
        """Every epoch re-samples the neighbours of users with fewer than ``user_knn_k``."""
        self.use_user_graph(*sample_user_graph(self.user_neighbours, self.user_counts, self.user_lengths))

    def use_user_graph(self, ids: torch.Tensor, weights: torch.Tensor) -> None:
        """The user graph until the next epoch: user u aggregates ``ids[u]`` with ``weights[u]``
        (U × k each; the one-batch check hands ours the reference's own sample)."""
        self.user_graph = user_graph_matrices(ids.to(self.device), weights.to(self.device))

    def modality_representation(self, m: str) -> torch.Tensor:
        """x + Âx + Â²x of x = normalize([P_m; MLP_m(X_m)]) on the user-item graph Â, (U+I)×d."""
        content = self.mlp_out[m](F.leaky_relu(self.mlp_in[m](getattr(self, f"feat_{m}"))))
        x = F.normalize(torch.cat([self.preference[m], content], dim=0), dim=1)
        h = spmm_t(self.adj, self.adj, x)
        h2 = spmm_t(self.adj, self.adj, h)
        return h + x + h2

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        nu = self.n_users
        reps = [self.modality_representation(m) for m in self.mods]
        users = torch.cat([self.weight_u[:, j] * r[:nu] for j, r in enumerate(reps)], dim=1)
        items = torch.cat([r[nu:] for r in reps], dim=1)
        h = items
        for _ in range(self.n_mm_layers):
            h = spmm_t(*self.item_graph, h)
        return users + spmm_t(*self.user_graph, users), items + h

    def calculate_loss(self, users, pos, neg):
        u_all, i_all = self.forward()
        if not self.fix_stale_eval:
            self._cached = (u_all.detach(), i_all.detach())
        u = u_all[users]
        # the reference's BPR is in bits: -mean log2 σ(s⁺ - s⁻)
        loss = bpr_loss((u * i_all[pos]).sum(1), (u * i_all[neg]).sum(1)) / math.log(2.0)
        reg = sum(self.preference[m][users].pow(2).mean() for m in self.mods)
        return loss + self.reg_weight * reg + self.reg_weight * self.weight_u.pow(2).mean()

    def scoring_vectors(self):
        # the reference scores with the vectors of the last training batch (before its update)
        if self.fix_stale_eval or self._cached is None:
            return self.forward()
        return self._cached
