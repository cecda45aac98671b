"""Sinkhorn optimal transport as a product: Q @ y for the entropic transport plan Q between two
point sets, without forming Q (CI2MG's inter-modality generation)."""
from __future__ import annotations

import torch

# Bytes of kernel one row block may hold when the backward pass recomputes the kernel.
TRANSPORT_CHUNK_BYTES = 1 << 28


def sq_euclid_kernel(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """exp(-‖a_i - b_j‖² / eps) as a dense len(a)×len(b) matrix, built in place in one buffer."""
    k = a @ b.T
    k.mul_(-2.0).add_((a * a).sum(dim=1, keepdim=True)).add_((b * b).sum(dim=1).unsqueeze(0))
    return k.clamp_(min=0.0).mul_(-1.0 / eps).exp_()


def sinkhorn_scalings(k: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row/column scalings (r, c) of the reference Sinkhorn loop on kernel ``k``.

    The loop (normalise Q by its total; then ``iters`` times: rows to sum 1/n, columns to sum
    1/m; finally Q·n) only ever rescales rows and columns, so Q = n · diag(r) K diag(c) with
    r = 1/(n K c) and c = 1/(m Kᵀ r) iterated from c = 1 (the initial total cancels).
    """
    n, m = k.shape
    c = torch.ones(m, dtype=k.dtype, device=k.device)
    r = c.new_ones(n)
    for _ in range(iters):
        r = 1.0 / (n * (k @ c))
        c = 1.0 / (m * (k.T @ r))
    return r, c


class _SinkhornTransport(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, a, b, eps, iters, keep_kernel):
        k = sq_euclid_kernel(a, b, eps)
        r, c = sinkhorn_scalings(k, iters)
        n = k.shape[0]
        out = (k @ (c.unsqueeze(1) * y)).mul_(n * r.unsqueeze(1))
        ctx.eps, ctx.n = eps, n
        ctx.keep = bool(keep_kernel)
        ctx.save_for_backward(a, b, r, c, k if keep_kernel else None)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b, r, c, k = ctx.saved_tensors
        g = r.unsqueeze(1) * grad
        if k is not None:
            acc = k.T @ g
        else:  # recompute the kernel in row blocks: memory O(block × m)
            rows = max(1, TRANSPORT_CHUNK_BYTES // (4 * max(1, b.shape[0])))
            acc = torch.zeros(b.shape[0], g.shape[1], dtype=g.dtype, device=g.device)
            for s in range(0, a.shape[0], rows):
                acc += sq_euclid_kernel(a[s:s + rows], b, ctx.eps).T @ g[s:s + rows]
        return acc.mul_(ctx.n * c.unsqueeze(1)), None, None, None, None, None


def sinkhorn_transport(y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, iters: int,
                       keep_kernel: bool = True) -> torch.Tensor:
    """Q @ y with Q = Sinkhorn(‖a_i - b_j‖²) (reference ``sinkhorn_algorithm2``), Q treated as a constant.

    Q is never formed: one len(a)×len(b) kernel exists during the forward pass (the Sinkhorn
    loop needs it); the backward pass (grad wrt ``y`` only, as the reference's no-grad Q) keeps
    that kernel if ``keep_kernel`` else recomputes it in row blocks. ``a`` and ``b`` are
    detached here.
    """
    return _SinkhornTransport.apply(y, a.detach(), b.detach(), float(eps), int(iters), keep_kernel)
