"""MGCN: multi-view graph convolutional network (Yu et al., ACM MM 2023).

Modality features gate the item ID embedding; the gated vectors are propagated on fixed kNN graphs,
fused by attention into common and user-gated specific parts, added to a LightGCN embedding and
contrasted with it. Missing modalities: imputed features, missing items isolated before the top-k
of each modality graph. Details, options and the reference defects it can fix:
docs/models/MGCN.md.
"""
from __future__ import annotations

import torch
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.knn import cached_knn_graph
from models.graphs.propagation import lightgcn
from models.graphs.sparse import sparse_with_transpose, spmm_t
from models.graphs.user_item import ui_adjacency, ui_sym_scipy, user_item_block
from models.layers import xavier_table
from models.losses import batch_info_nce, bpr_loss, squared_l2
from models.registry import register


@register("MGCN")
class MGCN(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_layers = int(config["n_layers"])
        self.knn_k = int(config["knn_k"])
        self.reg_weight = float(config["reg_weight"])
        self.cl_weight = float(config["cl_loss"])
        self.cl_temp = float(config["cl_temperature"])
        self.batch_size = int(config["train_batch_size"])
        self.fix_new_item_grad = bool(config["fix_new_item_grad"])
        self.mods = Modalities(task.modalities)

        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        self.features = nn.ParameterDict({m: nn.Parameter(task.features[m].clone()) for m in self.mods})
        self.trs = nn.ModuleDict({m: nn.Linear(task.features[m].shape[1], d) for m in self.mods})
        self.gate = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.mods})
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.prefer = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.mods})

        self.adj = ui_adjacency(task)
        self.r_hat = sparse_with_transpose(user_item_block(ui_sym_scipy(task), self.n_users), self.device)
        self.graphs = {m: sparse_with_transpose(cached_knn_graph(task, m, self.knn_k, "before"), self.device)
                       for m in self.mods}
        self.new_mode = task.new_item_mode
        if self.new_mode:
            self.graphs_new = {m: sparse_with_transpose(cached_knn_graph(task, m, self.knn_k, "new_items"), self.device)
                               for m in self.mods}
            self.keep = torch.from_numpy(~task.new_items).to(self.device, torch.float32).unsqueeze(1)

    def forward(self):
        """(final users, final items, side view, LightGCN view); views are (U+I)×d."""
        train_new = self.new_mode and self.training
        graphs = self.graphs_new if train_new else self.graphs
        views = []
        for m in self.mods:
            z = self.item_embedding * self.gate[m](self.trs[m](self.features[m]))
            if train_new:
                z = z * self.keep if self.fix_new_item_grad else (z * self.keep).detach()
            for _ in range(self.n_layers):
                z = spmm_t(*graphs[m], z)
            views.append(torch.cat([spmm_t(*self.r_hat, z), z], dim=0))
        content = lightgcn(self.adj, torch.cat([self.user_embedding, self.item_embedding], dim=0), self.n_ui_layers)
        att = torch.softmax(torch.cat([self.query_common(v) for v in views], dim=1), dim=1)
        common = sum(att[:, j:j + 1] * v for j, v in enumerate(views))
        specific = [self.prefer[m](content) * (v - common) for m, v in zip(self.mods, views)]
        side = (sum(specific) + common) / (self.mods.count + 1)
        final = content + side
        return final[:self.n_users], final[self.n_users:], side, content

    def calculate_loss(self, users, pos, neg):
        u_all, i_all, side, content = self.forward()
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1))
        loss = loss + self.reg_weight * squared_l2(u, p, n, batch_size=self.batch_size)
        if self.cl_weight:
            nu = self.n_users
            # info_nce(side[pos], content[pos]) + info_nce(side[users], content[users]), on distinct ids
            cl = batch_info_nce(side[nu:], content[nu:], pos, self.cl_temp) + \
                batch_info_nce(side[:nu], content[:nu], users, self.cl_temp)
            loss = loss + self.cl_weight * cl
        return loss

    def scoring_vectors(self):
        u, i, _, _ = self.forward()
        return u, i
