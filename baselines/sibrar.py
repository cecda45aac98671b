"""SiBraR: one shared ("single-branch") network for item IDs and every modality, trained on randomly
sampled modality pairs (Ganhör et al., RecSys 2024; as implemented in the DGMRec release).

Missing modalities: imputed features, sampled like observed ones unless fixed. Details, options and
the reference defects it can fix: docs/models/SIBRAR.md.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.layers import xavier_table
from models.losses import bpr_loss
from models.registry import register


@register("SIBRAR")
class SIBRAR(Recommender):
    group = "missing-modality-aware"
    uses_features = True
    handles_missing = "impute"  # the reference mean-imputes masked rows before anything else

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])  # 64, hard-coded in the reference
        self.mods = Modalities(task.modalities)
        self.temp = float(config["temp"])
        self.lamb = float(config["lamb"])
        self.fix_sampling = bool(config["fix_modality_sampling"])
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        self.features = nn.ParameterDict({m: nn.Parameter(self.feature(m).float().clone()) for m in self.mods})
        self.proj = nn.ModuleDict({m: nn.Linear(self.features[m].shape[1], d) for m in self.mods})
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)
        # Sources in the reference's order: id, then the modalities; which ones each item really has.
        avail = np.stack([np.ones(self.n_items, dtype=bool)] + [~task.missing[m] for m in self.mods], axis=1)
        self.register_buffer("available", torch.as_tensor(avail, device=self.device), persistent=False)

    def branch(self, x):
        """The shared network f(x) = fc2(relu(fc1(x))) (dropout p = 0 in the reference)."""
        return self.fc2(F.relu(self.fc1(x)))

    def sources(self, rows=None):
        """(n, 1 + M, d): f(id) unnormalised, then normalised f(projection) per modality."""
        pick = (lambda t: t) if rows is None else (lambda t: t.index_select(0, rows))
        out = [self.branch(pick(self.item_embedding))]
        out += [F.normalize(self.branch(self.proj[m](pick(self.features[m]))), dim=1) for m in self.mods]
        return torch.stack(out, dim=1)

    def sample_sources(self, pos):
        """Per row an ordered pair (k1, k2) of distinct sources, uniform among the allowed ones.

        Reference: every source is allowed for every item. ``fix_modality_sampling``: only the
        positive item's observed modalities (and its id); rows with a single allowed source get
        k2 = -1 (unused). Uniform random keys, sorted, give a uniform random ordering.
        """
        n_src = 1 + self.mods.count
        keys = torch.rand(len(pos), n_src, device=pos.device)
        if self.fix_sampling:
            keys = torch.where(self.available[pos], keys, torch.full_like(keys, -1.0))
        order = torch.argsort(keys, dim=1, descending=True)
        k1, k2 = order[:, 0], order[:, 1]
        if self.fix_sampling:
            k2 = torch.where(self.available[pos].sum(1) >= 2, k2, torch.full_like(k2, -1))
        return k1, k2

    def calculate_loss(self, users, pos, neg):
        rows, inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        src = self.sources(rows)  # only the batch's items: the same values and gradients as all items
        n_src, d = src.shape[1], src.shape[2]
        flat = src.reshape(-1, d)  # row (item r, source k) at r * n_src + k
        ip, ineg = inv[:len(pos)] * n_src, inv[len(pos):] * n_src
        k1, k2 = self.sample_sources(pos)
        two = k2 >= 0
        k2c = k2.clamp(min=0)
        p1, p2 = flat.index_select(0, ip + k1), flat.index_select(0, ip + k2c)
        n1, n2 = flat.index_select(0, ineg + k1), flat.index_select(0, ineg + k2c)
        w = two.unsqueeze(1).to(p2.dtype)
        u = self.user_embedding.index_select(0, users)
        loss = bpr_loss((u * (p1 + w * p2)).sum(1), (u * (n1 + w * n2)).sum(1))
        pos_s = (p1 * p2).sum(1) / self.temp
        neg_1 = (p1 * n2).sum(1) / self.temp
        neg_2 = (p2 * n1).sum(1) / self.temp
        info = (torch.logaddexp(pos_s, neg_1) - pos_s) + (torch.logaddexp(pos_s, neg_2) - pos_s)
        if not self.fix_sampling:  # every row has two sources (no host read of ``two``)
            info = info.mean()
        elif two.all():
            info = info.mean()
        else:
            info = info[two].mean() if two.any() else info.new_zeros(())
        return loss + self.lamb * info

    def item_vectors(self):
        src = self.sources()
        if not self.fix_sampling:
            return src.mean(dim=1)  # every source, imputed ones included
        w = self.available.to(src.dtype)
        return (src * w.unsqueeze(2)).sum(1) / w.sum(1, keepdim=True)

    def scoring_vectors(self):
        return self.user_embedding, self.item_vectors()
