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

from .sde import SDE, as_time

Tensor = torch.Tensor


def _floating(v) -> Tensor:
    """A float tensor of v: float tensors keep their dtype (float64 stays exact), anything else gets the default."""
    v = torch.as_tensor(v)
    return v if v.is_floating_point() else v.to(torch.get_default_dtype())


class GaussianScore(torch.nn.Module):
    """Exact score of the diffused N(mu, cov) data (flat, any d).

    With cov = U diag(l) U^T, cov_t = U diag(alpha_t^2 l + sigma_t^2) U^T: one eigendecomposition up
    front makes every evaluation two matrix products, with no per-example solve.
    """

    def __init__(self, sde: SDE, mean: Tensor, cov: Tensor):
        super().__init__()
        self.sde = sde
        self.register_buffer("mean", _floating(mean))
        self.register_buffer("cov", _floating(cov).to(self.mean.dtype))
        evals, evecs = torch.linalg.eigh(self.cov.double())
        self.register_buffer("evals", evals.to(self.mean.dtype), persistent=False)
        self.register_buffer("evecs", evecs.to(self.mean.dtype), persistent=False)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (d,) and covariance (d, d) of p_t for a scalar t."""
        t = as_time(t, self.mean)
        a, s = self.sde.alpha(t), self.sde.sigma(t)
        eye = torch.eye(self.mean.numel(), dtype=self.mean.dtype, device=self.mean.device)
        return a * self.mean, a * a * self.cov + s * s * eye

    def _eigen(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """U^T (x - alpha_t mu), the eigenvalues of cov_t per example, and U, all in x's dtype."""
        t = as_time(t, x).expand(x.shape[0])
        a, s = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        evecs = self.evecs.to(x.dtype)
        proj = (x - a * self.mean.to(x.dtype)) @ evecs
        return proj, a * a * self.evals.to(x.dtype) + s * s, evecs

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        proj, lam, evecs = self._eigen(x.flatten(1), t)
        return -((proj / lam) @ evecs.T).view_as(x)

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        proj, lam, _ = self._eigen(x.flatten(1), t)
        return -0.5 * (lam.shape[1] * math.log(2 * math.pi) + lam.log().sum(1) + (proj**2 / lam).sum(1))


class MixtureScore(torch.nn.Module):
    """Exact score of a diffused Gaussian KDE: centres x_i, bandwidth h, any data shape.

    ``bandwidth = 0`` is the empirical distribution of the centres itself (DSM's target; defined for
    t > 0). Evaluated in chunks of centres with log-sum-exp, so memory is O(batch x chunk).
    """

    def __init__(self, sde: SDE, centres: Tensor, bandwidth: float, chunk: int = 4096):
        super().__init__()
        if not bandwidth >= 0:
            raise ValueError(f"bandwidth must be >= 0, got {bandwidth}")
        self.sde = sde
        self.bandwidth = float(bandwidth)
        self.chunk = chunk
        self.register_buffer("centres", _floating(centres).flatten(1))

    def _var(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self.sde.alpha(t)
        return a, a * a * self.bandwidth**2 + self.sde.sigma(t) ** 2

    def _stats(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log-normaliser, responsibility-weighted mean of the centres, and the variance, per example."""
        xf = x.flatten(1)
        t = as_time(t, xf).expand(xf.shape[0])
        a, var = self._var(t)
        c_all = self.centres.to(xf.dtype)
        lse_parts, means = [], []
        # -|x - a c|^2 / (2 var) expanded, so that the work is one matrix product, not a (B, N, d) tensor
        xs, half_x2 = xf * (a / var)[:, None], 0.5 * xf.pow(2).sum(1, keepdim=True) / var[:, None]
        half_a2 = 0.5 * (a * a / var)[:, None]
        for c in c_all.split(self.chunk):
            logits = torch.addmm(-half_x2 - half_a2 * c.pow(2).sum(1)[None], xs, c.T)
            lse = torch.logsumexp(logits, dim=1)
            lse_parts.append(lse)
            means.append(a[:, None] * (torch.exp(logits - lse[:, None]) @ c))
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
