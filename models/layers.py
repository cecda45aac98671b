"""Parameter tables and layers the models share, created as the reference models create them
(xavier initialisation), and the sign-aligned noise that perturbs embeddings.

Each helper draws its random numbers exactly as the hand-written line it replaces, so a model's
parameters come out the same, in the same order, under the same attribute names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def xavier_table(n_rows: int, dim: int) -> nn.Parameter:
    """A trainable ``n_rows × dim`` table, xavier-uniform initialised: the ID embedding tables of
    every model (one row per user or item), and prototype or projection tables."""
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_rows, dim)))


def xavier_normal(n_rows: int, dim: int) -> torch.Tensor:
    """A ``n_rows × dim`` tensor, xavier-normal initialised (a parameter or a fixed buffer; the
    MMGCN-family models decide which)."""
    return nn.init.xavier_normal_(torch.empty(n_rows, dim))


def xavier_linear(d_in: int, d_out: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` whose weight is re-initialised xavier-uniform (the bias keeps its default)."""
    layer = nn.Linear(d_in, d_out, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    return layer


def sign_perturb(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x + sign(x) ⊙ normalize_row(U[0,1)) · scale, with fresh noise on every call.

    Every row moves by ``scale`` (in L2 norm) and every coordinate away from zero, so the
    perturbed embedding stays in the orthant of the original (SimGCL's augmentation; DGMRec and
    GUME perturb the same way). sign() has zero gradient, so for autograd the noise is a
    constant shift and is built without it.
    """
    with torch.no_grad():
        noise = F.normalize(torch.rand_like(x), dim=-1).mul_(scale).mul_(torch.sign(x))
    return x + noise
