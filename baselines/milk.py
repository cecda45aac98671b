"""MILK: items represented by their modality features only, trained for invariance to the modality mix
(Bai et al., SIGIR 2024; as implemented in the DGMRec release).

Missing modalities: imputed features, each item scaled by its number of observed modalities; new
items need no ID embedding. Details, options and the reference defects it can fix:
docs/models/MILK.md.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.layers import xavier_table
from models.registry import register


def _upload(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on ``device`` without waiting for the device's queue (pinned, asynchronous)."""
    t = torch.from_numpy(x)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


@register("MILK")
class MILK(Recommender):
    group = "missing-modality-aware"
    uses_features = True
    handles_missing = "impute"  # the reference mean-imputes masked rows before anything else

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.mods = Modalities(task.modalities)
        self.reg_coeff = float(config["reg_coeff"])
        self.align_coeff = float(config["align_coeff"])
        self.penalty_coeff = float(config["penalty_coeff"])
        self.alpha = float(config["alpha"])
        self.user_embedding = xavier_table(self.n_users, d)
        # Raw features are trainable (Embedding.from_pretrained(freeze=False) in the reference);
        # the two-modality path L2-normalises them after imputation, the three-modality one does not.
        feats = {}
        for m in self.mods:
            x = self.feature(m).float()
            feats[m] = nn.Parameter(x.clone() if self.mods.has_audio else F.normalize(x, dim=1))
        self.features = nn.ParameterDict(feats)
        self.proj = nn.ModuleDict({m: nn.Linear(self.features[m].shape[1], d) for m in self.mods})
        # c_i = 1 / (number of observed modalities); 0 when every modality is missing, unless fixed.
        observed = np.stack([~task.missing[m] for m in self.mods]).sum(axis=0)
        count = np.where(observed > 0, 1.0 / np.maximum(observed, 1), 0.0)
        if config["fix_zero_vectors"]:
            count[observed == 0] = 1.0 / self.mods.count
        self.register_buffer("modality_count", torch.tensor(count, dtype=torch.float32, device=self.device),
                             persistent=False)
        # Alignment pairs (x, y) as the reference orders them, and the items each pair leaves out.
        pairs = [("t", "v"), ("t", "a"), ("v", "a")] if self.mods.has_audio else [("v", "t")]
        self.pairs = [(x, y) for x, y in pairs if x in self.mods and y in self.mods]
        self._excluded = {}
        for x, y in self.pairs:
            if config["fix_align_items"]:
                bad = task.missing[x] | task.missing[y]
            else:  # only the single-missing groups are removed: 'all' (and pair groups) stay in
                bad = np.zeros(self.n_items, dtype=bool)
                for key in (x, y):
                    bad[np.asarray(task.mask_groups.get(key, []), dtype=np.int64)] = True
            self._excluded[(x, y)] = torch.as_tensor(bad, device=self.device)

    def projections(self, rows=None):
        if rows is None:
            return {m: self.proj[m](self.features[m]) for m in self.mods}
        return {m: self.proj[m](self.features[m].index_select(0, rows)) for m in self.mods}

    def environments(self):
        """Equal weights, then the cyclic shifts of one Dirichlet(α) draw (numpy's global stream)."""
        k = self.mods.count
        lam = np.random.dirichlet([self.alpha] * k)
        return [np.full(k, 1.0 / k)] + [np.roll(lam, s) for s in range(k)]

    def calculate_loss(self, users, pos, neg):
        rows, inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        f = self.projections(rows)  # only the batch's items: the same values and gradients as all items
        count = self.modality_count.index_select(0, rows)
        ip, ineg = inv[:len(pos)], inv[len(pos):]
        u = self.user_embedding.index_select(0, users)
        fp = {m: f[m].index_select(0, ip) for m in self.mods}
        fn = {m: f[m].index_select(0, ineg) for m in self.mods}
        cp, cn = count.index_select(0, ip), count.index_select(0, ineg)
        # ⟨u, c Σ_m w_m f_m⟩ = c Σ_m w_m ⟨u, f_m⟩: per-modality scores once, then one small
        # product per environment (the same values as forming every environment's item vectors).
        sp = torch.stack([(u * fp[m]).sum(1) for m in self.mods], dim=1)
        sn = torch.stack([(u * fn[m]).sum(1) for m in self.mods], dim=1)
        envs = _upload(np.stack(self.environments()), u.device).to(u.dtype)  # (E, M)
        losses = F.softplus(cn.unsqueeze(1) * (sn @ envs.T) - cp.unsqueeze(1) * (sp @ envs.T)).mean(dim=0)
        p0 = cp.unsqueeze(1) * sum(envs[0, k] * fp[m] for k, m in enumerate(self.mods))
        n0 = cn.unsqueeze(1) * sum(envs[0, k] * fn[m] for k, m in enumerate(self.mods))
        reg = 0.5 * (u.pow(2).sum() + p0.pow(2).sum() + n0.pow(2).sum()) / len(users)
        align = u.new_zeros(())
        upos = torch.unique(pos)
        upos_local = torch.searchsorted(rows, upos)
        for x, y in self.pairs:
            keep = ~self._excluded[(x, y)].index_select(0, upos)
            if keep.any():  # an empty selection would make the reference's MSE NaN
                j = upos_local[keep]
                align = align + F.mse_loss(f[x].index_select(0, j), f[y].index_select(0, j))
        return losses.sum() + self.reg_coeff * reg + self.align_coeff * align + \
            self.penalty_coeff * losses.var()

    def item_vectors(self):
        f = self.projections()
        return self.modality_count.unsqueeze(1) * sum(f[m] for m in self.mods)

    def scoring_vectors(self):
        return self.user_embedding, self.item_vectors()
