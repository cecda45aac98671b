"""GRCN: graph-refined convolutional network (Wei et al., ACM MM 2020).

Modality attention scores every user-item edge, the ID graph is re-weighted by those scores, and
ID and content representations are concatenated. Missing modalities: imputed features. Details,
options and the reference defects it can fix: docs/models/GRCN.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Recommender
from models.graphs.propagation import EdgeGraph, segment_softmax
from models.graphs.user_item import ui_edges
from models.layers import xavier_normal
from models.losses import bpr_loss
from models.registry import register


@register("GRCN")
class GRCN(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        d_c = int(config["latent_embedding"])
        self.n_routing = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.fix_routing = bool(config.get("fix_routing", False))
        self.fix_stale_eval = bool(config.get("fix_stale_eval", False))
        users, items = ui_edges(task)
        self.register_buffer("edge_u", torch.from_numpy(users).to(self.device), persistent=False)
        self.register_buffer("edge_i", torch.from_numpy(items).to(self.device), persistent=False)
        self.to_items = EdgeGraph(self.edge_u, self.edge_i, self.n_users, self.n_items)  # user → item messages
        self.to_users = EdgeGraph(self.edge_i, self.edge_u, self.n_items, self.n_users)  # item → user messages
        self.order = [m for m in ("v", "a", "t") if m in task.modalities]
        for m in self.order:
            self.register_buffer(f"feat_{m}", task.features[m], persistent=False)
        self.preference = nn.ParameterDict({m: nn.Parameter(xavier_normal(self.n_users, d_c)) for m in self.order})
        self.mlp = nn.ModuleDict({m: nn.Linear(task.features[m].shape[1], d_c) for m in self.order})
        for layer in self.mlp.values():
            nn.init.xavier_normal_(layer.weight)
        self.confidence = nn.Parameter(xavier_normal(self.n_users + self.n_items, len(self.order)))
        self.id_embedding = nn.Parameter(xavier_normal(self.n_users + self.n_items, d))
        self._cached = None  # representation of the last training batch (the reference's self.result)

    # ------------------------------------------------------------------ content branch
    def _attention(self, p, f):
        """Attention pass over both edge directions: (user rows, item rows, α per item, α per user)."""
        u, i = self.edge_u, self.edge_i
        logits = self.to_items.edge_dot(f, p)               # ⟨P_u, F_i⟩ per edge
        a_item = segment_softmax(logits, i, self.n_items)   # edges user→item, normalised per item
        a_user = segment_softmax(logits, u, self.n_users)   # edges item→user, normalised per user
        return self.to_users.propagate(a_user, f), self.to_items.propagate(a_item, p), a_item, a_user

    def content(self, m):
        f = F.normalize(F.leaky_relu(self.mlp[m](getattr(self, f"feat_{m}"))), dim=1)
        p = F.normalize(self.preference[m], dim=1)
        if self.fix_routing:
            u = self.edge_u
            for _ in range(self.n_routing):
                a_user = segment_softmax(self.to_items.edge_dot(f, p), u, self.n_users)
                p = F.normalize(p + self.to_users.propagate(a_user, f), dim=1)
        to_users, to_items, a_item, a_user = self._attention(p, f)
        return torch.cat([p + to_users, f + to_items], dim=0), a_item, a_user

    # ------------------------------------------------------------------ full model
    def forward(self):
        reps, a_items, a_users = [], [], []
        for m in self.order:
            rep, a_item, a_user = self.content(m)
            reps.append(rep)
            a_items.append(a_item)
            a_users.append(a_user)
        u, i = self.edge_u, self.edge_i
        conf = self.confidence
        # weight of edge user→item: attention per item × the user's confidence (and reverse)
        w_to_item = torch.relu((torch.stack(a_items, 1) * conf[u]).max(dim=1).values)
        w_to_user = torch.relu((torch.stack(a_users, 1) * conf[self.n_users + i]).max(dim=1).values)
        x = F.normalize(self.id_embedding, dim=1)
        layers = [x]
        for _ in range(2):
            xu, xi = x[:self.n_users], x[self.n_users:]
            x = torch.cat([self.to_users.propagate(w_to_user, xi), self.to_items.propagate(w_to_item, xu)], dim=0)
            layers.append(x)
        id_rep = layers[0] + layers[1] + layers[2]
        return torch.cat([id_rep] + reps, dim=1)

    def calculate_loss(self, users, pos, neg):
        rep = self.forward()
        if not self.fix_stale_eval:
            self._cached = rep.detach()
        u, p, n = rep[torch.cat([users, self.n_users + pos, self.n_users + neg])].split(len(users))  # one gather
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1))
        if self.reg_weight:
            e = self.id_embedding
            e_u, e_p, e_n = e[users], e[self.n_users + pos], e[self.n_users + neg]
            reg = (2 * e_u.pow(2).sum() + e_p.pow(2).sum() + e_n.pow(2).sum()) / (2 * e_u.numel())
            if "v" in self.preference:
                reg = reg + self.preference["v"].pow(2).mean()
            reg = reg + sum(self.preference[m][users].pow(2).mean() for m in self.order)
            loss = loss + self.reg_weight * reg
        return loss

    def scoring_vectors(self):
        # the reference scores with the representation cached by the last training batch (stale)
        rep = self.forward() if self.fix_stale_eval or self._cached is None else self._cached
        return rep[:self.n_users], rep[self.n_users:]
