"""MMGCN: one graph convolution network per modality on the user-item graph, outputs averaged
(Wei et al., ACM MM 2019).

Missing modalities: imputed features (the official TikTok run applies no mask to this model; here
the protocol masks for every model). Details, options and the reference defects it can fix:
docs/models/MMGCN.md.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.base import Recommender
from data_prep.modalities import Modalities
from models.graphs.sparse import spmm
from models.graphs.user_item import ui_mean_adjacency
from models.layers import xavier_normal
from models.losses import bpr_loss
from models.registry import register

N_LAYERS = 3          # hard-coded in the reference (config n_layers is ignored)
IMAGE_LATENT = 256    # the image branch's MLP width (dim_latent)


class ModalityGCN(nn.Module):
    """The three-layer graph network of one modality."""

    def __init__(self, features, n_users, d_id, mean_adj, has_nb, latent=None, bias_and_norm=True,
                 trainable_preference=False):
        super().__init__()
        self.n_users = n_users
        self.mean_adj = mean_adj
        self.bias_and_norm = bias_and_norm
        self.register_buffer("has_nb", has_nb, persistent=False)
        self.register_buffer("features", features, persistent=False)
        width = latent or features.shape[1]
        pref = xavier_normal(n_users, width)
        if trainable_preference:
            self.preference = nn.Parameter(pref)
        else:
            self.register_buffer("preference", pref)
        self.mlp = nn.Linear(features.shape[1], latent) if latent else None
        dims = [(width, width)] + [(d_id, d_id)] * (N_LAYERS - 1)
        self.conv_w = nn.ParameterList([nn.Parameter(xavier_normal(i, o)) for i, o in dims])
        self.conv_b = nn.ParameterList([nn.Parameter(torch.zeros(o)) for _, o in dims]) if bias_and_norm else None
        self.lin = nn.ModuleList([nn.Linear(i, d_id) for i, _ in dims])
        self.gate = nn.ModuleList([nn.Linear(o + d_id, d_id) for _, o in dims])
        for layer in self.lin:
            nn.init.xavier_normal_(layer.weight)
        nn.init.xavier_normal_(self.gate[0].weight)  # gate layers 2-3 keep PyTorch's default init
        # Constant first-layer input (text/audio with fixed preferences): aggregate it once.
        self._x0 = self._agg0 = None
        if self.mlp is None and not trainable_preference:
            with torch.no_grad():
                self._x0 = self.layer_input()
                self._agg0 = spmm(mean_adj, self._x0)

    def layer_input(self):
        content = self.mlp(self.features) if self.mlp is not None else self.features
        return F.normalize(torch.cat([self.preference, content], dim=0), dim=1)

    def conv(self, layer, x, agg=None):
        z = (spmm(self.mean_adj, x) if agg is None else agg) @ self.conv_w[layer]
        if self.bias_and_norm:
            z = F.normalize(z + self.has_nb * self.conv_b[layer], dim=1)
        return z

    def forward(self, id_embedding):
        if self._x0 is not None:
            x, agg = self._x0, self._agg0
        else:
            x, agg = self.layer_input(), None
        for layer in range(N_LAYERS):
            h = F.leaky_relu(self.conv(layer, x, agg if layer == 0 else None))
            x_hat = F.leaky_relu(self.lin[layer](x)) + id_embedding
            x = F.leaky_relu(self.gate[layer](torch.cat([h, x_hat], dim=1)))
        return x


@register("MMGCN")
class MMGCN(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.fix_embeddings = bool(config.get("fix_untrained_embeddings", False))
        self.fix_stale_eval = bool(config.get("fix_stale_eval", False))
        n_nodes = self.n_users + self.n_items
        mean_adj = ui_mean_adjacency(task)
        deg = torch.from_numpy(np.concatenate([task.user_degree(), task.item_degree()]))
        has_nb = (deg > 0).float().unsqueeze(1).to(self.device)
        # 3-modality data runs the reference's PyG layer (no bias, no normalisation).
        mods = Modalities(task.modalities)
        bias_and_norm = not mods.has_audio
        self.branches = nn.ModuleDict({
            m: ModalityGCN(task.features[m], self.n_users, d, mean_adj, has_nb,
                           latent=IMAGE_LATENT if m == "v" else None, bias_and_norm=bias_and_norm,
                           trainable_preference=self.fix_embeddings)
            for m in mods})
        id_emb = xavier_normal(n_nodes, d)
        if self.fix_embeddings:
            self.id_embedding = nn.Parameter(id_emb)
        else:
            self.register_buffer("id_embedding", id_emb)
        self._cached = None  # representation of the last training batch (the reference's self.result)

    def forward(self):
        reps = [branch(self.id_embedding) for branch in self.branches.values()]
        return torch.stack(reps, dim=0).mean(dim=0)

    def calculate_loss(self, users, pos, neg):
        rep = self.forward()
        if not self.fix_stale_eval:
            self._cached = rep.detach()
        u, p, n = rep[torch.cat([users, self.n_users + pos, self.n_users + neg])].split(len(users))  # one gather
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1))
        if self.reg_weight:
            e_u, e_p, e_n = (self.id_embedding[i] for i in (users, self.n_users + pos, self.n_users + neg))
            # mean over the interleaved (user, item) rows of E_u² + E_i², as the reference
            reg = (2 * e_u.pow(2).sum() + e_p.pow(2).sum() + e_n.pow(2).sum()) / (2 * e_u.numel())
            reg = reg + sum(b.preference.pow(2).mean() for b in self.branches.values())
            loss = loss + self.reg_weight * reg
        return loss

    def scoring_vectors(self):
        # the reference scores with the representation cached by the last training batch (stale)
        rep = self.forward() if self.fix_stale_eval or self._cached is None else self._cached
        return rep[:self.n_users], rep[self.n_users:]
