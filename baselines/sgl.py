"""SGL: LightGCN with a contrastive task between two edge-dropped graph views (Wu et al., SIGIR 2021).

Reads no features. Details, options and the reference defects it can fix: docs/models/SGL.md.
"""
from __future__ import annotations

import torch

from models.base import Recommender
from models.graphs.propagation import lightgcn_backbone
from models.graphs.user_item import EdgeDropper, ui_adjacency
from models.layers import xavier_table
from models.losses import bpr_loss, info_nce_eps_fused
from models.registry import register


@register("SGL")
class SGL(Recommender):
    group = "collaborative"
    uses_features = False

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.n_layers = int(config["n_ui_layers"])
        self.cl_weight = float(config["reg_weight"])  # the reference names the contrastive weight reg_weight
        self.temperature = float(config["temperature"])
        self.weighted = not bool(config["fix_edge_sampling"])
        rate_1 = float(config["drop_rate_1"])
        rate_2 = rate_1 if config["fix_drop_rates"] else float(config["drop_rate_2"])
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        self.adj = ui_adjacency(task)
        self.dropper = EdgeDropper(task)
        self.keep = [int(self.dropper.n_edges * (1.0 - r)) for r in (rate_1, rate_2)]

    def propagate(self, adj):
        # every view is symmetric: its own transpose
        return lightgcn_backbone(adj, self.user_embedding, self.item_embedding, self.n_layers)

    def calculate_loss(self, users, pos, neg):
        u_all, i_all = self.propagate(self.adj)
        u = u_all.index_select(0, users)
        loss = bpr_loss((u * i_all.index_select(0, pos)).sum(1), (u * i_all.index_select(0, neg)).sum(1))
        # Two views re-drawn for every batch, each used for all layers.
        (u1, i1), (u2, i2) = (self.propagate(self.dropper.sample(k, weighted=self.weighted)) for k in self.keep)
        uid = torch.unique(users)
        iid = torch.unique(torch.cat([pos, neg]))
        cl = info_nce_eps_fused(u1.index_select(0, uid), u2.index_select(0, uid), self.temperature, 1e-9) + \
            info_nce_eps_fused(i1.index_select(0, iid), i2.index_select(0, iid), self.temperature, 1e-9)
        return loss + self.cl_weight * cl

    def scoring_vectors(self):
        return self.propagate(self.adj)
