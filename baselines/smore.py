"""SMORE: spectrum-based modality representation fusion (Ong & Khong, WSDM 2025).

Projected modality features are filtered in the frequency domain (one learned complex filter per
modality) and fused there (the product of their spectra times a fusion filter); each result gates
the item ID embedding, which is propagated on a feature kNN graph per modality and on their
max-pooled fusion graph. Attention from the fusion view and behaviour-gated preferences combine the
views into a side embedding added to a LightGCN embedding and contrasted with it. Missing
modalities: imputed features, missing items isolated before the top-k of each modality graph.
Details, options and the choices for new items and audio: docs/models/SMORE.md.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from data_prep.modalities import NAMES, Modalities
from models.base import Recommender
from models.graphs.knn import built_on, cached_knn_graph, drop_items, knn_graph
from models.graphs.propagation import lightgcn
from models.graphs.sparse import sparse_with_transpose, spmm_t
from models.graphs.user_item import ui_adjacency, ui_sym_scipy, user_item_block
from models.layers import xavier_table
from models.losses import bpr_loss, info_nce, squared_l2
from models.registry import register


def max_pool_union(graphs: list) -> sp.csr_matrix:
    """The entrywise maximum of sparse graphs over the union of their entries: an entry present in
    one graph only keeps its own value (also when negative: absent entries are not zeros here)."""
    coos = [sp.coo_matrix(g) for g in graphs]
    n = coos[0].shape[0]
    keys = np.concatenate([c.row.astype(np.int64) * n + c.col for c in coos])
    vals = np.concatenate([c.data for c in coos]).astype(np.float32)
    uniq, inverse = np.unique(keys, return_inverse=True)
    best = np.full(len(uniq), -np.inf, dtype=np.float32)
    np.maximum.at(best, inverse, vals)
    return sp.csr_matrix((best, (uniq // n, uniq % n)), shape=coos[0].shape)


def filtered(spectrum: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
    """A spectrum (rfft over the embedding axis, orthonormal) times a learned complex filter, back
    to ``dim`` real coordinates; ``weight`` holds the filter as (…, 2) real pairs."""
    return torch.fft.irfft(spectrum * torch.view_as_complex(weight), n=dim, dim=1, norm="ortho")


@register("SMORE")
class SMORE(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = self.dim = int(config["embedding_size"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.cl_weight = float(config["cl_loss"])
        self.cl_temp = float(config["cl_temperature"])
        self.batch_size = int(config["train_batch_size"])
        self.mods = Modalities(task.modalities)
        self.knn_k = {m: int(config[f"{NAMES[m]}_knn_k"]) for m in self.mods}

        # Parameters in the order of the reference (its ID tables, raw features, projections,
        # queries, gates, preference gates, filters), so that the Linear layers and the filters
        # draw the same random numbers as there after the same seed.
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        self.features = nn.ParameterDict({m: nn.Parameter(task.features[m].clone()) for m in self.mods})
        self.trs = nn.ModuleDict({m: nn.Linear(task.features[m].shape[1], d) for m in self.mods})
        self.query = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False))
                                    for m in self.mods})
        self.gate = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.mods})
        self.gate_fusion = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
        self.prefer = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.mods})
        self.prefer_fusion = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
        self.filters = nn.ParameterDict({m: nn.Parameter(torch.randn(1, d // 2 + 1, 2)) for m in self.mods})
        self.fusion_filter = nn.Parameter(torch.randn(1, d // 2 + 1, 2))
        self.dropout = nn.Dropout(p=float(config["dropout_rate"]))

        self.adj = ui_adjacency(task)
        self.r_hat = sparse_with_transpose(user_item_block(ui_sym_scipy(task), self.n_users), self.device)
        self.graphs, self.fusion_graph = self._item_graphs(task, train_new=False)
        self.new_mode = task.new_item_mode
        if self.new_mode:
            # New items have no training rows: their ID rows would stay at their random start and
            # only add noise to their scores; zeroed, a new item is scored from its feature
            # neighbours in the prediction graphs. No training graph links to them.
            with torch.no_grad():
                self.item_embedding[torch.from_numpy(task.new_items)] = 0.0
            self.train_graphs, self.train_fusion_graph = self._item_graphs(task, train_new=True)

    # ------------------------------------------------------------------ graphs
    def _modality_graph(self, task, m: str, train_new: bool) -> sp.csr_matrix:
        """The kNN graph of modality m: missing items isolated before the top-k; for new-item
        training also the new items, whose rows and columns are then removed (no self-loop)."""
        if not train_new:
            return cached_knn_graph(task, m, self.knn_k[m], "before")
        x = task.features[m].detach()

        def build():
            flagged = task.missing[m] | task.new_items
            return drop_items(knn_graph(x, self.knn_k[m], isolate_before=flagged), task.new_items)

        params = {"modality": m, "k": self.knn_k[m], "mask": "before+new_items", **built_on(x)}
        return task.cached("knn_graph", params, (f"features:{m}", "missing", "new_items"), build)

    def _item_graphs(self, task, train_new: bool):
        """(modality -> (graph, transpose)), (fusion graph, transpose): the fusion graph is the
        max-pooled union of the modality graphs."""
        graphs = {m: self._modality_graph(task, m, train_new) for m in self.mods}
        inputs = tuple(f"features:{m}" for m in self.mods) + ("missing",) + (("new_items",) if train_new else ())
        params = {"k": self.knn_k, "train_new": train_new,
                  **built_on(task.features[self.mods[0]])}
        fusion = task.cached("smore_fusion_graph", params, inputs, lambda: max_pool_union(list(graphs.values())))
        return ({m: sparse_with_transpose(g, self.device) for m, g in graphs.items()},
                sparse_with_transpose(fusion, self.device))

    # ------------------------------------------------------------------ forward
    def _item_view(self, z: torch.Tensor, graph) -> torch.Tensor:
        """z propagated ``n_layers`` times on an item graph, users gathering it through R̂: (U+I)×d."""
        for _ in range(self.n_layers):
            z = spmm_t(*graph, z)
        return torch.cat([spmm_t(*self.r_hat, z), z], dim=0)

    def forward(self):
        """(final users, final items, side view, LightGCN view); views are (U+I)×d."""
        train_new = self.new_mode and self.training
        graphs = self.train_graphs if train_new else self.graphs
        fusion_graph = self.train_fusion_graph if train_new else self.fusion_graph

        spectra = [torch.fft.rfft(self.trs[m](self.features[m]), dim=1, norm="ortho") for m in self.mods]
        joint = spectra[0]
        for s in spectra[1:]:  # fusion: the product of the modality spectra
            joint = joint * s
        views = {m: self._item_view(self.item_embedding * self.gate[m](filtered(s, self.filters[m], self.dim)),
                                    graphs[m]) for m, s in zip(self.mods, spectra)}
        fused = filtered(joint, self.fusion_filter, self.dim)
        fusion_view = self._item_view(self.item_embedding * self.gate_fusion(fused), fusion_graph)
        content = lightgcn(self.adj, torch.cat([self.user_embedding, self.item_embedding], dim=0), self.n_ui_layers)

        # Per-node softmax over the embedding coordinates of a query of the fusion view, one
        # query per modality (the reference's attention), then behaviour-gated preferences.
        prefer = [self.dropout(self.prefer[m](content)) for m in self.mods]
        prefer_fusion = self.dropout(self.prefer_fusion(content))
        parts = [p * (torch.softmax(self.query[m](fusion_view), dim=-1) * views[m]) for m, p in zip(self.mods, prefer)]
        side = torch.stack(parts + [prefer_fusion * fusion_view]).mean(dim=0)
        final = content + side
        return final[:self.n_users], final[self.n_users:], side, content

    def calculate_loss(self, users, pos, neg):
        u_all, i_all, side, content = self.forward()
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1))
        loss = loss + self.reg_weight * squared_l2(u, p, n, batch_size=self.batch_size)
        nu = self.n_users
        # batch rows as they come (duplicates included): no host wait for the distinct ids
        cl = info_nce(side[nu:][pos], content[nu:][pos], self.cl_temp) + \
            info_nce(side[:nu][users], content[:nu][users], self.cl_temp)
        return loss + self.cl_weight * cl

    def scoring_vectors(self):
        u, i, _, _ = self.forward()
        return u, i
