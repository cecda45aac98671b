"""FREEDOM: a frozen feature kNN item graph and a degree-sensitively pruned user-item graph
(Zhou & Shen, ACM MM 2023).

Items are their LightGCN embedding (propagated on a user-item graph re-pruned every epoch) plus
their ID embedding averaged over their feature neighbours on an item graph built once from the
features; each modality's projected features are ranked for the user by an auxiliary BPR term.
Missing modalities: imputed features, missing items isolated before the top-k of their modality's
graph; new items are scored through their feature neighbours. Details, options and the choices
made where the reference has no counterpart: docs/models/FREEDOM.md.
"""
from __future__ import annotations

import scipy.sparse as sp
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.knn import built_on, knn_graph
from models.graphs.propagation import lightgcn_backbone
from models.graphs.sparse import binary_sym_normalize, sparse_with_transpose, spmm_t
from models.graphs.user_item import EdgeDropper, ui_adjacency
from models.layers import xavier_table
from models.losses import bpr_loss
from models.registry import register

# Where a modality's missing items leave its kNN graph: ``before`` the ranking (the others keep k
# present neighbours), ``after`` it (links to them are cut, so the others may keep fewer), or
# ``none`` (their imputed rows are ranked like any other).
ISOLATION = ("before", "after", "none")


def modality_weights(mods: Modalities, image_weight: float) -> dict[str, float]:
    """The share of each modality's graph in the item graph: the image graph ``image_weight``,
    the others (text, audio) an equal part of the rest; a single modality takes it all."""
    if "v" not in mods or len(mods) == 1:
        return {m: 1.0 / len(mods) for m in mods}
    rest = (1.0 - image_weight) / (len(mods) - 1)
    return {m: image_weight if m == "v" else rest for m in mods}


def neighbour_graph(task, modality: str, k: int, isolation: str) -> sp.csr_matrix:
    """The top-k cosine graph of one modality as a binary pattern (each item and its k most
    similar items, itself included), normalised (r_i r_j)^{-1/2} by the entries per row r; cached
    by the features (and the mask) it is built from. An isolated item keeps only its self-loop."""
    if isolation not in ISOLATION:
        raise ValueError(f"FREEDOM: isolate_missing must be one of {ISOLATION}, got {isolation!r}")
    x = task.features[modality].detach()  # built where the features live
    inputs = (f"features:{modality}",) + (("missing",) if isolation != "none" else ())

    def build():
        flags = task.missing[modality] if isolation != "none" else None
        g = knn_graph(x, k, normalize=False, isolate_before=flags if isolation == "before" else None,
                      isolate_after=flags if isolation == "after" else None)
        return binary_sym_normalize(g)

    params = {"modality": modality, "k": int(k), "isolation": isolation, "weights": "binary_sym", **built_on(x)}
    return task.cached("knn_binary_graph", params, inputs, build)


@register("FREEDOM")
class FREEDOM(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        feat_dim = int(config["feat_embed_dim"])
        if feat_dim != d:
            raise ValueError(f"FREEDOM scores users against projected features: feat_embed_dim ({feat_dim}) "
                             f"must equal embedding_size ({d})")
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.dropout = float(config["dropout"])
        self.mods = Modalities(task.modalities)

        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        # The raw features are trainable (they move only through the auxiliary BPR terms); the
        # item graph is built from their values before training and never rebuilt.
        self.features = nn.ParameterDict({m: nn.Parameter(task.features[m].clone()) for m in self.mods})
        self.trs = nn.ModuleDict({m: nn.Linear(task.features[m].shape[1], feat_dim) for m in self.mods})

        self.adj = ui_adjacency(task)
        weights = modality_weights(self.mods, float(config["mm_image_weight"]))
        k, isolation = int(config["knn_k"]), str(config["isolate_missing"])
        item_graph = None
        for m in self.mods:
            g = weights[m] * neighbour_graph(task, m, k, isolation)
            item_graph = g if item_graph is None else item_graph + g
        self.item_graph = sparse_with_transpose(item_graph, self.device)  # directed: its transpose for backward

        self.dropper = EdgeDropper(task)
        # the same expression as the reference, so the kept count rounds the same way
        self.keep = int(self.dropper.n_edges * (1. - self.dropout))
        self.train_adj = None  # the pruned graph of the current epoch (pre_epoch)

    def pre_epoch(self, epoch: int) -> None:
        """Draw this epoch's pruned user-item graph: ``keep`` edges without replacement, each with
        probability proportional to (d_u d_i)^{-1/2}, so edges between popular nodes go first;
        degrees recomputed on the kept edges."""
        self.train_adj = self.adj if self.dropout <= 0 else self.dropper.sample(self.keep, weighted=True)

    def forward(self, adj):
        """(users, items): LightGCN on ``adj`` plus, for items, their ID embedding propagated
        ``n_mm_layers`` times on the frozen item graph."""
        h = self.item_embedding
        for _ in range(self.n_mm_layers):
            h = spmm_t(*self.item_graph, h)
        users, items = lightgcn_backbone(adj, self.user_embedding, self.item_embedding, self.n_ui_layers)
        return users, items + h

    def calculate_loss(self, users, pos, neg):
        if self.train_adj is None:  # a loss before the first epoch hook: draw the graph now
            self.pre_epoch(0)
        u_all, i_all = self.forward(self.train_adj)
        u = u_all.index_select(0, users)
        loss = bpr_loss((u * i_all.index_select(0, pos)).sum(1), (u * i_all.index_select(0, neg)).sum(1))
        if not self.reg_weight:  # the auxiliary terms weigh nothing: their parameters get no gradient either way
            return loss
        aux = None
        for m in self.mods:
            # only the batch's rows are projected: the same values as projecting the whole table
            p = self.trs[m](self.features[m].index_select(0, pos))
            n = self.trs[m](self.features[m].index_select(0, neg))
            term = bpr_loss((u * p).sum(1), (u * n).sum(1))
            aux = term if aux is None else aux + term
        return loss + self.reg_weight * aux

    def scoring_vectors(self):
        return self.forward(self.adj)
