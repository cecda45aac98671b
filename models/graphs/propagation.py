"""Message passing: LightGCN over a sparse graph, sums over explicit edge lists with
differentiable edge weights, and hypergraph layers."""
from __future__ import annotations

import torch

from models.graphs.sparse import spmm, spmm_t


def lightgcn(adj: torch.Tensor, emb0: torch.Tensor, n_layers: int, adj_t: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of E0, ÂE0, ..., Â^L E0: LightGCN propagation (layer 0 included).

    The layers use ``spmm_t``: ``adj_t`` is the transpose of ``adj``, prepared once; omit it only
    for a symmetric ``adj`` (``ui_adjacency`` and every other sym-normalised graph), otherwise the
    backward pass multiplies by the wrong matrix.
    """
    adj_t = adj if adj_t is None else adj_t
    total, e = emb0, emb0
    for _ in range(n_layers):
        e = spmm_t(adj, adj_t, e)
        total = total + e  # a running sum instead of stacking every layer (same mean up to rounding)
    return total / (n_layers + 1)


def lightgcn_backbone(adj: torch.Tensor, users: torch.Tensor, items: torch.Tensor, n_layers: int,
                      adj_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The LightGCN embeddings of users and items: their tables stacked as the nodes of the
    joint user-item graph ``adj`` (users first), propagated by ``lightgcn``, split back."""
    out = lightgcn(adj, torch.cat([users, items], dim=0), n_layers, adj_t)
    return out[:users.shape[0]], out[users.shape[0]:]


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Softmax of ``logits`` over the entries that share the same ``index`` (edge softmax per
    target node). The per-segment maximum is subtracted (detached) for stability."""
    seg_max = torch.full((n_segments,), -torch.inf, dtype=logits.dtype, device=logits.device)
    seg_max = seg_max.scatter_reduce(0, index, logits.detach(), reduce="amax", include_self=True)
    e = torch.exp(logits - seg_max[index])
    denom = torch.zeros(n_segments, dtype=logits.dtype, device=logits.device).index_add(0, index, e)
    return e / denom[index]


def scatter_sum(messages: torch.Tensor, index: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Row ``t`` of the result is the sum of the ``messages`` rows whose ``index`` is ``t``."""
    out = torch.zeros((n_rows,) + tuple(messages.shape[1:]), dtype=messages.dtype, device=messages.device)
    return out.index_add(0, index, messages)


def weighted_propagate(x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor | None = None,
                       n_rows: int | None = None) -> torch.Tensor:
    """Σ over edges s→t of ``weight_e · x[s]`` into row t (sum aggregation); gradients reach
    both ``x`` and ``weight``."""
    msg = x[src] if weight is None else x[src] * weight.reshape(-1, 1)
    return scatter_sum(msg, dst, x.shape[0] if n_rows is None else n_rows)


class _EdgeSpmm(torch.autograd.Function):
    """out = A(values) @ x for a fixed sparsity pattern with differentiable edge values."""

    @staticmethod
    def forward(ctx, values, x, graph):
        ctx.graph = graph
        ctx.save_for_backward(values, x)
        return spmm(graph.matrix(values), x)

    @staticmethod
    def backward(ctx, grad):
        values, x = ctx.saved_tensors
        g = ctx.graph
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_values = g.sampled_dot(grad, x)
        if ctx.needs_input_grad[1]:
            grad_x = spmm(g.matrix(values, transpose=True), grad)
        return grad_values, grad_x, None


class _EdgeDot(torch.autograd.Function):
    """Per-edge dot products ⟨x_dst[dst_e], x_src[src_e]⟩ (edge-list order)."""

    @staticmethod
    def forward(ctx, x_dst, x_src, graph):
        ctx.graph = graph
        ctx.save_for_backward(x_dst, x_src)
        return graph.sampled_dot(x_dst, x_src)

    @staticmethod
    def backward(ctx, grad):
        x_dst, x_src = ctx.saved_tensors
        g = ctx.graph
        grad_dst = spmm(g.matrix(grad), x_src) if ctx.needs_input_grad[0] else None
        grad_src = spmm(g.matrix(grad, transpose=True), x_dst) if ctx.needs_input_grad[1] else None
        return grad_dst, grad_src, None


class EdgeGraph:
    """A directed edge list src→dst with per-edge values, aggregated by sum at dst, as CSR.

    ``propagate(values, x)[t] = Σ_{e: dst_e = t} values_e · x[src_e]``; gradients reach the
    values (one per edge, in edge-list order) and ``x``. Both the CSR (rows = dst) and its
    transpose are prepared once, so forward and backward are row-parallel sparse products
    instead of gather + scatter-add (several times faster on CPU).
    """

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, n_src: int, n_dst: int):
        self.src, self.dst, self.n_src, self.n_dst = src, dst, n_src, n_dst
        self.perm, self.crow, self.col = self._csr(dst, src, n_dst)
        self.perm_t, self.crow_t, self.col_t = self._csr(src, dst, n_src)
        self.inv_perm = torch.empty_like(self.perm)
        self.inv_perm[self.perm] = torch.arange(len(self.perm), device=self.perm.device)

    @staticmethod
    def _csr(rows: torch.Tensor, cols: torch.Tensor, n_rows: int):
        perm = torch.argsort(rows * (int(cols.max()) + 1 if len(cols) else 1) + cols)
        counts = torch.bincount(rows, minlength=n_rows)
        crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
        crow[1:] = torch.cumsum(counts, 0)
        return perm, crow, cols[perm].contiguous()

    def matrix(self, values: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        if transpose:
            return torch.sparse_csr_tensor(self.crow_t, self.col_t, values[self.perm_t].detach(),
                                           (self.n_src, self.n_dst))
        return torch.sparse_csr_tensor(self.crow, self.col, values[self.perm].detach(), (self.n_dst, self.n_src))

    def propagate(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _EdgeSpmm.apply(values, x, self)

    def sampled_dot(self, x_dst: torch.Tensor, x_src: torch.Tensor) -> torch.Tensor:
        """⟨x_dst[dst_e], x_src[src_e]⟩ per edge without autograd (sampled dense product)."""
        pattern = torch.sparse_csr_tensor(self.crow, self.col, torch.zeros(len(self.col), dtype=x_dst.dtype,
                                                                           device=x_dst.device),
                                          (self.n_dst, self.n_src))
        out = torch.sparse.sampled_addmm(pattern, x_dst.detach(), x_src.detach().T, beta=0.0)
        return out.values()[self.inv_perm]

    def edge_dot(self, x_dst: torch.Tensor, x_src: torch.Tensor) -> torch.Tensor:
        """Differentiable ⟨x_dst[dst_e], x_src[src_e]⟩ per edge (edge-list order)."""
        return _EdgeDot.apply(x_dst, x_src, self)


def hypergraph_propagate(item_hyper: torch.Tensor, user_hyper: torch.Tensor, item_emb: torch.Tensor,
                         n_layers: int = 1, return_latent: bool = False):
    """Item→hyperedge→node message passing with soft memberships (LGMRec's hypergraph layer).

    Per layer: hyperedge states ``lat = Hᵢᵀ e`` (h×d), then items ``Hᵢ·lat`` and users
    ``Hᵤ·lat``; the next layer starts from the new item states. Returns ``(users, items)``, or
    ``(users, items, lat)`` with the last hyperedge states (users = Hᵤ·lat, items = Hᵢ·lat: rank h).
    """
    e = item_emb
    u = lat = None
    for _ in range(max(1, n_layers)):
        lat = item_hyper.T @ e
        e = item_hyper @ lat
        u = user_hyper @ lat
    return (u, e, lat) if return_latent else (u, e)


def hypergraph_conv(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """diag(1/d_v) H W diag(1/d_e) Hᵀ y without forming the n×n operator (CI2MG's prototype hypergraph).

    ``h`` is the n×E incidence (soft, may be negative), ``weight`` an E×E matrix; d_v / d_e are
    the row / column sums of ``h`` with exact zeros replaced by 1. O(n·E²) instead of O(n²·E).
    """
    dv = h.sum(dim=1)
    de = h.sum(dim=0)
    dv = torch.where(dv == 0, torch.ones_like(dv), dv)
    de = torch.where(de == 0, torch.ones_like(de), de)
    return (h @ (weight @ ((h.T @ y) / de.unsqueeze(1)))) / dv.unsqueeze(1)
