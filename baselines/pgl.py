"""PGL: principal graph learning (Yu et al., AAAI 2025; as implemented in MMRec).

Items are their projected modality features (no item ID table), users one table per modality;
LightGCN runs on a *principal subgraph* of the user-item graph in training (a degree-sensitive
edge sample redrawn every epoch, or a fixed low-rank graph from the truncated SVD) and on the
whole graph for scoring; item vectors add a propagation over a frozen feature kNN item graph.
The loss adds InfoNCE between two dropout views of the batch's users and of its positives.
Missing modalities: imputed features, missing items isolated before the top-k of each modality
graph; new items are scored from their features. Details and options: docs/models/PGL.md.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.knn import cached_knn_graph
from models.graphs.propagation import lightgcn_backbone
from models.graphs.sparse import binary_sym_normalize, sparse_with_transpose, spmm_t, to_torch_sparse
from models.graphs.user_item import EdgeDropper, ui_adjacency, ui_sym_scipy, user_item_block
from models.layers import xavier_table
from models.losses import bpr_loss, info_nce
from models.registry import register

MODES = ("local", "global")
# Global mode: the share of the leading singular components kept, each weighted by its singular
# value times the one as far from the end of the computed spectrum, and the magnitude below
# which an entry of the low-rank graph is dropped (the reference's constants).
PRINCIPAL_SHARE = 0.25
PRINCIPAL_THRESHOLD = 1e-3


def modality_weights(mods: Modalities, image_weight: float) -> dict[str, float]:
    """Weights of the modality kNN graphs in the item graph: image ``image_weight``, the others
    share the rest equally (two modalities: text ``1 - image_weight``, as the reference)."""
    if len(mods) == 1 or "v" not in mods:
        return {m: 1.0 / len(mods) for m in mods}
    rest = (1.0 - image_weight) / (len(mods) - 1)
    return {m: image_weight if m == "v" else rest for m in mods}


def item_graph(task, mods: Modalities, k: int, image_weight: float) -> sp.csr_matrix:
    """Σ_m w_m B_m: B_m the top-k cosine pattern of modality m (each item's k most similar items,
    itself included, binary), normalised by the row counts on both sides; items missing m are
    isolated before the ranking (a self-loop only, and nobody picks them)."""
    weights = modality_weights(mods, image_weight)
    total = None
    for m in mods:
        b = weights[m] * binary_sym_normalize(cached_knn_graph(task, m, k, "before"))
        total = b if total is None else total + b
    return sp.csr_matrix(total, dtype=np.float32)


def _top_singular(m: sp.spmatrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` leading singular triplets (U, s, Vᵀ) of ``m``, largest first, in float64."""
    m = sp.csr_matrix(m, dtype=np.float64)
    if k >= min(m.shape) - 1:  # ARPACK needs k < min(shape): a small graph is decomposed densely
        u, s, vt = np.linalg.svd(m.toarray(), full_matrices=False)
        return u[:, :k], s[:k], vt[:k]
    v0 = np.full(min(m.shape), 1.0 / math.sqrt(min(m.shape)))  # a fixed start: the same graph every run
    u, s, vt = scipy.sparse.linalg.svds(m, k=k, v0=v0, solver="arpack")
    order = np.argsort(-s, kind="stable")
    return u[:, order], s[order], vt[order]


