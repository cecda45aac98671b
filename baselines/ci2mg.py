"""CI2MG: intra-modality generation on a prototype hypergraph and inter-modality generation by Sinkhorn
optimal transport, fused with LightGCN ID embeddings (as implemented in the DGMRec release; the paper
behind the name is not identifiable).

Missing modalities: imputed features; the reconstruction term skips items lacking the modality.
Details, options and the reference defects it can fix: docs/models/CI2MG.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.graphs.propagation import hypergraph_conv, lightgcn_backbone
from models.graphs.sparse import spmm_t
from models.graphs.transport import sinkhorn_transport
from models.graphs.user_item import ui_adjacency_rw
from models.layers import xavier_table
from models.losses import bpr_loss, info_nce
from models.registry import register

GIB = float(1 << 30)


@register("CI2MG")
class CI2MG(Recommender):
    group = "missing-modality-aware"
    uses_features = True
    handles_missing = "impute"  # the reference mean-imputes masked rows before anything else

    def __init__(self, config, task):
        super().__init__(config, task)
        d = int(config["embedding_size"])
        self.mods = Modalities(task.modalities)
        self.n_layers = int(config["n_ui_layers"])
        self.n_hyper = int(config["n_hyper_layers"])
        self.lamb_1, self.lamb_2 = float(config["lamb_1"]), float(config["lamb_2"])
        self.temp = float(config["temp"])
        self.sk_eps, self.sk_iters = float(config["sinkhorn_eps"]), int(config["sinkhorn_iters"])
        self.fix_contrastive = bool(config["fix_contrastive_loss"])
        kernel_gib = 4.0 * self.n_items ** 2 / GIB
        limit, source = float(config["max_dense_gib"]), f"max_dense_gib={config['max_dense_gib']}"
        hint = "raise max_dense_gib if the machine has the memory"
        if torch.device(self.device).type == "cuda":  # on a GPU the limit is what the device has free
            free = torch.cuda.mem_get_info(self.device)[0] / GIB
            limit, source, hint = free, f"the {free:.1f} GiB free on {self.device}", "use a larger GPU"
        if kernel_gib > limit:
            raise MemoryError(
                f"CI2MG needs a dense n_items x n_items Sinkhorn kernel: {self.n_items:,}^2 float32 = "
                f"{kernel_gib:.1f} GiB alive at a time (plus the model), above {source}; {hint}")
        # Kernels kept for the backward pass while they fit; otherwise recomputed there in row blocks.
        self.keep_kernels = self.mods.count * kernel_gib <= float(config["keep_kernels_gib"])
        self.adj = ui_adjacency_rw(task)
        self.adj_t = self.adj.t().to_sparse_csr()  # for backward passes (D^-1 A is not symmetric)
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_embedding = xavier_table(self.n_items, d)
        for m in self.mods:  # frozen raw features (Embedding.from_pretrained(freeze=True))
            self.register_buffer(f"feat_{m}", self.feature(m).float().clone(), persistent=False)
        self.proj = nn.ModuleDict({m: nn.Linear(self.feature(m).shape[1], d) for m in self.mods})
        n_proto = int(config["n_prototypes"])
        self.prototypes = nn.ParameterDict({m: xavier_table(n_proto, d) for m in self.mods})
        self.hyper = nn.ModuleDict({m: nn.Linear(n_proto, n_proto, bias=False) for m in self.mods})  # default init
        self.enhance = nn.ModuleDict({m: nn.Linear(2 * d, d) for m in self.mods})
        for m in self.mods:
            nn.init.xavier_uniform_(self.proj[m].weight)
            nn.init.xavier_uniform_(self.enhance[m].weight)
        self.bn = nn.BatchNorm1d(d)  # one BatchNorm shared by every modality
        # Per-item offsets added to every row of the transport plan: trained only when fixed.
        if config["fix_ot_offsets"]:
            self.offsets = nn.ParameterDict({m: nn.Parameter(torch.zeros(self.n_items)) for m in self.mods})
        else:
            self.offsets = None  # the reference's never-registered zeros add nothing
        # Items whose modality is observed enter that modality's reconstruction (and contrastive) term;
        # the reference's three-modality path uses the text set for audio.
        observed = {m: torch.as_tensor(~task.missing[m], device=self.device) for m in self.mods}
        if self.mods.has_audio and not config["fix_audio_index"]:
            observed["a"] = observed["t"]
        self.observed = observed

    # ------------------------------------------------------------------ forward
    def forward_all(self):
        """Final user/item vectors plus the pieces the loss needs, for all users and items."""
        U = self.n_users
        user_ids, item_ids = lightgcn_backbone(self.adj, self.user_embedding, self.item_embedding, self.n_layers,
                                               self.adj_t)
        raw, users_m, y = {}, {}, {}
        for m in self.mods:
            r = self.proj[m](getattr(self, f"feat_{m}"))
            um = spmm_t(self.adj, self.adj_t, torch.cat([r.new_zeros(U, r.shape[1]), r]))[:U]  # mean over the user's items
            im = spmm_t(self.adj, self.adj_t, torch.cat([um, r.new_zeros(self.n_items, r.shape[1])]))[U:]  # mean over users
            h = F.normalize(im, dim=1) @ F.normalize(self.prototypes[m], dim=1).T
            ym = im
            for _ in range(self.n_hyper):
                ym = torch.sigmoid(hypergraph_conv(h, self.hyper[m].weight, ym))
            raw[m], users_m[m], y[m] = r, um, ym
        gen, enh = {}, {}
        for m in self.mods:
            others = [y[o] for o in self.mods if o != m]
            cost_rows = others[0] if len(others) == 1 else sum(others)
            g = sinkhorn_transport(y[m], cost_rows, y[m], self.sk_eps, self.sk_iters,
                                   keep_kernel=self.keep_kernels and torch.is_grad_enabled())
            if self.offsets is not None:
                g = g + (self.offsets[m] @ y[m]).unsqueeze(0)
            gen[m] = g
            enh[m] = self.bn(self.enhance[m](torch.cat([y[m], g], dim=1)))
        user = torch.cat([user_ids] + [F.normalize(users_m[m], dim=1) for m in self.mods], dim=1)
        item = torch.cat([item_ids] + [F.normalize(enh[m], dim=1) for m in self.mods], dim=1)
        return user, item, raw, y, gen, enh

    # ------------------------------------------------------------------ loss
    def contrastive(self, y, g, idx):
        if self.fix_contrastive:  # InfoNCE with the other batch items as negatives
            return info_nce(y[idx], g[idx], self.temp)
        # Reference: the "negative" is the positive expression again, so the term is log 2 with zero gradient.
        with torch.no_grad():
            e = torch.exp(F.cosine_similarity(y[idx], g[idx]) / self.temp)
            return -torch.log(e / (e + e)).mean()

    def calculate_loss(self, users, pos, neg):
        user, item, raw, y, gen, enh = self.forward_all()
        upos = torch.unique(pos)
        rec = user.new_zeros(())
        con = user.new_zeros(())
        for m in self.mods:
            idx = upos[self.observed[m][upos]]
            if len(idx) == 0:  # the reference's mean over an empty set would be NaN
                continue
            rec = rec + F.mse_loss(enh[m][idx], raw[m][idx])
            con = con + self.contrastive(y[m], gen[m], idx)
        u = user[users]
        bpr = bpr_loss((u * item[pos]).sum(1), (u * item[neg]).sum(1))
        return rec + self.lamb_1 * con + self.lamb_2 * bpr

    # ------------------------------------------------------------------ scoring
    def scoring_vectors(self):
        user, item, *_ = self.forward_all()
        return user, item
