"""GUME: graphs and user modalities enhancement for long-tail recommendation (Lin et al., CIKM 2024).

The user-item graph is enhanced with edges between items that are neighbours in both the image and
the text kNN graph; extended user modality embeddings, a coarse shared part and fine modality parts
are added to a LightGCN embedding, with alignment and contrastive losses. Missing modalities:
imputed features, missing items isolated in the kNN graphs (before the top-k with two modalities,
after it with three). Details, options, the reference defects it can fix and the two differences
by design: docs/models/GUME.md.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.item_item import shared_neighbours
from models.graphs.knn import cached_knn_graph
from models.graphs.propagation import lightgcn
from models.graphs.sparse import sparse_with_transpose, spmm_t
from models.graphs.user_item import ui_sym_scipy, user_item_block
from models.layers import sign_perturb, xavier_table
from models.losses import batch_info_nce, bpr_loss, distinct, squared_l2
from models.registry import register

# Alignment pairs of the three-modality path, as in the reference: (v, t), (a, t), (v, a).
ALIGN_3 = (("v", "t"), ("a", "t"), ("v", "a"))


def moment_alignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|var(x) − var(y)| + |mean(x) − mean(y)| over all entries (unbiased variance)."""
    return (x.var() - y.var()).abs() + (x.mean() - y.mean()).abs()