def principal_graph(task, rank: int, chunk_rows: int = 4096) -> sp.csr_matrix:
    """The global-aware principal subgraph: a low-rank (U+I)² graph from the truncated SVD of the
    normalised user-item graph Â, cached by the training split.

    Â = [[0, R̂], [R̂ᵀ, 0]] has the singular values of R̂, each twice. Of its ``rank`` leading
    ones s_0 ≥ s_1 ≥ ..., the first K = int(0.25·rank) are kept, component i weighted by
    s_i · s_{rank-K+i}, and entries below 1e-3 in magnitude are dropped. Each singular value of R̂
    (left p_j, right q_j) stands for two components of Â whose weights are averaged, so the
    graph is [[0, W], [Wᵀ, 0]] with W = Σ_j w_j p_j q_jᵀ: the same matrix as the SVD of Â
    whenever K is even (the two copies share a weight), and defined for every solver (within a
    repeated singular value the components of Â are not unique)."""
    n_users = task.n_users

    def build():
        half = (rank + 1) // 2
        r_hat = user_item_block(ui_sym_scipy(task), n_users)
        p, s, qt = _top_singular(r_hat, min(half, min(r_hat.shape)))
        joint = np.repeat(s, 2)[:rank]                   # singular values of Â, largest first
        k = int(PRINCIPAL_SHARE * rank)
        per_copy = np.zeros(2 * len(s))
        per_copy[:k] = joint[:k] * joint[len(joint) - k:]
        w = per_copy.reshape(len(s), 2).mean(axis=1)
        used = np.flatnonzero(w)
        pw, q = p[:, used] * w[used], qt[used]
        blocks = []
        for start in range(0, n_users, chunk_rows):      # W in row blocks: never the dense U×I at once
            dense = pw[start:start + chunk_rows] @ q
            dense[np.abs(dense) < PRINCIPAL_THRESHOLD] = 0.0
            blocks.append(sp.csr_matrix(dense.astype(np.float32)))
        w_ui = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((n_users, task.n_items), dtype=np.float32)
        return sp.bmat([[None, w_ui], [w_ui.T, None]], format="csr", dtype=np.float32)

    return task.cached("pgl_principal", {"rank": int(rank), "share": PRINCIPAL_SHARE,
                                         "threshold": PRINCIPAL_THRESHOLD}, ("train",), build)


@register("PGL")
class PGL(Recommender):
    group = "multi-modal"
    uses_features = True
    handles_missing = "impute"

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.mods = Modalities(task.modalities)
        self.mode = str(config["mode"])
        if self.mode not in MODES:
            raise ValueError(f"PGL mode must be one of {MODES}, got {self.mode!r}")
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.cl_weight = float(config["reg_weight"])  # the reference names the contrastive weight reg_weight
        self.dropout = float(config["dropout"])
        self.temperature = float(config["temperature"])

        self.user_embedding = nn.ParameterDict({m: xavier_table(self.n_users, d) for m in self.mods})
        # Raw features are trainable (Embedding.from_pretrained(freeze=False) in the reference).
        self.features = nn.ParameterDict({m: nn.Parameter(self.feature(m).float().clone()) for m in self.mods})
        self.proj = nn.ModuleDict({m: nn.Linear(self.features[m].shape[1], d) for m in self.mods})

        self.adj = ui_adjacency(task)
        self.mm_adj = sparse_with_transpose(
            item_graph(task, self.mods, int(config["knn_k"]), float(config["mm_image_weight"])), self.device)
        self.train_adj = None  # the principal subgraph training propagates on
        if self.mode == "local":
            self.dropper = EdgeDropper(task)
            ratio = float(config["edge_keep_ratio"])
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"PGL edge_keep_ratio must lie in (0, 1], got {ratio}")
            self.keep = int(self.dropper.n_edges * ratio)
        else:
            self.train_adj = to_torch_sparse(principal_graph(task, d), self.device)  # symmetric by construction

    def pre_epoch(self, epoch):
        if self.mode == "local":  # a new degree-sensitive edge sample every epoch
            self.train_adj = self.dropper.sample(self.keep, weighted=True)

    def forward(self, adj):
        """(user vectors, item vectors) over the user-item graph ``adj`` (symmetric)."""
        items = torch.cat([F.normalize(self.proj[m](self.features[m]), dim=1) for m in self.mods], dim=1)
        users = torch.cat([self.user_embedding[m] for m in self.mods], dim=1)
        h = items
        for _ in range(self.n_mm_layers):
            h = spmm_t(*self.mm_adj, h)
        u, i = lightgcn_backbone(adj, users, items, self.n_ui_layers)
        return u, i + h

    def calculate_loss(self, users, pos, neg):
        if self.train_adj is None:  # called before the first epoch's hook
            self.pre_epoch(0)
        u_all, i_all = self.forward(self.train_adj)
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1))
        if self.cl_weight:
            # Each view an independent dropout mask, drawn in the reference's order (u, u, p, p).
            cl = (info_nce(self.masked(u), self.masked(u), self.temperature)
                  + info_nce(self.masked(p), self.masked(p), self.temperature)) / 2
            loss = loss + self.cl_weight * cl
        return loss

    def masked(self, x):
        """A dropout view of ``x`` (feature masking; identity outside training)."""
        return F.dropout(x, self.dropout, self.training)

    def scoring_vectors(self):
        return self.forward(self.adj)
