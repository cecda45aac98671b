"""MFBPR: matrix factorisation trained with BPR (Rendle et al., UAI 2009).

Reads no features. Details and options: docs/models/MFBPR.md.
"""
from __future__ import annotations

from models.base import Recommender
from models.layers import xavier_table
from models.losses import bpr_loss, emb_norm
from models.registry import register


@register("MFBPR")
class MFBPR(Recommender):
    group = "collaborative"
    uses_features = False

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)

    def calculate_loss(self, users, pos, neg):
        u, p, n = self.user_embedding[users], self.item_embedding[pos], self.item_embedding[neg]
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1), gamma=1e-10)
        return loss + self.reg_weight * emb_norm(u, p, n)

    def scoring_vectors(self):
        return self.user_embedding, self.item_embedding
