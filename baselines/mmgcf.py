"""MMGCF: multimodal graph collaborative filtering by late fusion (UMAP 2026).

LightGCN embeddings of users and items; each item's propagated ID vector is fused, after the
graph, with linear projections of its frozen modality features (mean, sum or a concatenation
layer; equal, learned-gate or normalised weights). Training uses a degree-sensitive edge-dropped
graph redrawn every epoch, scoring the full graph. Missing modalities: imputed features (no
feature graph is built). Details, options and the reference defects it can fix:
docs/models/MMGCF.md.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.propagation import lightgcn_backbone
from models.graphs.user_item import EdgeDropper, ui_adjacency
from models.layers import xavier_table
from models.losses import bpr_loss, squared_l2
from models.registry import register

FUSIONS = ("mean", "sum", "concat")
WEIGHTINGS = ("equal", "alpha", "normalized")


@register("MMGCF")
class MMGCF(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        f = int(config["feat_embed_dim"])
        self.n_layers = int(config["n_ui_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.fusion = str(config["fusion_mode"])
        self.weighting = str(config["weighting"])
        self.drop_ratio = float(config["dropout"])
        self.fix_new_item_ids = bool(config["fix_new_item_ids"])
        if self.fusion not in FUSIONS:
            raise ValueError(f"MMGCF: fusion_mode must be one of {FUSIONS}, got {self.fusion!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"MMGCF: weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.fusion != "concat" and f != d:
            raise ValueError(f"MMGCF: fusion_mode {self.fusion!r} adds ID and modality vectors elementwise, "
                             f"so feat_embed_dim ({f}) must equal embedding_size ({d})")
        self.mods = Modalities(task.modalities)
        n_mod = len(self.mods)

        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        for m in self.mods:  # frozen features (Embedding.from_pretrained(freeze=True) in the reference)
            self.register_buffer(f"feat_{m}", self.feature(m).float().clone(), persistent=False)
        self.trs = nn.ModuleDict({m: nn.Linear(self.feature(m).shape[1], f) for m in self.mods})
        if self.weighting == "alpha":
            self.mm_alpha = nn.Parameter(torch.tensor(0.0))  # σ(0) = 1/2: ID and modalities start equal
        # The concatenation layer the weighting uses: all vectors at once, or (equal) the modalities
        # first and then the ID vector with their fusion.
        if self.fusion == "concat":
            if self.weighting == "equal":
                if n_mod > 1:
                    self.mm_concat = nn.Linear(n_mod * f, f)
                self.id_mm_concat = nn.Linear(d + f, d)
            else:
                self.all_concat = nn.Linear(d + n_mod * f, d)

        self.adj = ui_adjacency(task)
        self.dropper = EdgeDropper(task)
        self.keep = int(self.dropper.n_edges * (1.0 - self.drop_ratio))
        self.train_adj = self.adj
        # items with training rows; the others (new items) have an ID row that never trains
        self.register_buffer("trained", torch.from_numpy(~np.asarray(task.new_items, dtype=bool))
                             .float().unsqueeze(1).to(self.device), persistent=False)

    # ------------------------------------------------------------------ graph
    def pre_epoch(self, epoch: int) -> None:
        """A new training graph each epoch: ``keep`` edges drawn without replacement with probability
        proportional to 1/sqrt(d_u d_i), renormalised on the kept edges (the full graph at ratio 0)."""
        self.train_adj = self.dropper.sample(self.keep) if self.drop_ratio > 0 else self.adj

    def propagate(self, adj):
        return lightgcn_backbone(adj, self.user_embedding, self.item_embedding, self.n_layers)

    # ------------------------------------------------------------------ fusion
    def _combine(self, vectors: list[torch.Tensor], layer: nn.Linear | None) -> torch.Tensor:
        if self.fusion == "mean":
            return torch.stack(vectors).mean(dim=0)
        if self.fusion == "sum":
            return torch.stack(vectors).sum(dim=0)
        return layer(torch.cat(vectors, dim=-1))

    def fuse(self, ids: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors: the propagated ID rows ``ids`` fused with the projected features of the same
        items (every item, or the rows ``items``; the fusion is row-wise)."""
        feats = []
        for m in self.mods:
            x = getattr(self, f"feat_{m}")
            feats.append(self.trs[m](x if items is None else x.index_select(0, items)))
        if self.fix_new_item_ids:
            ids = ids * (self.trained if items is None else self.trained.index_select(0, items))
        if self.weighting == "alpha":
            a = torch.sigmoid(self.mm_alpha)
            return self._combine([ids * a] + [v * (1.0 - a) for v in feats], getattr(self, "all_concat", None))
        if self.weighting == "normalized":
            # the ID vector weighs as much as all modalities together
            return self._combine([F.normalize(ids) * len(feats)] + [F.normalize(v) for v in feats],
                                 getattr(self, "all_concat", None))
        mm = self._combine(feats, getattr(self, "mm_concat", None)) if len(feats) > 1 else feats[0]
        return self._combine([ids, mm], getattr(self, "id_mm_concat", None))

    # ------------------------------------------------------------------ loss and scoring
    def calculate_loss(self, users, pos, neg):
        u_all, i_all = self.propagate(self.train_adj)
        items = torch.cat([pos, neg])
        i_pos, i_neg = self.fuse(i_all.index_select(0, items), items).split(len(pos))
        u = u_all.index_select(0, users)
        loss = bpr_loss((u * i_pos).sum(1), (u * i_neg).sum(1))
        # squared norms of the batch's un-propagated ID rows, halved and over the actual batch size
        reg = squared_l2(self.user_embedding.index_select(0, users), self.item_embedding.index_select(0, pos),
                         self.item_embedding.index_select(0, neg), batch_size=len(users))
        return loss + self.reg_weight * reg

    def scoring_vectors(self):
        u_all, i_all = self.propagate(self.adj)
        return u_all, self.fuse(i_all)
