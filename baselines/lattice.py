"""LATTICE: latent item-item structure learned from modality features (Zhang et al., ACM MM 2021).

A top-k cosine graph of projected (trainable) features is mixed with the fixed kNN graph of the raw
features; item IDs propagated over the mix are added to a LightGCN item embedding. Missing
modalities: imputed features; with two modalities the static graphs isolate missing items after
the top-k. Details, options and the reference defects it can fix: docs/models/LATTICE.md.
"""
from __future__ import annotations

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.knn import cached_knn_graph, topk_cosine_edges
from models.graphs.propagation import lightgcn_backbone, weighted_propagate
from models.graphs.sparse import sparse_with_transpose, spmm_t
from models.graphs.user_item import ui_adjacency_rw_self_loops
from models.layers import xavier_table
from models.losses import bpr_loss, squared_l2
from models.registry import register


@register("LATTICE")
class LATTICE(Recommender):
    group = "multi-modal"
    list_params = ("weight_size",)

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.knn_k = int(config["knn_k"])
        self.lam = float(config["lambda_coeff"])
        self.n_layers = int(config["n_layers"])
        self.n_ui_layers = len(config["weight_size"])
        self.reg_weight = float(config["reg_weight"])
        self.batch_size = int(config["train_batch_size"])
        self.cf_model = str(config["cf_model"])
        if self.cf_model not in ("lightgcn", "mf"):
            raise ValueError(f"LATTICE cf_model must be 'lightgcn' or 'mf', got {self.cf_model!r}")
        self.fix_inference = bool(config["fix_inference_normalization"])
        self.mods = Modalities(task.modalities)
        self.three = self.mods.has_audio
        self.new = task.new_items if (task.new_item_mode and not self.three) else None

        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        if self.new is not None:
            with torch.no_grad():
                self.item_embedding[torch.from_numpy(self.new)] = 0.0
        # Raw features are trainable (Embedding.from_pretrained(freeze=False) in the reference).
        self.features = nn.ParameterDict({m: nn.Parameter(task.features[m].clone()) for m in self.mods})
        self.trs = nn.ModuleDict({m: nn.Linear(task.features[m].shape[1], int(config["feat_embed_dim"]))
                                  for m in self.mods})
        init = [0.3, 0.3, 0.4] if self.three else [1.0 / self.mods.count] * self.mods.count
        self.modal_weight = nn.Parameter(torch.tensor(init))

        adj = ui_adjacency_rw_self_loops(task)
        self.adj = (adj, adj.to_sparse_coo().t().coalesce().to_sparse_csr())  # not symmetric: keep its transpose
        mask = "none" if self.three else "after"
        self.static = {m: cached_knn_graph(task, m, self.knn_k, mask) for m in self.mods}
        self.static_t = [sparse_with_transpose(self.static[m], self.device) for m in self.mods]
        if self.new is not None:
            self.static_new = {m: cached_knn_graph(task, m, self.knn_k, "new_items") for m in self.mods}
            self.static_new_t = [sparse_with_transpose(self.static_new[m], self.device) for m in self.mods]
        else:
            self.static_new, self.static_new_t = self.static, self.static_t
        self._build = True
        self._epoch_adj = None  # detached item graph of the current epoch (torch CSR and transpose)

    # ------------------------------------------------------------------ item graph
    def _learned_edges(self, weights, exclude):
        rows, cols, vals = [], [], []
        for w, m in zip(weights, self.mods):
            r, c, v = topk_cosine_edges(self.trs[m](self.features[m]), self.knn_k, exclude)
            rows.append(r)
            cols.append(c)
            vals.append(w * v)
        return torch.cat(rows), torch.cat(cols), torch.cat(vals)

    def _item_graph(self, inference: bool):
        """(rows, cols, values) of the learned part and the static part's torch matrices.

        The item propagation is ``h ← Σ_m λ w_m S_m h + learned h``.
        """
        w = torch.softmax(self.modal_weight, dim=0)
        exclude = None if (inference or self.new is None) else self.new
        rows, cols, vals = self._learned_edges(w, exclude)
        normalise = not self.three and (not inference or self.fix_inference)
        if normalise:
            deg = vals.new_zeros(self.n_items).index_add(0, rows, vals)
            d = deg.clamp(min=1e-7).pow(-0.5)
            vals = d[rows] * vals * d[cols]
        vals = (1.0 - self.lam) * vals
        static = self.static_t if (inference or self.new is None) else self.static_new_t
        return (rows, cols, vals), [(self.lam * w[j], s) for j, s in enumerate(static)]

    def _propagate_items(self, learned, static) -> torch.Tensor:
        rows, cols, vals = learned
        h = self.item_embedding
        for _ in range(self.n_layers):
            out = weighted_propagate(h, cols, rows, vals, self.n_items)
            for w, s in static:
                out = out + w * spmm_t(*s, h)
            h = out
        return h

    def _freeze_graph(self, learned, static) -> torch.Tensor:
        """The epoch's training item graph as one constant sparse matrix (learned + static, detached)."""
        rows, cols, vals = learned
        m = sp.csr_matrix((vals.detach().cpu().numpy(), (rows.cpu().numpy(), cols.cpu().numpy())),
                          shape=(self.n_items, self.n_items))
        for j, (w, _) in enumerate(static):
            m = m + float(w.detach()) * self.static_new[self.mods[j]]
        return sparse_with_transpose(m, self.device)

    def _item_side(self, training_first_batch: bool) -> torch.Tensor:
        if training_first_batch:
            learned, static = self._item_graph(inference=False)
            h = self._propagate_items(learned, static)
            self._epoch_adj = self._freeze_graph(learned, static)
            return h
        h = self.item_embedding
        for _ in range(self.n_layers):
            h = spmm_t(*self._epoch_adj, h)
        return h

    # ------------------------------------------------------------------ forward
    def _cf(self):
        if self.cf_model == "mf":
            return self.user_embedding, self.item_embedding
        return lightgcn_backbone(self.adj[0], self.user_embedding, self.item_embedding, self.n_ui_layers, self.adj[1])

    def forward(self):
        first = self._build or self._epoch_adj is None
        h = self._item_side(first)
        self._build = False
        u, i = self._cf()
        return u, i + F.normalize(h, dim=1)

    def pre_epoch(self, epoch):
        self._build = True

    def calculate_loss(self, users, pos, neg):
        u_all, i_all = self.forward()
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1))
        if self.reg_weight:
            loss = loss + self.reg_weight * squared_l2(u, p, n, batch_size=self.batch_size)
        return loss

    def scoring_vectors(self):
        learned, static = self._item_graph(inference=True)
        h = self._propagate_items(learned, static)
        u, i = self._cf()
        return u, i + F.normalize(h, dim=1)
