"""SimGCL: LightGCN with a contrastive task between two noise-perturbed propagations (Yu et al., SIGIR 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Recommender
from models.graphs.propagation import lightgcn
from models.graphs.sparse import spmm_t
from models.graphs.user_item import ui_adjacency
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
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.adj = ui_adjacency(task)

    def _ego(self):
        return torch.cat([self.user_embedding, self.item_embedding], dim=0)

    def propagate(self):
        out = lightgcn(self.adj, self._ego(), self.n_layers)
        return out[:self.n_users], out[self.n_users:]

    def perturbed(self):
        """Each layer's output plus sign(E) ⊙ norm(U[0,1)) · eps, fresh noise per layer and call."""
        e = self._ego()
        total = None if self.skip_layer0 else e
        for _ in range(self.n_layers):
            e = spmm_t(self.adj, self.adj, e)
            with torch.no_grad():  # sign() has zero gradient: the noise is a constant shift for autograd
                noise = F.normalize(torch.rand_like(e), dim=-1).mul_(self.eps).mul_(torch.sign(e))
            e = e + noise
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
