"""Loss building blocks of the models, each written once (the ranking losses, regularisers and
contrastive terms several models share, and the few one model needs in a chunked form)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
    """Bayesian personalised ranking: mean of -log σ(s⁺ - s⁻).

    ``gamma=None`` is the stable logsigmoid form; ``gamma=1e-10`` reproduces the
    reference ``BPRLoss`` class, -log(γ + σ(s⁺ - s⁻)).
    """
    diff = pos - neg
    if gamma is None:
        return -F.logsigmoid(diff).mean()
    return -torch.log(gamma + torch.sigmoid(diff)).mean()


def emb_norm(*embeddings: torch.Tensor) -> torch.Tensor:
    """Sum of Frobenius norms (not squared) over the rows of the last tensor."""
    total = sum(torch.linalg.norm(e) for e in embeddings)
    return total / embeddings[-1].shape[0]


def squared_l2(*embeddings: torch.Tensor, batch_size: int) -> torch.Tensor:
    """½ Σ ‖e‖_F² divided by the configured batch size."""
    return 0.5 * sum(e.pow(2).sum() for e in embeddings) / batch_size


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, eps: float = 0.0) -> torch.Tensor:
    """Row-aligned InfoNCE with in-batch negatives.

    Rows are L2-normalised; the positive of row r of ``a`` is row r of ``b`` and sits in the
    denominator with every other row of ``b``. Duplicate ids are not removed (as the
    reference). With ``eps > 0`` the SGL/SimGCL form adds ``eps`` inside the ratio and the log (they use 1e-9).
    """
    a = F.normalize(a, dim=1)
    b = F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    if eps == 0.0:
        return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()
    pos = torch.exp(logits.diagonal())
    denom = torch.exp(logits).sum(dim=1) + eps
    return -torch.log(pos / denom + eps).mean()


class _WeightedLSE(torch.autograd.Function):
    """Σ_i w_i · logsumexp_j(a_i·b_j + c_j), computed in row chunks.

    The (rows × cols) logits never exist at once: each chunk is rebuilt in the backward pass,
    which keeps the work in cache (the b×b logits of a 4096 batch are 64 MB). ``w`` are row
    weights (multiplicities), ``c`` column log-multiplicities.
    """

    @staticmethod
    def forward(ctx, a, b, w, c, chunk):
        n = a.shape[0]
        lse = torch.empty(n, dtype=a.dtype, device=a.device)
        for lo in range(0, n, chunk):
            lse[lo:lo + chunk] = torch.logsumexp(torch.addmm(c, a[lo:lo + chunk], b.T), dim=1)
        ctx.save_for_backward(a, b, w, c, lse)
        ctx.chunk = chunk
        return (w * lse).sum()

    @staticmethod
    def backward(ctx, grad):
        a, b, w, c, lse = ctx.saved_tensors
        ga, gb = torch.empty_like(a), torch.zeros_like(b)
        for lo in range(0, a.shape[0], ctx.chunk):
            hi = min(a.shape[0], lo + ctx.chunk)
            p = torch.addmm(c, a[lo:hi], b.T).sub_(lse[lo:hi, None]).exp_().mul_((grad * w[lo:hi])[:, None])
            ga[lo:hi] = p @ b
            gb.addmm_(p.T, a[lo:hi])
        return ga, gb, None, None, None


def _dedup(ids: torch.Tensor):
    """(first row of each distinct id, inverse map, counts)."""
    uniq, inv, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    first = torch.full((len(uniq),), len(ids), dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inv, torch.arange(len(ids), device=ids.device), reduce="amin")
    return first, inv, counts


def ce_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, rows: torch.Tensor | None = None,
           a_ids: torch.Tensor | None = None, b_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the logits ``a bᵀ / τ`` against the diagonal (SLMRec).

    Equals ``F.cross_entropy((a @ b.T / τ)[rows], arange[rows])``. No normalisation here
    (callers normalise when the model does). ``rows`` (bool mask) keeps only those rows as loss
    terms; the columns (negatives) are always every row of ``b``. With no row selected the
    result is NaN, as ``cross_entropy`` of nothing.

    ``a_ids`` / ``b_ids`` (optional) name the entity behind each row; rows with the same id
    must be identical (the same vector gathered twice). Duplicates are then folded exactly:
    a duplicated row's log-sum-exp is computed once and weighted by its count, a duplicated
    column enters once with a log-count offset. Same value and gradients, fewer FLOPs.
    """
    n = a.shape[0]
    a = a / temperature
    sel = torch.ones(n, dtype=torch.bool, device=a.device) if rows is None else rows
    n_sel = int(sel.sum())
    if n_sel == 0:
        return a.sum() * float("nan")
    pos = (a[sel] * b[sel]).sum()
    if a_ids is None:
        a_first, a_w = torch.arange(n, device=a.device), sel.to(a.dtype)
    else:
        a_first, a_inv, _ = _dedup(a_ids)
        a_w = torch.zeros(len(a_first), dtype=a.dtype, device=a.device).index_add(0, a_inv, sel.to(a.dtype))
    keep = a_w > 0
    a_first, a_w = a_first[keep], a_w[keep]
    if b_ids is None:
        b_rows, c = b, torch.zeros(n, dtype=b.dtype, device=b.device)
    else:
        b_first, _, b_cnt = _dedup(b_ids)
        b_rows, c = b[b_first], torch.log(b_cnt.to(b.dtype))
    chunk = max(1, (1 << 20) // max(1, b_rows.shape[0]))
    lse = _WeightedLSE.apply(a[a_first], b_rows, a_w, c, chunk)
    return (lse - pos) / n_sel


def neighbour_discrimination(emb: torch.Tensor, candidates: torch.Tensor, mm_index: torch.Tensor,
                             single_index: torch.Tensor, temperature: float = 0.2,
                             eps: float = 1e-9) -> torch.Tensor:
    """DA-MRS neighbour discrimination, one value per row of ``emb`` (no reduction).

    Rows of ``emb`` and ``candidates`` are L2-normalised; ``mm_index`` / ``single_index``
    (rows × k) index ``candidates``: the multi-modal and the single-view pseudo-positive
    neighbours. With S_x = Σ_{k∈x} exp(e·a_k/τ) and S = Σ_c exp(e·a_c/τ):
    ``−log(S_mm / S + eps) − log(S_single / (S − S_mm) + eps)``. S comes from a chunked
    log-sum-exp (|logits| ≤ 1/τ, so exp(lse) cannot overflow for any realistic item count).
    """
    e = F.normalize(emb, dim=1) / temperature
    a = F.normalize(candidates, dim=1)
    s_mm = torch.exp((e.unsqueeze(1) * a[mm_index]).sum(2)).sum(1)
    s_single = torch.exp((e.unsqueeze(1) * a[single_index]).sum(2)).sum(1)
    s_all = torch.exp(row_logsumexp(e, a))
    return -torch.log(s_mm / s_all + eps) - torch.log(s_single / (s_all - s_mm) + eps)


def bernoulli_kl(logit_p: torch.Tensor, logit_q: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bern(σ(p)) ‖ Bern(σ(q))) from logits (DA-MRS's KL term).

    ``p log p − p log q + (1−p) log(1−p) − (1−p) log(1−q)`` with the logs taken as
    ``logsigmoid`` of the logits: the same value, but finite where σ saturates to 0 or 1 in
    float32 (the reference's ``log(sigmoid)`` form turns into NaN there).
    """
    p = torch.sigmoid(logit_p)
    lp, lq = F.logsigmoid(logit_p), F.logsigmoid(logit_q)
    lnp, lnq = F.logsigmoid(-logit_p), F.logsigmoid(-logit_q)
    return p * (lp - lq) + (1.0 - p) * (lnp - lnq)


class Distinct(NamedTuple):
    """The distinct values of an id tensor, as ``torch.unique(ids, return_inverse=True,
    return_counts=True)`` gives them. A batch's users and items enter several loss terms;
    computing this once per batch instead of once per term saves work, and on an accelerator
    a host wait each (``unique`` sizes its output by the values)."""
    ids: torch.Tensor
    uniq: torch.Tensor
    inverse: torch.Tensor
    counts: torch.Tensor


def distinct(ids: "torch.Tensor | Distinct") -> Distinct:
    if isinstance(ids, Distinct):
        return ids
    uniq, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    return Distinct(ids, uniq, inverse, counts)


def info_nce_indexed(a: torch.Tensor, ia: "torch.Tensor | Distinct", b: torch.Tensor, ib: "torch.Tensor | Distinct",
                     temperature: float) -> torch.Tensor:
    """``info_nce(a[ia], b[ib], temperature)`` (eps = 0) computed on the distinct rows.

    A batch repeats users and items; row r's denominator Σ_j exp(â_{ia_r}·b̂_{ib_j}/τ) equals
    Σ_q c_q exp(â_{ia_r}·b̂_q/τ) over the distinct ids q of ``ib`` with multiplicities c_q, and
    rows with the same id of ``ia`` share it. So the similarity matrix is distinct(ia) ×
    distinct(ib) instead of len(ia)², with the same value and gradients as the reference's
    form (duplicates are kept as duplicates, only not recomputed).
    """
    ia, ua, inv_a, cnt_a = distinct(ia)
    _, ub, inv_b, cnt_b = distinct(ib)
    an = F.normalize(a[ua], dim=1) / temperature
    bn = F.normalize(b[ub], dim=1)
    logits = an @ bn.T + torch.log(cnt_b.to(an.dtype)).unsqueeze(0)
    lse = torch.logsumexp(logits, dim=1)
    pos = (an[inv_a] * bn[inv_b]).sum(dim=1)
    n = ia.shape[0]
    return (cnt_a.to(an.dtype) * lse).sum() / n - pos.sum() / n


class _EpsNCE(torch.autograd.Function):
    """−mean_i log( e_ii / (Σ_j e_ij + eps) + eps ) with e = exp(a bᵀ), a hand-written backward."""

    @staticmethod
    def forward(ctx, a, b, eps):
        e = (a @ b.T).exp_()
        pos = e.diagonal().clone()
        denom = e.sum(dim=1) + eps
        ratio = pos / denom
        ctx.save_for_backward(a, b, e, denom, ratio)
        ctx.eps = eps
        return -torch.log(ratio + eps).mean()

    @staticmethod
    def backward(ctx, grad):
        a, b, e, denom, ratio = ctx.saved_tensors
        n = a.shape[0]
        w = grad * ratio / (n * (ratio + ctx.eps))          # −dL/d log(ratio_i)
        # d loss / d logits = diag(s) e − diag(w) with s = w / denom; the row scaling is applied to
        # the n×d factors instead of the n×n matrix (no n² pass besides the two products).
        s = (w / denom).unsqueeze(1)
        w = w.unsqueeze(1)
        return (e @ b).mul_(s).sub_(w * b), (e.T @ (a * s)).sub_(w * a), None


def info_nce_eps_fused(a: torch.Tensor, b: torch.Tensor, temperature: float, eps: float = 1e-9) -> torch.Tensor:
    """``info_nce(a, b, temperature, eps)`` (the SGL/SimGCL form with ``eps`` inside the ratio
    and the log) with a fused backward; same value and gradients up to float rounding."""
    a = F.normalize(a, dim=1) / temperature
    b = F.normalize(b, dim=1)
    return _EpsNCE.apply(a, b, float(eps))


class _ChunkedRowLSE(torch.autograd.Function):
    """Per-row logsumexp_c(a_r·b_c + o_c), computed in row chunks; each chunk is rebuilt in the
    backward pass, so the rows × cols logits never exist at once (cache-friendly on CPU)."""

    @staticmethod
    def forward(ctx, a, b, o, chunk):
        lse = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
        for lo in range(0, a.shape[0], chunk):
            lse[lo:lo + chunk] = torch.logsumexp(torch.addmm(o, a[lo:lo + chunk], b.T), dim=1)
        ctx.save_for_backward(a, b, o, lse)
        ctx.chunk = chunk
        return lse

    @staticmethod
    def backward(ctx, grad):
        a, b, o, lse = ctx.saved_tensors
        ga, gb = torch.empty_like(a), torch.zeros_like(b)
        for lo in range(0, a.shape[0], ctx.chunk):
            hi = min(a.shape[0], lo + ctx.chunk)
            p = torch.addmm(o, a[lo:hi], b.T).sub_(lse[lo:hi, None]).exp_().mul_(grad[lo:hi, None])
            ga[lo:hi] = p @ b
            gb.addmm_(p.T, a[lo:hi])
        return ga, gb, None, None


def row_logsumexp(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """``logsumexp(a @ b.T + offsets, dim=1)`` with autograd, in row chunks of ~1M logits."""
    o = torch.zeros(b.shape[0], dtype=a.dtype, device=a.device) if offsets is None else offsets.to(a.dtype)
    return _ChunkedRowLSE.apply(a, b, o, max(1, (1 << 20) // max(1, b.shape[0])))


def nce_over_candidates(a: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor, temperature: float,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_r w_r [ log Σ_c exp(â_r·ĉ_c/τ) − â_r·ĉ_{labels_r}/τ ] with L2-normalised rows, SUMMED.

    The positive of row r is candidate ``labels[r]`` (so it is in its own denominator).
    ``weights`` (default 1) let a caller pass each distinct row once with its multiplicity:
    the same value and gradients as repeating it. This is LGMRec's hypergraph contrast
    (``−Σ log(exp(cos(a_r,b_r)/τ) / Σ_c exp(cos(a_r,c)/τ))`` with b_r among the candidates),
    computed in row chunks.
    """
    if a.shape[0] == 0:
        return a.sum() * 0.0
    an = F.normalize(a, dim=1) / temperature
    cn = F.normalize(candidates, dim=1)
    w = torch.ones(a.shape[0], dtype=a.dtype, device=a.device) if weights is None else weights.to(a.dtype)
    return (w * (row_logsumexp(an, cn) - (an * cn[labels]).sum(1))).sum()


def batch_info_nce(x: torch.Tensor, y: torch.Tensor, ids: "torch.Tensor | Distinct", temperature: float) -> torch.Tensor:
    """``info_nce(x[ids], y[ids], temperature)`` (eps = 0) on the distinct ids, in row chunks.

    Rows with the same id are identical, so row r's denominator Σ_j exp(x̂_r·ŷ_{ids_j}/τ) is
    Σ_q c_q exp(x̂_r·ŷ_q/τ) over the distinct ids q with multiplicities c_q, and equal rows share
    it: a distinct × distinct problem with the same value and gradients (MGCN / GUME batch NCE).
    """
    ids, uniq, _, counts = distinct(ids)
    xn = F.normalize(x[uniq], dim=1) / temperature
    yn = F.normalize(y[uniq], dim=1)
    w = counts.to(xn.dtype)
    return (w * (row_logsumexp(xn, yn, torch.log(w)) - (xn * yn).sum(1))).sum() / ids.shape[0]


def nce_over_lowrank_candidates(a: torch.Tensor, factors: torch.Tensor, basis: torch.Tensor, labels: torch.Tensor,
                                temperature: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``nce_over_candidates(a, factors @ basis, labels, τ, weights)`` for low-rank candidates.

    With candidates C = F·B (F: cols × h, B: h × d, h ≪ d; e.g. LGMRec's hypergraph embeddings,
    memberships × hyperedge states), cos(a_r, C_c)/τ = (â_r Bᵀ/τ) · (F_c / ‖F_c B‖): the
    rows × cols logits need an inner dimension of h instead of d. Same value and gradients up
    to float rounding.
    """
    if a.shape[0] == 0:
        return a.sum() * 0.0
    an = F.normalize(a, dim=1) / temperature
    norms = ((factors @ (basis @ basis.T)) * factors).sum(1).clamp_min(1e-24).sqrt().clamp_min(1e-12)
    fn = factors / norms.unsqueeze(1)
    w = torch.ones(a.shape[0], dtype=a.dtype, device=a.device) if weights is None else weights.to(a.dtype)
    pos = (an * (fn[labels] @ basis)).sum(1)
    return (w * (row_logsumexp(an @ basis.T, fn) - pos)).sum()


def symmetric_bernoulli_kl(logit_p: torch.Tensor, logit_q: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(p‖q) + KL(q‖p) for Bernoulli p = σ(logit_p), q = σ(logit_q) (DA-MRS's KL term).

    The log terms collapse exactly: (p − q)·(logit(p) − logit(q)) = (σ(z_p) − σ(z_q))·(z_p − z_q).
    Same value as ``bernoulli_kl(p, q) + bernoulli_kl(q, p)`` at a fraction of the cost, and finite
    everywhere.
    """
    return (torch.sigmoid(logit_p) - torch.sigmoid(logit_q)) * (logit_p - logit_q)


def masked_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-mean squared error; an empty row set contributes 0 instead of NaN."""
    if a.shape[0] == 0:
        return a.new_zeros(())
    return F.mse_loss(a, b)


class _DecoderMSE(torch.autograd.Function):
    """MSE(z Wᵀ + b, X) (element mean) in row chunks, with its gradients taken in the same pass.

    The decoder output and the residual exist one chunk at a time, so the recon loss of a
    63,001 × 4096 table costs one gradient-sized buffer for X instead of four; the input z
    is the detached decoder input, so it gets no gradient.
    """

    @staticmethod
    def forward(ctx, z, weight, bias, target):
        n, dim = target.shape
        total = max(n * dim, 1)
        chunk = max(1, (1 << 24) // max(dim, 1))
        need_t = ctx.needs_input_grad[3]
        g_w, g_b = torch.zeros_like(weight), torch.zeros_like(bias)
        g_x = torch.empty_like(target) if need_t else None
        loss = z.new_zeros(())
        with torch.no_grad():
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                diff = torch.addmm(bias, z[lo:hi], weight.T).sub_(target[lo:hi])
                flat = diff.reshape(-1)
                loss += torch.dot(flat, flat)
                diff.mul_(2.0 / total)
                g_w.addmm_(diff.T, z[lo:hi])
                g_b += diff.sum(dim=0)
                if need_t:
                    torch.neg(diff, out=g_x[lo:hi])
        ctx.grads = (g_w, g_b, g_x)
        return loss / total

    @staticmethod
    def backward(ctx, grad):
        g_w, g_b, g_x = ctx.grads
        ctx.grads = None
        return (None, g_w * grad, g_b * grad, g_x.mul_(grad) if g_x is not None else None)


def decoder_mse(decoder: nn.Linear, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.mse_loss(decoder(z), target)`` for a detached ``z`` (gradients reach the decoder and target):
    DGMRec's reconstruction of the raw feature tables."""
    return _DecoderMSE.apply(z.detach(), decoder.weight, decoder.bias, target)
