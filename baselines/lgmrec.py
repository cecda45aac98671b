"""LGMRec: local and global graph learning for multimodal recommendation (Guo et al., AAAI 2024).

Local embeddings (LightGCN plus propagated modality features) and global ones from learnable soft
hypergraphs per modality, whose embeddings are contrasted across modalities. Missing modalities:
imputed features; with two modalities the item contrast uses complete items only. Details,
options and the reference defects it can fix: docs/models/LGMRec.md.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.propagation import hypergraph_propagate, lightgcn
from models.graphs.sparse import sparse_with_transpose, spmm_t
from models.graphs.user_item import ui_adjacency
from models.layers import xavier_table
from models.losses import bpr_loss, distinct, emb_norm, nce_over_lowrank_candidates
from models.registry import register

# Modality pairs (x, y) of the three-modality contrast, as in the reference: v→t, a→v, t→a.
PAIRS_3 = (("v", "t"), ("a", "v"), ("t", "a"))


@register("LGMRec")
class LGMRec(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        f = int(config["feat_embed_dim"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_hyper_layer = int(config["n_hyper_layer"])
        self.hyper_num = int(config["hyper_num"])
        self.keep_rate = float(config["keep_rate"])
        self.alpha = float(config["alpha"])
        self.cl_weight = float(config["cl_weight"])
        self.reg_weight = float(config["reg_weight"])
        self.tau = float(config["tau"])
        self.fix_eval_noise = bool(config["fix_eval_noise"])
        self.fix_complete_items = bool(config["fix_complete_items"])
        self.mods = Modalities(task.modalities)
        self.three = self.mods.has_audio

        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        for m in self.mods:  # frozen features (freeze=True in the reference)
            self.register_buffer(f"feat_{m}", task.features[m].clone(), persistent=False)
        self.trs = nn.ParameterDict({m: xavier_table(task.features[m].shape[1], f) for m in self.mods})
        self.hyper = nn.ParameterDict({m: xavier_table(task.features[m].shape[1], self.hyper_num) for m in self.mods})

        self.adj = ui_adjacency(task)
        r = task.train_matrix()
        self.r = sparse_with_transpose(r, self.device)  # raw 0/1 user×item matrix and its transpose
        deg_u = np.asarray(r.sum(axis=1)).ravel()
        self.register_buffer("inv_deg_u", torch.from_numpy(1.0 / (deg_u + 1e-7)).float().unsqueeze(1),
                             persistent=False)
        complete = ~np.logical_or.reduce([task.missing[m] for m in self.mods])
        self.missing_modal = task.missing_modal
        self.register_buffer("complete_mask", torch.from_numpy(complete), persistent=False)
        self.register_buffer("complete_ids", torch.from_numpy(np.flatnonzero(complete)), persistent=False)

    def feat(self, m):
        return getattr(self, f"feat_{m}")

    # ------------------------------------------------------------------ forward
    def _memberships(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.training and self.fix_eval_noise:
            return torch.softmax(logits / self.tau, dim=1)
        return F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=1)

    def forward(self):
        ego = torch.cat([self.user_embedding, self.item_embedding], dim=0)
        cge = lightgcn(self.adj, ego, self.n_ui_layers)
        local = cge
        hyper = {}
        p_drop = 1.0 - self.keep_rate
        cge_items = cge[self.n_users:]
        for m in self.mods:
            x = self.feat(m)
            item_f = x @ self.trs[m]
            y = torch.cat([spmm_t(*self.r, item_f) * self.inv_deg_u, item_f], dim=0)
            for _ in range(self.n_mm_layers):
                y = spmm_t(self.adj, self.adj, y)  # the normalised user-item graph is symmetric
            local = local + F.normalize(y, dim=1)
            ih = x @ self.hyper[m]
            uh = spmm_t(*self.r, ih)
            ih, uh = self._memberships(ih), self._memberships(uh)
            ih = F.dropout(ih, p_drop, self.training)
            uh = F.dropout(uh, p_drop, self.training)
            # (users, items, memberships of users, of items, hyperedge states): users = uh·lat, items = ih·lat
            u, i, lat = hypergraph_propagate(ih, uh, cge_items, self.n_hyper_layer, return_latent=True)
            hyper[m] = (u, i, uh, ih, lat)
        glob = sum(torch.cat([h[0], h[1]], dim=0) for h in hyper.values())
        final = local + self.alpha * F.normalize(glob, dim=1)
        return final[:self.n_users], final[self.n_users:], hyper

    # ------------------------------------------------------------------ loss
    def _item_contrast_sets(self, pos: torch.Tensor):
        """(positive rows, candidate items or None for all items) of the item-side contrast."""
        if self.three and not self.fix_complete_items:
            return pos, None  # reference: all positives (duplicates kept) against all items
        if not self.missing_modal:
            return pos, None
        return torch.unique(pos[self.complete_mask[pos]]), self.complete_ids

    def _contrast(self, x: torch.Tensor, y_factors: torch.Tensor, y_basis: torch.Tensor, rows,
                  cand: torch.Tensor | None):
        """−Σ_r log(exp(cos(x_r, y_r)/τ) / Σ_c exp(cos(x_r, y_c)/τ)) over ``rows`` (duplicates count as
        often as they occur), candidates ``cand`` (None: all rows of y). y = y_factors · y_basis is
        a hypergraph embedding (memberships × hyperedge states), so the logits are rank h."""
        _, ids, _, counts = distinct(rows)
        if cand is None:
            return nce_over_lowrank_candidates(x[ids], y_factors, y_basis, ids, self.tau, counts)
        return nce_over_lowrank_candidates(x[ids], y_factors[cand], y_basis, torch.searchsorted(cand, ids),
                                           self.tau, counts)

    def calculate_loss(self, users, pos, neg):
        u_all, i_all, hyper = self.forward()
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1))
        rows, cand = self._item_contrast_sets(pos)
        users_d, rows = distinct(users), distinct(rows)  # once for every modality pair
        pairs = PAIRS_3 if self.three else ((self.mods[0], self.mods[1]),)
        hcl = 0.0
        for x, y in pairs:
            ux, ix = hyper[x][:2]
            _, _, uh_y, ih_y, lat_y = hyper[y]
            hcl = hcl + self._contrast(ux, uh_y, lat_y, users_d, None) + self._contrast(ix, ih_y, lat_y, rows, cand)
        if self.three:
            hcl = hcl / 3.0
        loss = loss + self.cl_weight * hcl
        return loss + self.reg_weight * emb_norm(u, p, n)

    def scoring_vectors(self):
        u, i, _ = self.forward()
        return u, i
