"""SLMRec: self-supervised learning for multimedia recommendation (Tao et al., IEEE TMM 2022).

LightGCN branches for the ID view and each modality view, fused by concatenation, trained with an
in-batch softmax loss and a fine-and-coarse alignment of the ID view with the modality views.
Missing modalities: imputed features; the alignment rows are chosen by the mask. Details, options
and the reference defects it can fix: docs/models/SLMRec.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.sparse import spmm
from models.graphs.user_item import ui_adjacency
from models.layers import xavier_linear, xavier_table
from models.losses import ce_nce
from models.registry import register


@register("SLMRec")
class SLMRec(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.n_layers = int(config["layer_num"])
        self.temp = float(config["temp"])
        self.ssl_temp = float(config["ssl_temp"])
        self.ssl_alpha = float(config["ssl_alpha"])
        self.fix_fac_mask = bool(config.get("fix_fac_mask", False))
        self.fix_stale_eval = bool(config.get("fix_stale_eval", False))
        self.order = Modalities(task.modalities)  # fusion order: id, v, t, a
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        for m in self.order:
            self.register_buffer(f"feat_{m}", F.normalize(task.features[m], dim=1), persistent=False)
        self.dense = nn.ModuleDict({m: xavier_linear(task.features[m].shape[1], d) for m in self.order})
        width = d * (self.order.count + 1)
        self.user_fusion = xavier_linear(width, d)
        self.item_fusion = xavier_linear(width, d)
        # fine-and-coarse heads: id<->image at 64 dims, then (id,image)<->text at 32 dims
        self.g_i_iv = xavier_linear(d, d)
        self.g_v_iv = xavier_linear(d, d)
        self.g_iv_iva = xavier_linear(d, d)
        self.g_iva_ivat = xavier_linear(d, d // 2)
        self.g_t_ivat = xavier_linear(d, d // 2)
        self.adj = ui_adjacency(task)
        # FAC row selection per modality (v, t): items whose rows enter the loss
        self.fac_rows = {}
        for m in ("v", "t"):
            miss = torch.from_numpy(task.missing[m]).to(self.device)
            if not task.missing_modal:
                rows = None                                   # nothing masked: every row
            elif self.fix_fac_mask:
                rows = ~miss                                  # observed modality
            elif not self.order.has_audio:
                rows = miss                                   # reference (2 modalities): inverted mask
            else:
                rows = None                                   # reference (3 modalities): every row
            self.fac_rows[m] = rows
        self._cached = None

    def compute(self):
        """Fused user and item vectors, and the per-view item embeddings {id, v, t, a}."""
        d = self.user_embedding.shape[1]
        k = self.order.count + 1
        items = torch.cat([self.item_embedding] + [self.dense[m](getattr(self, f"feat_{m}")) for m in self.order], 1)
        ego = torch.cat([self.user_embedding.repeat(1, k), items], dim=0)
        out, e = ego, ego  # LightGCN mean of layers 0..L, accumulated (no stacked copy)
        for _ in range(self.n_layers):
            e = spmm(self.adj, e)
            out = out + e
        out = out / (self.n_layers + 1)
        u_all, i_all = out[:self.n_users], out[self.n_users:]
        views = {name: i_all[:, j * d:(j + 1) * d] for j, name in enumerate(("id",) + self.order)}
        return self.user_fusion(u_all), self.item_fusion(i_all), views

    def _rows(self, m, idx):
        sel = self.fac_rows[m]
        return None if sel is None else sel[idx]

    def fac_loss(self, views, idx):
        a = self.g_i_iv(views["id"][idx])
        b_v = self.g_v_iv(views["v"][idx])
        loss = self._ce(a, b_v, self._rows("v", idx), idx)
        c = self.g_iva_ivat(self.g_iv_iva(a))
        b_t = self.g_t_ivat(views["t"][idx])
        return loss + self._ce(c, b_t, self._rows("t", idx), idx)

    def _ce(self, a, b, rows, idx):
        if rows is not None and not bool(rows.any()):
            return a.sum() * 0.0  # no row selected: no term (the reference would produce NaN)
        return ce_nce(a, b, self.ssl_temp, rows, a_ids=idx, b_ids=idx)

    def calculate_loss(self, users, pos, neg):
        user, item, views = self.compute()
        if not self.fix_stale_eval:
            self._cached = (user.detach(), item.detach())
        main = ce_nce(F.normalize(user[users], dim=1), F.normalize(item[pos], dim=1), self.temp,
                      a_ids=users, b_ids=pos)  # duplicate users/items folded exactly
        return main + self.ssl_alpha * self.fac_loss(views, pos)

    def scoring_vectors(self):
        # the reference scores with the vectors cached by the last training batch (stale)
        if self.fix_stale_eval or self._cached is None:
            user, item, _ = self.compute()
            return user, item
        return self._cached

    def full_sort_predict(self, users):
        return torch.sigmoid(super().full_sort_predict(users))
