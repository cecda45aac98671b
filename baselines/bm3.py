"""BM3: bootstrap latent representations for multi-modal recommendation (Zhou et al., WWW 2023).

Negative-free training: online user, item and modality vectors are pulled by cosine similarity
toward dropout-perturbed, stop-gradient copies through a shared predictor; modalities shape the ID
embeddings but do not enter scoring. Missing modalities: imputed features, and with two
modalities the online projections of missing items are zeroed. Details, options and the
reference defects it can fix: docs/models/BM3.md.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.propagation import lightgcn_backbone
from models.graphs.user_item import ui_adjacency
from models.layers import xavier_table
from models.losses import emb_norm
from models.registry import register


def _bootstrap(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity of row-aligned online and (stop-gradient) target vectors."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


@register("BM3")
class BM3(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.cl_weight = float(config["cl_weight"])
        self.dropout = float(config["dropout"])
        self.fix_new_item_scores = bool(config.get("fix_new_item_scores", False))
        fix_audio_init = bool(config.get("fix_audio_init", False))
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        new = torch.from_numpy(np.asarray(task.new_items, dtype=bool))
        with torch.no_grad():
            self.item_embedding[new] = 0.0                 # new items start (and stay) at zero
        self.register_buffer("new_items", new.to(self.device), persistent=False)
        self.adj = ui_adjacency(task)
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)
        self.order = Modalities(task.modalities)
        # raw features are trainable parameters (Embedding.from_pretrained(freeze=False) in the reference)
        self.raw = nn.ParameterDict({m: nn.Parameter(task.features[m].clone()) for m in self.order})
        self.trs = nn.ModuleDict({m: nn.Linear(task.features[m].shape[1], d) for m in self.order})
        for m in ("v", "t"):
            if m in self.trs:
                nn.init.xavier_normal_(self.trs[m].weight)
        if "a" in self.trs:
            nn.init.xavier_normal_(self.trs["a" if fix_audio_init else "t"].weight)
        # 2-modality data: zero the online projections of items missing the modality
        self.keep = {}
        if not self.order.has_audio and task.missing_modal:
            self.keep = {m: torch.from_numpy(~task.missing[m]).float().unsqueeze(1).to(self.device)
                         for m in self.order}

    def forward(self):
        users, items = lightgcn_backbone(self.adj, self.user_embedding, self.item_embedding, self.n_layers)
        return users, items + self.item_embedding

    def projections(self, items=None):
        """T_m(Φ_m) of every item (or of ``items``), zeroed where the 2-modality mask says missing."""
        feats = {}
        for m in self.order:
            raw = self.raw[m] if items is None else self.raw[m][items]
            f = self.trs[m](raw)
            if m in self.keep:
                f = f * (self.keep[m] if items is None else self.keep[m][items])
            feats[m] = f
        return feats

    def calculate_loss(self, users, pos, neg):
        items = pos
        u_on, i_on = self.forward()
        # modality projections are row-wise: project the batch's distinct items only
        uniq, inv = torch.unique(items, return_inverse=True)
        u_uniq, u_inv = torch.unique(users, return_inverse=True)
        feats = self.projections(uniq)
        with torch.no_grad():
            # dropout targets, drawn for the distinct rows the batch uses (repeated rows share a mask,
            # as when the reference drops out the full matrices and then gathers)
            u_tg = F.dropout(u_on[u_uniq], self.dropout)[u_inv]
            i_tg = F.dropout(i_on[uniq], self.dropout)[inv]
            f_tg = {m: F.dropout(f, self.dropout)[inv] for m, f in feats.items()}
        loss = _bootstrap(self.predictor(u_on[users]), i_tg) + _bootstrap(self.predictor(i_on[items]), u_tg)
        loss = loss + self.reg_weight * emb_norm(u_on, i_on)
        cl = 0.0
        for m, f in feats.items():
            g = self.predictor(f)[inv]
            cl = cl + _bootstrap(g, i_tg) + _bootstrap(g, f_tg[m])
        return loss + self.cl_weight * cl

    def scoring_vectors(self):
        u_on, i_on = self.forward()
        u, i = self.predictor(u_on), self.predictor(i_on)
        if self.fix_new_item_scores and bool(self.new_items.any()):
            content = torch.stack([self.predictor(self.trs[m](self.raw[m][self.new_items])) for m in self.order])
            i = i.clone()
            i[self.new_items] = content.mean(dim=0)
        return u, i
