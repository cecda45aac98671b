"""VBPR: BPR matrix factorisation whose item vector carries a projection of content features
(He & McAuley, AAAI 2016).

Missing modalities: imputed features (text only, as the official code, unless fixed). Details,
options and the reference defects it can fix: docs/models/VBPR.md.
"""
from __future__ import annotations

import torch
from torch import nn

from models.base import Recommender
from models.layers import xavier_table
from models.losses import bpr_loss, emb_norm
from models.registry import register


@register("VBPR")
class VBPR(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.fix_text_only = bool(config.get("fix_text_only", False))
        order = ["t"] + [m for m in task.modalities if m != "t"] if self.fix_text_only else ["t"]
        self.input_modalities = tuple(order)
        self.register_buffer("content", torch.cat([task.features[m] for m in order], dim=1), persistent=False)
        self.user_factors = xavier_table(self.n_users, 2 * d)
        self.item_factors = xavier_table(self.n_items, d)
        self.projection = nn.Linear(self.content.shape[1], d)
        nn.init.xavier_normal_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def item_vectors(self) -> torch.Tensor:
        return torch.cat([self.item_factors, self.projection(self.content)], dim=1)

    def calculate_loss(self, users, pos, neg):
        # project only the items of the batch (the same values as projecting all of them)
        # index_select rather than x[idx]: the same rows, a backward pass about twice as fast on CPU
        uniq, inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        items = torch.cat([self.item_factors.index_select(0, uniq),
                           self.projection(self.content.index_select(0, uniq))], dim=1).index_select(0, inv)
        u, (p, n) = self.user_factors.index_select(0, users), items.split(len(pos))
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1))
        if self.reg_weight:
            loss = loss + self.reg_weight * emb_norm(u, p, n)
        return loss

    def scoring_vectors(self):
        return self.user_factors, self.item_vectors()
