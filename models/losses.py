"""Loss building blocks shared by every model (spec names in brackets)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
    """Bayesian personalised ranking: mean of -log σ(s⁺ - s⁻).

    ``gamma=None`` is the stable logsigmoid form [BPR]; ``gamma=1e-10`` reproduces the
    reference ``BPRLoss`` class, -log(γ + σ(s⁺ - s⁻)) [BPR_γ].
    """
    diff = pos - neg
    if gamma is None:
        return -F.logsigmoid(diff).mean()
    return -torch.log(gamma + torch.sigmoid(diff)).mean()


def emb_norm(*embeddings: torch.Tensor) -> torch.Tensor:
    """Sum of Frobenius norms (not squared) over the rows of the last tensor [EmbNorm]."""
    total = sum(torch.linalg.norm(e) for e in embeddings)
    return total / embeddings[-1].shape[0]


def squared_l2(*embeddings: torch.Tensor, batch_size: int) -> torch.Tensor:
    """½ Σ ‖e‖_F² divided by the configured batch size [SqL2]."""
    return 0.5 * sum(e.pow(2).sum() for e in embeddings) / batch_size


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, eps: float = 0.0) -> torch.Tensor:
    """Row-aligned InfoNCE with in-batch negatives [NCE; NCE_eps with eps=1e-9].

    Rows are L2-normalised; the positive of row r of ``a`` is row r of ``b`` and sits in the
    denominator with every other row of ``b``. Duplicate ids are not removed (as the
    reference). With ``eps > 0`` the SGL/SimGCL form adds ``eps`` inside the ratio and the log.
    """
    a = F.normalize(a, dim=1)
    b = F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    if eps == 0.0:
        return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()
    pos = torch.exp(logits.diagonal())
    denom = torch.exp(logits).sum(dim=1) + eps
    return -torch.log(pos / denom + eps).mean()
