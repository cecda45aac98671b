"""A mutual-information upper bound between two representations: DGMRec keeps the general and
the specific part of each modality apart by minimising it (CLUB, Cheng et al., ICML 2020)."""
from __future__ import annotations

import torch
from torch import nn


class CLUBSample(nn.Module):
    """Sampled CLUB upper bound of I(x; y) with a diagonal Gaussian q(y|x) (Cheng et al. 2020).

    ``forward`` is the bound used as a loss: mean_i [log q(y_i|x_i) - log q(y_π(i)|x_i)] / 2
    without the shared constant and log-variance terms; ``learning_loss`` is the negative
    log-likelihood (up to constants) that fits q.
    """

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        h = hidden // 2
        self.p_mu = nn.Sequential(nn.Linear(dim, h), nn.ReLU(), nn.Linear(h, dim))
        self.p_logvar = nn.Sequential(nn.Linear(dim, h), nn.ReLU(), nn.Linear(h, dim), nn.Tanh())

    def forward(self, x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        mu, logvar = self.p_mu(x), self.p_logvar(x)
        if perm is None:
            perm = torch.randperm(x.shape[0], device=x.device)
        inv_var = torch.exp(-logvar)
        pos = -((mu - y) ** 2 * inv_var).sum(dim=1)
        neg = -((mu - y[perm]) ** 2 * inv_var).sum(dim=1)
        return (pos - neg).mean() / 2.0

    def learning_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.p_mu(x), self.p_logvar(x)
        loglik = (-(mu - y) ** 2 / torch.exp(logvar) - logvar).sum(dim=1).mean()
        return -loglik
