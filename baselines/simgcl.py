"""SimGCL: LightGCN with a contrastive task between two noise-perturbed propagations (Yu et al., SIGIR 2022).

Reads no features. Details, options and the reference defects it can fix: docs/models/SimGCL.md.
"""
from __future__ import annotations

import torch

from models.base import Recommender
from models.graphs.propagation import lightgcn_backbone
from models.graphs.sparse import spmm_t
from models.graphs.user_item import ui_adjacency
from models.layers import sign_perturb, xavier_table
from models.losses import bpr_loss, info_nce_eps_fused
from models.registry import register


@register("SimGCL")
class SimGCL(Recommender):
    group = "collaborative"
    uses_features = False

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.n_layers = int(config["n_ui_layers"])
        self.cl_weight = float(config["reg_weight"])  # the reference names the contrastive weight reg_weight
        self.eps = float(config["eps"])
        self.temperature = float(config["temperature"])
        self.skip_layer0 = bool(config["fix_perturbed_layer0"])
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        self.adj = ui_adjacency(task)

    def propagate(self):
        return lightgcn_backbone(self.adj, self.user_embedding, self.item_embedding, self.n_layers)

    def perturbed(self):
        """Each layer's output plus sign(E) ⊙ norm(U[0,1)) · eps, fresh noise per layer and call."""
        e = torch.cat([self.user_embedding, self.item_embedding], dim=0)
        total = None if self.skip_layer0 else e
        for _ in range(self.n_layers):
            e = sign_perturb(spmm_t(self.adj, self.adj, e), self.eps)
            total = e if total is None else total + e
        out = total / (self.n_layers + (0 if self.skip_layer0 else 1))
        return out[:self.n_users], out[self.n_users:]

    def calculate_loss(self, users, pos, neg):
        u_all, i_all = self.propagate()
        u = u_all.index_select(0, users)
        loss = bpr_loss((u * i_all.index_select(0, pos)).sum(1), (u * i_all.index_select(0, neg)).sum(1))
        (u1, i1), (u2, i2) = self.perturbed(), self.perturbed()
        uid = torch.unique(users)
        iid = torch.unique(torch.cat([pos, neg]))
        cl = info_nce_eps_fused(u1.index_select(0, uid), u2.index_select(0, uid), self.temperature, 1e-9) + \
            info_nce_eps_fused(i1.index_select(0, iid), i2.index_select(0, iid), self.temperature, 1e-9)
        return loss + self.cl_weight * cl

    def scoring_vectors(self):
        return self.propagate()
