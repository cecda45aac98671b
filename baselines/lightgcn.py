"""LightGCN: linear propagation on the user-item graph, mean over layers (He et al., SIGIR 2020).

Reads no features. Details and options: docs/models/LightGCN.md.
"""
from __future__ import annotations

from models.base import Recommender
from models.graphs.propagation import lightgcn_backbone
from models.graphs.user_item import ui_adjacency
from models.layers import xavier_table
from models.losses import bpr_loss, emb_norm
from models.registry import register


@register("LightGCN")
class LightGCN(Recommender):
    group = "collaborative"
    uses_features = False

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.n_layers = int(config["n_ui_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        self.adj = ui_adjacency(task)

    def propagate(self):
        return lightgcn_backbone(self.adj, self.user_embedding, self.item_embedding, self.n_layers)

    def calculate_loss(self, users, pos, neg):
        u_all, i_all = self.propagate()
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        pos_s, neg_s = (u * p).sum(1), (u * n).sum(1)
        if self.reg_weight == 0:
            # The reference switches to the plain logsigmoid form when the regulariser is off.
            return bpr_loss(pos_s, neg_s)
        reg = emb_norm(self.user_embedding[users], self.item_embedding[pos], self.item_embedding[neg])
        return bpr_loss(pos_s, neg_s, gamma=1e-10) + self.reg_weight * reg

    def scoring_vectors(self):
        return self.propagate()
