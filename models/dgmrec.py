"""DGMRec: disentangled and generative modality recommendation (SIGIR 2025).

Every item has a collaborative part (LightGCN over the user-item graph) and, per modality, a
general part (shared encoder) and a specific part, encoded from the trainable raw features,
gated by a preference filter from the users who chose the item and propagated on the
modality's kNN item graph. Before every epoch, generators write the features of items missing
a modality: the general part translated from the other modalities, the specific part generated
from the filter, decoded to raw features. One code path serves two modalities (image, text)
and three (plus audio). The loss terms are listed in ``loss_terms``; each quirk of the
official code is reproduced by default and has a named ``fix_*`` option (``configs/DGMRec.yaml``).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.modalities import Modalities
from models.base import Recommender
from models.club import CLUBSample
from models.graphs.knn import built_on, knn_graph
from models.graphs.propagation import lightgcn_backbone
from models.graphs.sparse import sparse_with_transpose, spmm_t
from models.graphs.user_item import ui_adjacency
from models.layers import sign_perturb, xavier_linear, xavier_table
from models.losses import bpr_loss, decoder_mse, distinct, emb_norm, info_nce_indexed as nce, masked_mse
from models.registry import register

EVAL_GRAPHS = ("initial", "refreshed")
GEN_ROWS = ("single_missing", "all_missing")


def perturb(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``sign_perturb`` that draws no noise at scale 0, so the other random draws stay as they are."""
    return x if scale == 0 else sign_perturb(x, scale)


def blend_rows(graph: sp.csr_matrix, rebuilt: sp.csr_matrix, rows: np.ndarray, lam: float) -> sp.csr_matrix:
    """Rows flagged in ``rows`` become ``lam·rebuilt + (1-lam)·graph``; the others are kept."""
    sel = rows.astype(np.float32)
    keep = sp.diags(1.0 - sel) @ graph
    new = sp.diags(sel) @ (rebuilt.multiply(np.float32(lam)) + graph.multiply(np.float32(1.0 - lam)))
    out = sp.csr_matrix(keep + new, dtype=np.float32)
    out.eliminate_zeros()
    return out


def _mlp(d_in: int, d: int) -> nn.Sequential:
    """Linear-tanh-linear; both weights re-initialised xavier-uniform after both layers exist."""
    net = nn.Sequential(nn.Linear(d_in, d), nn.Tanh(), nn.Linear(d, d))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
    return net


# --------------------------------------------------------------------------- the model

