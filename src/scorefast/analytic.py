"""Closed-form scores and log-densities, for tests, verification and as training targets.

- Gaussian data N(mu, Sigma): p_t = N(alpha_t mu, alpha_t^2 Sigma + sigma_t^2 I).
- A Gaussian kernel density (1/N) sum_i N(x_i, h^2 I) diffuses to the mixture
  (1/N) sum_i N(alpha_t x_i, (alpha_t^2 h^2 + sigma_t^2) I): the exact solution of the Fokker-Planck
  equation from a KDE initial condition, in any dimension (the scalable form of score embedding).
Both are callables ``(x, t) -> score`` like a trained model, so samplers and the likelihood take them.
"""

from __future__ import annotations

import math

import torch

from .sde import SDE, _as_time

Tensor = torch.Tensor


class GaussianScore(torch.nn.Module):
    """Exact score of the diffused N(mu, cov) data (flat, any d)."""

    def __init__(self, sde: SDE, mean: Tensor, cov: Tensor):
        super().__init__()
        self.sde = sde
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.get_default_dtype()))
        self.register_buffer("cov", torch.as_tensor(cov, dtype=torch.get_default_dtype()))

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (d,) and covariance (d, d) of p_t for a scalar t."""
        t = _as_time(t, self.mean)
        a, s = self.sde.alpha(t), self.sde.sigma(t)
        eye = torch.eye(self.mean.numel(), dtype=self.mean.dtype, device=self.mean.device)
        return a * self.mean, a * a * self.cov + s * s * eye

    def _batched(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _as_time(t, x).expand(x.shape[0])
        a = self.sde.alpha(t)[:, None, None]
        s = self.sde.sigma(t)[:, None, None]
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        cov = a * a * self.cov.to(x.dtype) + s * s * eye
        return x - a[:, :, 0] * self.mean.to(x.dtype), cov

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        diff, cov = self._batched(x.flatten(1), t)
        return -torch.linalg.solve(cov, diff.unsqueeze(-1)).squeeze(-1).view_as(x)

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        diff, cov = self._batched(x.flatten(1), t)
        return torch.distributions.MultivariateNormal(torch.zeros_like(diff), covariance_matrix=cov).log_prob(diff)


class MixtureScore(torch.nn.Module):
    """Exact score of a diffused Gaussian KDE: centres x_i, bandwidth h, any data shape.

    Evaluated in chunks of centres with log-sum-exp, so memory is O(batch x chunk).
    """

    def __init__(self, sde: SDE, centres: Tensor, bandwidth: float, chunk: int = 4096):
        super().__init__()
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
        self.sde = sde
        self.bandwidth = float(bandwidth)
        self.chunk = chunk
        self.register_buffer("centres", centres.flatten(1).to(torch.get_default_dtype()))

    def _var(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self.sde.alpha(t)
        return a, a * a * self.bandwidth**2 + self.sde.sigma(t) ** 2

    def _stats(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log-normaliser, responsibility-weighted mean of the centres, and the variance, per example."""
        xf = x.flatten(1)
        t = _as_time(t, xf).expand(xf.shape[0])
        a, var = self._var(t)
        c_all = self.centres.to(xf.dtype)
        lse_parts, means = [], []
        for c in c_all.split(self.chunk):
            ac = a[:, None, None] * c[None]
            logits = -(xf[:, None, :] - ac).pow(2).sum(-1) / (2 * var[:, None])
            lse = torch.logsumexp(logits, dim=1)
            w = torch.softmax(logits, dim=1)
            lse_parts.append(lse)
            means.append(torch.einsum("bn,bnd->bd", w, ac))
        lse = torch.stack(lse_parts, 1)
        total = torch.logsumexp(lse, dim=1)
        mix = torch.softmax(lse, dim=1)
        mean = torch.einsum("bk,kbd->bd", mix, torch.stack(means))
        return total, mean, var

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        _, mean, var = self._stats(x, t)
        return ((mean - x.flatten(1)) / var[:, None]).view_as(x)

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        total, _, var = self._stats(x, t)
        d = self.centres.shape[1]
        return total - math.log(self.centres.shape[0]) - 0.5 * d * torch.log(2 * math.pi * var)


def gaussian_nll(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """-log N(x; mean, cov) per example (flat x)."""
    mvn = torch.distributions.MultivariateNormal(mean.to(x.dtype), covariance_matrix=cov.to(x.dtype))
    return -mvn.log_prob(x.flatten(1))


__all__ = ["GaussianScore", "MixtureScore", "gaussian_nll"]
