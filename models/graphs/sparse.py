"""Sparse matrices for the models: scipy matrices as torch CSR tensors, their products, and the
degree normalisations of graphs.

Products use torch's CSR layout, which on CPU runs forward and backward several times faster
than COO (measured 3x / 7x on a 20k-node graph).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def to_torch_sparse(m: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A scipy sparse matrix as a float32 torch CSR tensor."""
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    return torch.sparse_csr_tensor(
        torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
        torch.from_numpy(m.data), size=m.shape, device=device)


def sparse_with_transpose(m: sp.spmatrix, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, mᵀ)`` as torch CSR tensors, for ``spmm_t(*pair, x)``: the backward pass multiplies by
    the prepared transpose instead of transposing (sorting) the CSR matrix on every call."""
    m = sp.csr_matrix(m)
    return to_torch_sparse(m, device or "cpu"), to_torch_sparse(m.T.tocsr(), device or "cpu")


def spmm(adj: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(adj, dense)


class _SpmmFixedTranspose(torch.autograd.Function):
    """adj @ x whose backward multiplies by a transpose prepared once (no per-call transposition)."""

    @staticmethod
    def forward(ctx, x, adj, adj_t):
        ctx.adj_t = adj_t
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad):
        return torch.sparse.mm(ctx.adj_t, grad), None, None


def spmm_t(adj: torch.Tensor, adj_t: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``spmm(adj, dense)`` with the CSR transpose ``adj_t`` given (``adj`` itself when symmetric).

    torch transposes a CSR matrix (a sort of its entries) on every backward pass of
    ``torch.sparse.mm``; with the transpose prepared once, backward is one more CSR product.
    """
    if not dense.requires_grad:
        return torch.sparse.mm(adj, dense)
    return _SpmmFixedTranspose.apply(dense, adj, adj_t)


def sym_normalize(m: sp.spmatrix, eps: float = 1e-7) -> sp.csr_matrix:
    """D^{-1/2} M D^{-1/2} with D the row sums plus ``eps`` (the reference's rule for the user-item
    graph: the ``eps`` keeps a node without edges finite)."""
    m = sp.csr_matrix(m, dtype=np.float32)
    deg = np.asarray(m.sum(axis=1)).ravel() + eps
    d = sp.diags(np.power(deg, -0.5).astype(np.float32))
    return sp.csr_matrix(d @ m @ d)


def binary_sym_normalize(m: sp.spmatrix, eps: float = 1e-7) -> sp.csr_matrix:
    """The sparsity pattern of ``m`` weighted (r_i + eps)^{-1/2} (r_j + eps)^{-1/2}, r = row counts.

    DA-MRS's normalisation of its binary item graphs (denoised kNN and co-occurrence): values of
    ``m`` are ignored.
    """
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.data[:] = 1.0
    r = np.diff(m.indptr).astype(np.float64)
    inv = np.power(r + eps, -0.5)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    out = m.copy()
    out.data = (inv[rows] * inv[m.indices]).astype(np.float32)
    return out