@register("DGMRec")
class DGMRec(Recommender):
    group = "proposed"
    uses_features = True
    handles_missing = "impute"

    def __init__(self, config, task):
        super().__init__(config, task)
        c = config
        self.d = d = int(c["embedding_size"])
        self.mods = Modalities(task.modalities)
        if self.mods.count not in (2, 3):
            raise ValueError(f"DGMRec needs 2 or 3 modalities, the task has {tuple(self.mods)}")
        self.n_mod = self.mods.count
        self.n_ui_layers = int(c.get("n_ui_layers", 3))
        self.n_mm_layers = int(c["n_mm_layers"])
        self.knn_k = int(c["knn_k"])
        self.w = {k: float(c[k]) for k in ("interModal", "intraModal", "alignBM", "recon", "reg", "sampler",
                                           "additive")}
        self.t_inter, self.t_intra, self.t_bm = (float(c["interModalTemp"]), float(c["intraModalTemp"]),
                                                 float(c["alignBMTemp"]))
        self.cf_reg = float(c.get("cf_reg", 1e-5))
        self.perturb_scale = float(c.get("perturb_scale", 0.1))
        self.avg_lambda = float(c["avg_lambda"])
        self.infer_adj_update = bool(c["infer_adj_update"])
        self.refresh_every = int(c.get("refresh_every", 5))
        self.eval_graph = str(c.get("eval_graph", "initial"))
        self.gen_rows = str(c.get("gen_rows", "single_missing")).replace("-", "_")
        if self.eval_graph not in EVAL_GRAPHS:
            raise ValueError(f"eval_graph must be one of {EVAL_GRAPHS}, got {self.eval_graph!r}")
        if self.gen_rows not in GEN_ROWS:
            raise ValueError(f"gen_rows must be one of {GEN_ROWS}, got {self.gen_rows!r}")
        fix = lambda k: bool(c.get(k, False))  # noqa: E731
        self.fix = {k: fix(k) for k in (
            "fix_trainable_features", "fix_recon_target", "fix_recon_rows", "fix_generation_inputs",
            "fix_club_inputs", "fix_audio_intra", "fix_audio_club", "fix_new_item_train_graph_mask")}
        self.fix["fix_new_item_3mod_generation"] = bool(c.get("fix_new_item_3mod_generation", True))
        dev = self.device

        # ---- parameters, in the official model's order where it matters (one seed, the same initial draws)
        self.user_embedding = xavier_table(self.n_users, d)
        self.item_id_embedding = xavier_table(self.n_items, d)
        feats = {m: task.features[m].detach().to(dev, torch.float32).clone() for m in self.mods}
        for m in self.mods:  # the raw feature tables X^m: parameters of the main Adam, or frozen buffers
            if self.fix["fix_trainable_features"]:
                self.register_buffer(f"feat_{m}", feats[m])
            else:
                self.register_parameter(f"feat_{m}", nn.Parameter(feats[m]))
        dims = {m: feats[m].shape[1] for m in self.mods}
        self.encoder = nn.ModuleDict({m: xavier_linear(dims[m], d) for m in self.mods})
        self.shared_encoder = xavier_linear(d, d)
        self.encoder_s = nn.ModuleDict({m: xavier_linear(dims[m], d) for m in self.mods})
        self.filter_trans = nn.ModuleDict({m: xavier_linear(d, d, bias=False) for m in self.mods})
        self.decoder = nn.ModuleDict({m: xavier_linear(2 * d, dims[m]) for m in self.mods})
        self.gen = nn.ModuleDict({m: _mlp(d, d) for m in self.mods})
        # translator[m] produces modality m's general part from the other modalities (2-mod: d -> d,
        # 3-mod: 2d -> d from the concatenation in the order of ``sources``).
        self.translator = nn.ModuleDict({m: _mlp(d * (self.n_mod - 1), d) for m in self.mods})
        self.club_mods = tuple(m for m in self.mods if m in ("v", "t") or
                               (m == "a" and self.fix["fix_audio_club"]))
        self.club = None
        self.club_optimizer = None
        if self.w["sampler"] != 0:
            self.club = nn.ModuleDict({m: CLUBSample(d, int(c.get("club_hidden", 64))) for m in self.club_mods})
            self.club.to(dev)
            self.club_optimizer = torch.optim.Adam(self.club.parameters(), lr=float(c.get("club_lr", 1e-4)))
        self.club_steps = int(c.get("club_steps", 5))
        self.club_batch = int(c.get("club_batch", 2048))

        # ---- user-item structure
        self.ui_adj = ui_adjacency(task, dev)
        r = task.train_matrix()
        self.R, self.RT = sparse_with_transpose(r, dev)  # each serves the other's backward product
        deg_u = np.asarray(r.sum(axis=1)).ravel()
        deg_i = np.asarray(r.sum(axis=0)).ravel()
        self.register_buffer("inv_u", torch.from_numpy((1.0 / (deg_u + 1e-7)).astype(np.float32)).unsqueeze(1))
        self.register_buffer("inv_i", torch.from_numpy((1.0 / (deg_i + 1e-7)).astype(np.float32)).unsqueeze(1))

        # ---- missing / new-item index sets (numpy for graphs, torch for batches)
        n = self.n_items
        self.missing_np = {m: np.asarray(task.missing.get(m, np.zeros(n, bool)), bool) for m in self.mods}
        self.missing_modal = any(v.any() for v in self.missing_np.values())
        self.new_np = np.asarray(task.new_items, bool)
        self.new_mode = bool(self.new_np.any())
        old = ~self.new_np
        self.miss_t = {m: torch.from_numpy(self.missing_np[m]).to(dev) for m in self.mods}
        any_miss = np.zeros(n, bool)
        for m in self.mods:
            any_miss |= self.missing_np[m]
        self.any_miss_t = torch.from_numpy(any_miss).to(dev)
        single = {}
        for m in self.mods:
            s = np.zeros(n, bool)
            ids = task.mask_groups.get(m, np.zeros(0, np.int64)) if task.mask_groups else np.zeros(0, np.int64)
            s[np.asarray(ids, dtype=np.int64)] = True
            single[m] = s
        base = {m: (single[m] if self.gen_rows == "single_missing" else self.missing_np[m]) for m in self.mods}
        three = self.mods.has_audio
        fixed_3mod = self.fix["fix_new_item_3mod_generation"]
        # rows written by the training-time generation and blended by the training-graph refresh
        self.gen_rows_train = {m: base[m] & old for m in self.mods}
        self.refresh_rows_train = {m: (base[m] if three else self.missing_np[m]) & old for m in self.mods}
        # rows written / refreshed before evaluation in new-item mode (3-mod reference bug: old items)
        infer_sel = old if (three and not fixed_3mod) else self.new_np
        self.gen_rows_infer = {m: base[m] & infer_sel for m in self.mods}
        self.refresh_rows_infer = {m: (base[m] if three else self.missing_np[m]) & infer_sel for m in self.mods}
        self.generated = {m: np.zeros(n, bool) for m in self.mods}  # rows written at least once
        self.recon_rows = {m: torch.from_numpy(~self.missing_np[m] & old).to(dev) for m in self.mods}

        # ---- modality kNN graphs (scipy copies kept for row blending)
        self.graph_sp, self.graph_infer_sp = {}, {}
        for m in self.mods:
            masked = self._masked_graph(task, m)
            self.graph_infer_sp[m] = masked
            if self.new_mode:
                self.graph_sp[m] = self._new_item_train_graph(task, m)
            else:
                self.graph_sp[m] = masked
        # torch CSR pairs (G, Gᵀ); Gᵀ serves the backward products
        self.graph = {m: self._torch_pair(self.graph_sp[m]) for m in self.mods}
        self.graph_infer = {m: self._torch_pair(self.graph_infer_sp[m]) for m in self.mods}
        self.refresh_counter = 0

    @property
    def feat(self) -> dict[str, torch.Tensor]:
        """The current raw feature tables X^m (imputed, then partly generated)."""
        return {m: getattr(self, f"feat_{m}") for m in self.mods}

    # ------------------------------------------------------------------ graphs
    def _masked_graph(self, task, m) -> sp.csr_matrix:
        miss = self.missing_np[m]
        x = self.feat[m].detach()  # on the model's device: the kNN products run there

        def build():
            return knn_graph(x, self.knn_k, isolate_after=miss if miss.any() else None)

        g = task.cached("dgmrec_knn", {"k": self.knn_k, "modality": m, "isolate_after": "missing", **built_on(x)},
                        (f"features:{m}", "missing"), build)
        return sp.csr_matrix(g, dtype=np.float32, copy=True)

    def _new_item_train_graph(self, task, m) -> sp.csr_matrix:
        miss = self.missing_np[m]
        x = self.feat[m].detach()
        with_mask = self.fix["fix_new_item_train_graph_mask"] and miss.any()

        def build():
            return knn_graph(x, self.knn_k, isolate_before=self.new_np,
                             isolate_after=miss if with_mask else None)

        inputs = (f"features:{m}", "new_items") + (("missing",) if with_mask else ())
        g = task.cached("dgmrec_knn", {"k": self.knn_k, "modality": m, "isolate_before": "new_items",
                                       "isolate_after": "missing" if with_mask else None, **built_on(x)},
                       inputs, build)
        return sp.csr_matrix(g, dtype=np.float32, copy=True)

    def _torch_pair(self, g: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
        return sparse_with_transpose(g, self.device)

    def _scoring_graphs(self) -> dict:
        if self.eval_graph == "refreshed" and not self.new_mode:
            return self.graph
        return self.graph_infer

    def _refresh(self, which: str, rows: dict) -> None:
        """Blend the flagged rows of the training ('train') or inference ('infer') graphs."""
        if self.avg_lambda == 0:
            return  # the blend keeps every row as it is
        store_sp = self.graph_sp if which == "train" else self.graph_infer_sp
        store = self.graph if which == "train" else self.graph_infer
        for m in self.mods:
            if not rows[m].any():
                continue
            rebuilt = knn_graph(self.feat[m].detach(), self.knn_k)  # on the model's device
            store_sp[m] = blend_rows(store_sp[m], rebuilt, rows[m], self.avg_lambda)
            store[m] = self._torch_pair(store_sp[m])

    # ------------------------------------------------------------------ encoders
    def sources(self, m: str) -> list[str]:
        """The modalities a translator reads to produce ``m`` (cyclic order after m)."""
        i = self.mods.index(m)
        return [self.mods[(i + j) % self.n_mod] for j in range(1, self.n_mod)]

    def encode(self) -> tuple[dict, dict]:
        """Raw general and specific parts of every item:
        g = σ(W_sh tanh(W_m x + b_m) + b_sh) with W_sh shared by the modalities, s = σ(W_s x + b_s)."""
        g, s = {}, {}
        for m in self.mods:
            # one product of the table with both encoders' weights (general | specific)
            w = torch.cat([self.encoder[m].weight, self.encoder_s[m].weight], dim=0)
            bias = torch.cat([self.encoder[m].bias, self.encoder_s[m].bias], dim=0)
            both = F.linear(self.feat[m], w, bias)
            g[m] = torch.sigmoid(self.shared_encoder(torch.tanh(both[:, :self.d])))
            s[m] = torch.sigmoid(both[:, self.d:])
        return g, s

    def filters(self) -> dict:
        """Item preference filters f^m_i = mean over the item's training users u of tanh(P^m e_u) (0 for an
        item without training rows), one sparse product for all modalities."""
        u = torch.cat([torch.tanh(self.filter_trans[m](self.user_embedding)) for m in self.mods], dim=1)
        f = spmm_t(self.RT, self.R, u) * self.inv_i
        return dict(zip(self.mods, torch.split(f, self.d, dim=1)))

    def propagate(self, graph: tuple, x: torch.Tensor) -> torch.Tensor:
        """(G)^L x for a (G, Gᵀ) pair."""
        for _ in range(self.n_mm_layers):
            x = spmm_t(graph[0], graph[1], x)
        return x

    def modal_embeddings(self, graphs: dict, g: dict, s: dict, f: dict):
        """Filtered, propagated item parts ḡ, s̄ and the user averages over training items."""
        gbar, sbar = {}, {}
        for m in self.mods:
            both = self.propagate(graphs[m], torch.cat([f[m] * g[m], f[m] * s[m]], dim=1))
            gbar[m], sbar[m] = both[:, :self.d], both[:, self.d:]
        items = torch.cat([torch.cat([gbar[m], sbar[m]], dim=1) for m in self.mods], dim=1)
        users = spmm_t(self.R, self.RT, items) * self.inv_u
        gu, su = {}, {}
        for k, m in enumerate(self.mods):
            block = users[:, 2 * k * self.d:(2 * k + 2) * self.d]
            gu[m], su[m] = block[:, :self.d], block[:, self.d:]
        return gbar, sbar, gu, su

    def cf_embeddings(self):
        """The collaborative parts h_u, h_i: LightGCN over the user-item graph."""
        return lightgcn_backbone(self.ui_adj, self.user_embedding, self.item_id_embedding, self.n_ui_layers)

    def fuse(self, h: torch.Tensor, gparts: dict, sparts: dict) -> torch.Tensor:
        mean_g = sum(gparts[m] for m in self.mods) / self.n_mod
        return h + (mean_g + sum(sparts[m] for m in self.mods)) / (self.n_mod + 1)

    # ------------------------------------------------------------------ losses
    def loss_terms(self, users, pos, neg) -> dict[str, torch.Tensor]:
        """Every unweighted loss term of one batch, keyed by its weight's config name (bpr and reg weigh 1);
        terms with weight 0 are skipped."""
        h_u, h_i = self.cf_embeddings()
        g, s = self.encode()
        f = self.filters()
        batch_items = torch.unique(torch.cat([pos, neg]))
        if self.missing_modal:
            obs = {m: batch_items[~self.miss_t[m][batch_items]] for m in self.mods}
            complete = batch_items[~self.any_miss_t[batch_items]]
        else:
            obs = {m: batch_items for m in self.mods}
            complete = batch_items
        zero = h_u.new_zeros(())
        # the distinct ids of the batch, once for every InfoNCE term that uses them
        users_d, pos_d = distinct(users), distinct(pos)
        terms = {}
        pairs = [(self.mods[i], self.mods[(i + 1) % self.n_mod]) for i in range(self.n_mod if self.n_mod > 2 else 1)]
        if self.w["interModal"] != 0:
            complete_d = distinct(complete)
            terms["interModal"] = sum(nce(g[a], complete_d, g[b], complete_d, self.t_inter) for a, b in pairs)

        gbar, sbar, gu, su = self.modal_embeddings(self.graph, g, s, f)

        if self.missing_modal and self.w["additive"] != 0:
            gen = zero
            for m in self.mods:
                o = obs[m]
                gen = gen + masked_mse(s[m][o], self.gen[m](perturb(f[m][o], self.perturb_scale)))
            for m in self.mods:
                src = torch.cat([gbar[k][complete] for k in self.sources(m)], dim=1)
                gen = gen + masked_mse(gbar[m][complete], self.translator[m](perturb(src, self.perturb_scale)))
            terms["additive"] = gen

        if self.w["sampler"] != 0:
            terms["sampler"] = sum(self.club[m](sbar[m], gbar[m]) for m in self.club_mods)
        if self.w["interModal"] != 0:
            terms["interModal"] = terms["interModal"] + nce(gu["v"], users_d, gu["t"], users_d, self.t_inter)

        gu_sum = sum(gu[m] for m in self.mods)
        gi_sum = sum(gbar[m] for m in self.mods)
        # InfoNCE over the batch rows (duplicates kept), evaluated on distinct ids (losses.info_nce_indexed)
        intra = nce(h_u, users_d, h_i, pos_d, self.t_intra)
        intra = intra + nce(gu_sum, users_d, gi_sum, pos_d, self.t_inter)
        for m in self.mods:
            if m == "a" and not self.fix["fix_audio_intra"]:
                intra = intra + nce(gu[m], users_d, gbar[m], pos_d, self.t_intra)  # reference: general audio
            else:
                intra = intra + nce(su[m], users_d, sbar[m], pos_d, self.t_intra)
        terms["intraModal"] = intra
        terms["alignBM"] = nce(h_i, pos_d, gi_sum, pos_d, self.t_bm) + nce(h_u, users_d, gu_sum, users_d, self.t_bm)

        z_u = self.fuse(h_u, gu, su)
        z_i = self.fuse(h_i, gbar, sbar)
        u, p, q = z_u[users], z_i[pos], z_i[neg]
        terms["bpr"] = bpr_loss((u * p).sum(1), (u * q).sum(1))
        b = pos.shape[0]
        reg = self.cf_reg * emb_norm(h_u[users], h_i[pos], h_i[neg])
        for m in self.mods:
            reg = reg + self.w["reg"] * torch.linalg.norm((gbar[m] + sbar[m])[pos]) / b
        terms["reg"] = reg

        recon = zero
        for m in self.mods:
            z = perturb(torch.cat([gbar[m], sbar[m]], dim=1).detach(), self.perturb_scale)
            target = self.feat[m].detach() if self.fix["fix_recon_target"] else self.feat[m]
            if self.fix["fix_recon_rows"]:
                rows = self.recon_rows[m]
                z, target = z[rows], target[rows]
            recon = recon + decoder_mse(self.decoder[m], z, target)
        terms["recon"] = recon
        return terms

    def calculate_loss(self, users, pos, neg):
        terms = self.loss_terms(users, pos, neg)
        total = terms["bpr"] + terms["reg"]
        for name, value in terms.items():
            if name not in ("bpr", "reg"):
                total = total + self.w[name] * value
        return total

    # ------------------------------------------------------------------ hooks
    def optimizer_parameters(self):
        club = {id(p) for p in self.club.parameters()} if self.club is not None else set()
        return [p for p in self.parameters() if id(p) not in club]

    def pre_epoch(self, epoch: int) -> None:
        if self.club is not None:
            self._fit_club()
        self.refresh_counter += 1
        if self.missing_modal:
            self.generate(self.graph, self.gen_rows_train)
            if self.refresh_counter % self.refresh_every == 0:
                self._refresh("train", self.refresh_rows_train)

    def pre_evaluation(self) -> None:
        if not (self.new_mode and self.missing_modal):
            return
        self.generate(self.graph_infer, self.gen_rows_infer)
        if self.infer_adj_update and self.refresh_counter % self.refresh_every == 0:
            self._refresh("infer", self.refresh_rows_infer)

    def _fit_club(self) -> None:
        """``club_steps`` Adam steps of the CLUB estimators on random item subsets of ``club_batch``."""
        with torch.no_grad():
            g, s = self.encode()
            if self.fix["fix_club_inputs"]:  # fit on the propagated parts the loss uses
                g, s, _, _ = self.modal_embeddings(self.graph, g, s, self.filters())
        self.club.train()
        for _ in range(self.club_steps):
            idx = torch.randperm(self.n_items, device=self.device)[:self.club_batch]
            loss = sum(self.club[m].learning_loss(s[m][idx], g[m][idx]) for m in self.club_mods)
            self.club_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.club_optimizer.step()
        self.club.eval()
        self.club_optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def generated_raw(self, graphs: dict, rows: dict | None = None) -> dict[str, torch.Tensor]:
        """Generated raw features for the flagged rows of every modality.

        Reference inputs: translators read the *raw* general parts of the source modalities,
        generators read the filters, and both outputs are propagated on ``graphs`` before the
        decoder. With ``fix_generation_inputs`` the translators read the filtered, propagated
        parts (as in training) and the generated specific part is filtered and propagated
        like s̄, so the decoder sees what it was trained on.
        """
        g, s = self.encode()
        f = self.filters()
        if self.fix["fix_generation_inputs"]:
            gbar, _, _, _ = self.modal_embeddings(graphs, g, s, f)
        out = {}
        for m in self.mods:
            if self.fix["fix_generation_inputs"]:
                g_tilde = self.translator[m](torch.cat([gbar[k] for k in self.sources(m)], dim=1))
                s_tilde = self.propagate(graphs[m], f[m] * self.gen[m](f[m]))
            else:
                g_tilde = self.propagate(graphs[m], self.translator[m](torch.cat([g[k] for k in self.sources(m)], dim=1)))
                s_tilde = self.propagate(graphs[m], self.gen[m](f[m]))
            z = torch.cat([g_tilde, s_tilde], dim=1)
            if rows is not None:
                z = z[torch.from_numpy(np.flatnonzero(rows[m])).to(self.device)]
            out[m] = self.decoder[m](perturb(z, self.perturb_scale))
        return out

    @torch.no_grad()
    def generate(self, graphs: dict, rows: dict) -> None:
        """Write generated raw features into the feature tables at the flagged rows."""
        if not any(rows[m].any() for m in self.mods):
            return
        values = self.generated_raw(graphs, rows)
        for m in self.mods:
            if rows[m].any():
                idx = torch.from_numpy(np.flatnonzero(rows[m])).to(self.device)
                self.feat[m][idx] = values[m].to(self.feat[m].dtype)
                self.generated[m] |= rows[m]

    def generation_rows(self) -> dict[str, np.ndarray]:
        """Item ids of every (item, missing modality) pair this configuration generates."""
        rows = {m: self.gen_rows_train[m].copy() for m in self.mods}
        if self.new_mode:
            for m in self.mods:
                rows[m] |= self.gen_rows_infer[m]
        return {m: np.flatnonzero(r) for m, r in rows.items()}

    @torch.no_grad()
    def generated_features(self, source: str = "table") -> dict[str, tuple[np.ndarray, torch.Tensor]]:
        """``{modality: (item_ids, raw features (len(item_ids), D_m))}`` of every generated pair.

        ``source="table"``: the rows as the model holds them in its feature tables (the last
        generated value, moved by training since the tables are trainable); rows never written
        yet (no epoch run) hold their imputed value. ``source="recompute"``: a fresh pass of
        the generation pipeline with the current networks (training graphs; inference graphs
        for new items), with the reference's perturbation noise.
        """
        ids = self.generation_rows()
        if source == "table":
            return {m: (ids[m], self.feat[m][torch.from_numpy(ids[m]).to(self.device)].detach().clone())
                    for m in self.mods}
        if source != "recompute":
            raise ValueError(f"source must be 'table' or 'recompute', got {source!r}")
        out = {}
        n = self.n_items
        train_rows = {m: self.gen_rows_train[m] for m in self.mods}
        vals = self.generated_raw(self.graph, train_rows)
        for m in self.mods:
            full = torch.zeros(n, self.feat[m].shape[1], device=self.device)
            full[torch.from_numpy(np.flatnonzero(train_rows[m])).to(self.device)] = vals[m]
            out[m] = full
        if self.new_mode:
            vals = self.generated_raw(self.graph_infer, self.gen_rows_infer)
            for m in self.mods:
                out[m][torch.from_numpy(np.flatnonzero(self.gen_rows_infer[m])).to(self.device)] = vals[m]
        return {m: (ids[m], out[m][torch.from_numpy(ids[m]).to(self.device)]) for m in self.mods}

    # ------------------------------------------------------------------ scoring
    def final_embeddings(self, graphs: dict):
        h_u, h_i = self.cf_embeddings()
        g, s = self.encode()
        gbar, sbar, gu, su = self.modal_embeddings(graphs, g, s, self.filters())
        return self.fuse(h_u, gu, su), self.fuse(h_i, gbar, sbar)

    def scoring_vectors(self):
        return self.final_embeddings(self._scoring_graphs())
