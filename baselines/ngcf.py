"""NGCF: propagation with learned transforms and an element-wise affinity message (Wang et al., SIGIR 2019).

Reads no features. Details and options: docs/models/NGCF.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Recommender
from models.graphs.sparse import spmm_t
from models.graphs.user_item import ui_adjacency
from models.layers import xavier_table
from models.losses import bpr_loss, emb_norm
from models.registry import register


@register("NGCF")
class NGCF(Recommender):
    group = "collaborative"
    uses_features = False
    list_params = ("weight_size", "mess_dropout")

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        sizes = [int(s) for s in config["weight_size"]]
        self.dropout = [float(p) for p in config["mess_dropout"]]
        if len(self.dropout) != len(sizes):
            raise ValueError(f"NGCF: mess_dropout {self.dropout} needs one rate per layer of weight_size {sizes}")
        self.reg_weight = float(config["reg_weight"])
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        dims = [d] + sizes
        self.gc = nn.ModuleList(nn.Linear(dims[k], dims[k + 1]) for k in range(len(sizes)))
        self.bi = nn.ModuleList(nn.Linear(dims[k], dims[k + 1]) for k in range(len(sizes)))
        for lin in list(self.gc) + list(self.bi):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.adj = ui_adjacency(task)

    def propagate(self, rows=None):
        """Concatenated [E0, norm(E1), ..., norm(EL)] of every node, or of the nodes ``rows`` only.

        The last layer feeds nothing else, so with ``rows`` its dense transforms run on those
        rows alone (the same values; dropout draws only their masks).
        """
        ego = torch.cat([self.user_embedding, self.item_embedding], dim=0)
        outs = [ego]
        last = len(self.gc) - 1
        for k, (gc, bi, p) in enumerate(zip(self.gc, self.bi, self.dropout)):
            side = spmm_t(self.adj, self.adj, ego)  # symmetric: its own transpose
            if rows is not None and k == last:
                side, ego = side.index_select(0, rows), ego.index_select(0, rows)
            # One LeakyReLU over both messages (the reference; the paper applies one to each).
            ego = F.leaky_relu(gc(side + ego) + bi(ego * side), negative_slope=0.2)
            ego = self._dropout(ego, p)
            outs.append(F.normalize(ego, dim=1))
        if rows is not None:
            outs = [o.index_select(0, rows) for o in outs[:-1]] + outs[-1:]
        return torch.cat(outs, dim=1)

    def _dropout(self, x, p):
        """Inverted dropout with a mask from uniform draws (F.dropout's law; its bernoulli_ is slower on CPU)."""
        if not self.training or p == 0.0:
            return x
        with torch.no_grad():
            mask = torch.rand_like(x).ge_(p).to(x.dtype).mul_(1.0 / (1.0 - p))
        return x * mask

    def calculate_loss(self, users, pos, neg):
        uu, ui = torch.unique(users, return_inverse=True)
        ii, ik = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        out = self.propagate(torch.cat([uu, ii + self.n_users]))
        u = out.index_select(0, ui)
        items = out.index_select(0, len(uu) + ik)
        p, n = items[:len(pos)], items[len(pos):]
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1), gamma=1e-10)
        return loss + self.reg_weight * emb_norm(u, p, n)

    def _split(self):
        out = self.propagate()
        return out[:self.n_users], out[self.n_users:]

    def scoring_vectors(self):
        return self._split()
