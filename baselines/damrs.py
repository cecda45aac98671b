"""DA-MRS: denoising and aligning multi-modal content and user feedback (Xv et al., KDD 2024).

A LightGCN backbone plus item embeddings propagated on denoised item graphs (a pair kept only where
it is similar in every modality) and on a co-interaction graph built from the training split;
neighbour discrimination, a preference KL and agreement-weighted BPR align the views. Missing
modalities: imputed features; with three modalities missing items are isolated in the kNN graphs.
Details, options and the reference defects it can fix: docs/models/DAMRS.md.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.item_item import cooccurrence_graph
from models.graphs.knn import built_on, denoised_knn_graphs
from models.graphs.propagation import lightgcn_backbone
from models.graphs.sparse import binary_sym_normalize, sparse_with_transpose, spmm_t
from models.graphs.user_item import ui_adjacency
from models.layers import xavier_table
from models.losses import neighbour_discrimination, symmetric_bernoulli_kl
from models.registry import register

# Pseudo-label sources per target view: (other views..., target). Two modalities: t, v, s
# (behaviour); three modalities add a.
PSEUDO_2 = {"s": ("t", "v"), "v": ("t", "s"), "t": ("v", "s")}
PSEUDO_3 = {"s": ("t", "v", "a"), "v": ("t", "a", "s"), "t": ("v", "a", "s"), "a": ("v", "t", "s")}


@register("DAMRS")
class DAMRS(Recommender):
    group = "multi-modal"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.knn_k = int(config["knn_k"])
        self.kl_weight = float(config["kl_weight"])
        self.neighbor_weight = float(config["neighbor_weight"])
        self.nd_temp = float(config["nd_temperature"])
        self.mods = Modalities(task.modalities)
        self.three = self.mods.has_audio
        # Pseudo-label / neighbour-set size: hard-coded 10 in the two-modality path, knn_k in the other.
        self.pseudo_k = self.knn_k if self.three else 10
        self.fix_mask_missing = bool(config["fix_mask_missing"])

        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        self.adj = ui_adjacency(task)

        infer = self._knn_graphs(task, exclude_new=False)
        train = self._knn_graphs(task, exclude_new=True) if task.new_item_mode else infer
        session = self._behaviour_graph(task, int(config["cooc_topk"]), int(config["cooc_min_common"]))
        # (graph, transpose) pairs: the kNN graphs are directed
        self.graphs_infer = {**{m: sparse_with_transpose(g, self.device) for m, g in zip(self.mods, infer)},
                             "s": sparse_with_transpose(session, self.device)}
        self.graphs_train = self.graphs_infer if train is infer else \
            {**{m: sparse_with_transpose(g, self.device) for m, g in zip(self.mods, train)},
             "s": self.graphs_infer["s"]}
        self.views = self.mods + ("s",)

        self.new_mode = task.new_item_mode
        old = np.flatnonzero(~task.new_items)
        self.register_buffer("candidates", torch.from_numpy(old), persistent=False)
        complete = ~np.logical_or.reduce([task.missing[m] for m in self.mods])
        self.missing_modal = task.missing_modal
        self.register_buffer("complete_mask", torch.from_numpy(complete), persistent=False)

    # ------------------------------------------------------------------ graphs
    def _knn_graphs(self, task, exclude_new: bool):
        mask_missing = (self.three or self.fix_mask_missing) and task.imputation == "mean"
        norm_eps = 1e-5 if self.three else 0.0
        inputs = tuple(f"features:{m}" for m in self.mods) + ("missing", "new_items")
        xs = [task.features[m].detach() for m in self.mods]  # on the task's device: the products run there
        params = {"modalities": list(self.mods), "k": self.knn_k, "norm_eps": norm_eps,
                  "mask_missing": bool(mask_missing), "exclude_new": bool(exclude_new), **built_on(xs[0])}

        def build():
            isolate = [task.missing[m] for m in self.mods] if mask_missing else None
            raw = denoised_knn_graphs(xs, self.knn_k, norm_eps=norm_eps, isolate=isolate,
                                      exclude=task.new_items if exclude_new else None)
            return [binary_sym_normalize(g) for g in raw]

        return task.cached("damrs_knn", params, inputs, build)

    @staticmethod
    def _behaviour_graph(task, topk: int, min_common: int):
        def build():
            c = cooccurrence_graph(task.n_items, task.train_users, task.train_items, min_common=min_common,
                                   topk=topk, n_users=task.n_users)
            return binary_sym_normalize(c + sp.eye(task.n_items, dtype=np.float32, format="csr"))

        return task.cached("cooccurrence_graph", {"topk": topk, "min_common": min_common, "self_loops": True,
                                                  "normalise": "binary_sym"}, ("train",), build)

    # ------------------------------------------------------------------ forward
    def forward(self, infer: bool):
        users, items = lightgcn_backbone(self.adj, self.user_embedding, self.item_embedding, self.n_ui_layers)
        graphs = self.graphs_infer if infer else self.graphs_train
        h = {}
        for v in self.views:
            x = self.item_embedding
            for _ in range(self.n_mm_layers):
                x = spmm_t(*graphs[v], x)
            h[v] = x
        return users, items, h

    def _view_mean(self, h):
        return sum(h[v] for v in self.views) / len(self.views)

    # ------------------------------------------------------------------ loss
    def _pseudo_labels(self, probs: dict, target: str, others: tuple):
        k = min(self.pseudo_k, probs[target].shape[1])
        total = sum(probs[o] for o in others) + 2.0 * probs[target]
        mm = torch.topk(total, k, dim=1).indices
        rest = probs[target].scatter(1, mm, 0.0)
        single = torch.topk(rest, k, dim=1).indices
        return mm, single

    def _neighbour_loss(self, h, rows: torch.Tensor) -> torch.Tensor:
        cand = self.candidates if self.new_mode else None
        cands = {v: (h[v] if cand is None else h[v][cand]) for v in self.views}
        table = PSEUDO_3 if self.three else PSEUDO_2
        labels = {t: ([], []) for t in table}
        with torch.no_grad():  # pseudo labels: top-k indices only, no gradient (as the reference)
            normed = {v: F.normalize(cands[v], dim=1) for v in self.views}
            step = max(1, (1 << 22) // max(1, len(cand) if cand is not None else self.n_items))
            for lo in range(0, len(rows), step):
                r = rows[lo:lo + step]
                probs = {v: torch.softmax(F.normalize(h[v][r], dim=1) @ normed[v].T, dim=1) for v in self.views}
                for target, others in table.items():
                    mm, single = self._pseudo_labels(probs, target, others)
                    labels[target][0].append(mm)
                    labels[target][1].append(single)
        terms = [neighbour_discrimination(h[t][rows], cands[t], torch.cat(labels[t][0]), torch.cat(labels[t][1]),
                                          self.nd_temp).mean() for t in table]
        if self.three:
            return 0.5 * sum(terms) / 4.0
        return sum(terms) / 3.0

    def _sample_weights(self, u, h, pos, neg):
        with torch.no_grad():
            p = torch.sigmoid(torch.stack([(u * F.normalize(h[v][pos], dim=1)).sum(1) for v in self.views]))
            n = torch.sigmoid(torch.stack([(u * F.normalize(h[v][neg], dim=1)).sum(1) for v in self.views]))
            p_mean = p.mean(0)
            pos_w = (p_mean * torch.exp(-p.var(0)) ** 2).clamp(0, 1)
            n_mean = n.mean()
            neg_w = ((p.max(0).values - n_mean) * (p_mean < n_mean).float()).clamp(0, 1)
        return pos_w, neg_w

    def calculate_loss(self, users, pos, neg):
        u_all, i_all, h = self.forward(infer=False)
        u_id = torch.unique(users)
        i_id = torch.unique(torch.cat([pos, neg]))
        if self.three:
            # Only positives observed in every modality count (all positives without masks).
            tva = torch.unique(pos[self.complete_mask[pos]]) if self.missing_modal else torch.unique(pos)
            rows = i_id[torch.isin(i_id, tva)]
        else:
            rows = i_id
        nd = self._neighbour_loss(h, rows) if len(rows) else u_all.new_zeros(())

        it = self._view_mean(h)
        zg = u_all[u_id] @ F.normalize(i_all[i_id], dim=1).T
        zt = u_all[u_id] @ F.normalize(it[i_id], dim=1).T
        kl = symmetric_bernoulli_kl(zg, zt).mean()  # mean of KL(g‖t) + KL(t‖g)

        u = u_all[users]
        pos_w, neg_w = self._sample_weights(u, h, pos, neg)
        items = i_all + it
        s_pos, s_neg = (u * items[pos]).sum(1), (u * items[neg]).sum(1)
        bpr = -(F.logsigmoid(s_pos - s_neg) * pos_w + F.logsigmoid(s_neg - s_pos) * neg_w).mean()
        return bpr + self.neighbor_weight * nd + self.kl_weight * kl

    def scoring_vectors(self):
        u, i, h = self.forward(infer=True)
        return u, i + self._view_mean(h)