@register("GUME")
class GUME(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_layers = int(config["n_layers"])
        self.knn_k = int(config["knn_k"])
        self.bm_loss, self.bm_temp = float(config["bm_loss"]), float(config["bm_temp"])
        self.um_loss, self.um_temp = float(config["um_loss"]), float(config["um_temp"])
        self.vt_loss = float(config["vt_loss"])
        self.reg_weight_1 = float(config["reg_weight_1"])
        self.reg_weight_2 = float(config["reg_weight_2"])
        self.noise_scale = float(config["noise_scale"])
        self.batch_size = int(config["train_batch_size"])
        self.fix_new_item_grad = bool(config["fix_new_item_grad"])
        self.fix_align_index = bool(config["fix_align_index"])
        self.fix_ii_edges = bool(config["fix_ii_edges"])
        self.mods = Modalities(task.modalities)
        self.three = self.mods.has_audio

        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        self.ext_user = nn.ParameterDict({m: xavier_table(self.n_users, d) for m in self.mods})
        self.features = nn.ParameterDict({m: nn.Parameter(task.features[m].clone()) for m in self.mods})
        self.space_trans = nn.ModuleDict({m: nn.Sequential(nn.Linear(task.features[m].shape[1], d),
                                                           nn.Linear(d, d), nn.Sigmoid()) for m in self.mods})
        self.separate_coarse = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.behavior = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.mods})

        mask = "after" if self.three else "before"
        graphs = {m: cached_knn_graph(task, m, self.knn_k, mask) for m in self.mods}
        self.new_mode = task.new_item_mode
        if self.new_mode:
            graphs_new = {m: cached_knn_graph(task, m, self.knn_k, "new_items") for m in self.mods}
            self.graphs_new = {m: sparse_with_transpose(g, self.device) for m, g in graphs_new.items()}
            self.keep = torch.from_numpy(~task.new_items).to(self.device, torch.float32).unsqueeze(1)
        self.graphs = {m: sparse_with_transpose(g, self.device) for m, g in graphs.items()}

        # Enhanced user-item graph: item-item edges shared by the image and text kNN graphs (the
        # audio graph is not used, as in the reference).
        self.use_ii_edges = self.three or self.fix_ii_edges
        source = graphs_new if self.new_mode else graphs
        inputs = ("train", "features:v", "features:t", "missing", "new_items")

        def build():
            ii = shared_neighbours(source["v"], source["t"]) if self.use_ii_edges else None
            return ui_sym_scipy(task, ii) if ii is not None else ui_sym_scipy(task)

        adj = task.cached("gume_ui", {"k": self.knn_k, "mask": mask, "ii_edges": self.use_ii_edges,
                                      "new_item_graphs": bool(self.new_mode)}, inputs, build)
        self.n_ii_edges = int(adj[self.n_users:, self.n_users:].nnz)
        # (matrix, transpose) pairs: the item-item edges make the enhanced graph directed
        self.adj = sparse_with_transpose(adj, self.device)
        self.r_hat = sparse_with_transpose(user_item_block(adj, self.n_users), self.device)

        complete = ~np.logical_or.reduce([task.missing[m] for m in self.mods])
        self.missing_modal = task.missing_modal
        self.register_buffer("complete_mask", torch.from_numpy(complete), persistent=False)

    # ------------------------------------------------------------------ forward
    def forward(self):
        """final (U+I)×d and the pieces the losses use."""
        train_new = self.new_mode and self.training
        graphs = self.graphs_new if train_new else self.graphs
        adj, adj_t = self.adj
        ext_id = lightgcn(adj, torch.cat([self.user_embedding, self.item_embedding], dim=0), self.n_ui_layers, adj_t)
        explicit, extended = {}, []
        for m in self.mods:
            z = self.item_embedding * self.space_trans[m](self.features[m])
            if train_new:
                z = z * self.keep if self.fix_new_item_grad else (z * self.keep).detach()
            for _ in range(self.n_layers):
                z = spmm_t(*graphs[m], z)
            explicit[m] = torch.cat([spmm_t(*self.r_hat, z), z], dim=0)
            extended.append(lightgcn(adj, torch.cat([self.ext_user[m], z], dim=0), self.n_ui_layers, adj_t))
        ext_it = sum(extended) / len(extended)
        att = torch.softmax(torch.cat([self.separate_coarse(explicit[m]) for m in self.mods], dim=1), dim=1)
        coarse = sum(att[:, j:j + 1] * explicit[m] for j, m in enumerate(self.mods))
        fine = [self.behavior[m](ext_id) * (explicit[m] - coarse) for m in self.mods]
        integ = (sum(fine) + coarse) / (self.mods.count + 1)
        return ext_id + integ, integ, ext_id, ext_it, explicit

    # ------------------------------------------------------------------ loss
    def _noise_nce(self, emb: torch.Tensor, users) -> torch.Tensor:
        """InfoNCE between two noisy copies of the whole table, on the batch users."""
        return batch_info_nce(sign_perturb(emb, self.noise_scale), sign_perturb(emb, self.noise_scale), users,
                              self.um_temp)

    def alignment(self, explicit: dict, items: torch.Tensor) -> torch.Tensor:
        """Moment alignment of the modality views over ``items`` (mean over modality pairs).

        The views are [users; items]; the reference indexes them with raw item ids, i.e. it
        aligns the rows of USERS with those ids (kept by default; ``fix_align_index`` aligns the items).
        """
        rows = items + self.n_users if self.fix_align_index else items
        pairs = ALIGN_3 if self.three else ((self.mods[0], self.mods[1]),)
        return sum(moment_alignment(explicit[x][rows], explicit[y][rows]) for x, y in pairs) / len(pairs)

    def calculate_loss(self, users, pos, neg):
        final, integ, ext_id, ext_it, explicit = self.forward()
        nu = self.n_users
        u, p, n = final[users], final[nu:][pos], final[nu:][neg]
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1))
        loss = loss + self.reg_weight_1 * squared_l2(u, p, n, batch_size=self.batch_size)

        # Positives observed in every modality (all positives, duplicates kept, without masks).
        tv = torch.unique(pos[self.complete_mask[pos]]) if self.missing_modal else pos
        users_d = distinct(users)  # once for the four user terms
        if len(tv) > 1:
            loss = loss + self.vt_loss * self.alignment(explicit, tv)
            bm_items = batch_info_nce(integ[nu:], ext_id[nu:], tv, self.bm_temp)
        else:
            bm_items = 0.0
        loss = loss + self.bm_loss * (batch_info_nce(integ[:nu], ext_id[:nu], users_d, self.bm_temp) + bm_items)

        integ_u, ext_it_u = integ[:nu], ext_it[:nu]
        um = batch_info_nce(ext_it_u, integ_u, users_d, self.um_temp) + \
            self._noise_nce(integ_u, users_d) + self._noise_nce(ext_it_u, users_d)
        loss = loss + self.um_loss * um
        return loss + self.reg_weight_2 * 0.5 * ext_it[nu:][pos].pow(2).sum() / self.batch_size

    def scoring_vectors(self):
        final = self.forward()[0]
        return final[:self.n_users], final[self.n_users:]
