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


LOG_WEIGHT_FLOOR = -60.0  # log-weights below max - 60 are raised to it: exp stays a normal float


def normalised_weights(logits: Tensor) -> Tensor:
    """softmax over the last dimension with exp(logit - max) floored at exp(LOG_WEIGHT_FLOOR): no
    subnormal floats (on x86 each costs ~100x a normal one, in exp and in the products that follow)."""
    w = (logits - logits.amax(-1, keepdim=True)).clamp_(min=LOG_WEIGHT_FLOOR).exp_()
    return w / w.sum(-1, keepdim=True)


def augment_centres(centres: Tensor) -> Tensor:
    """[c, 1, |c|^2] per centre (N, d + 2): the one matrix both products of ``kde_posterior`` read."""
    c = centres.flatten(1)
    return torch.cat([c, torch.ones_like(c[:, :1]), c.pow(2).sum(1, keepdim=True)], dim=1)


def kde_posterior(x: Tensor, alpha: Tensor, var: Tensor, aug: Tensor, chunk: int | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Posterior mean of the centres and log-normaliser under the diffused KDE, per example.

    w_j(x) ∝ exp(-|x - alpha c_j|^2 / (2 var)) over centres c_j (``aug`` = ``augment_centres(c)``);
    returns sum_j w_j c_j (B, d) and log sum_j exp(-|x - alpha c_j|^2 / (2 var)) (B,), for flat x
    (B, d) and alpha, var (B,). The logits are one product [x alpha / var, 0, -alpha^2 / (2 var)] @ aug^T
    (the row constant -|x|^2 / (2 var) is added to the normaliser only), exp(logit - row max) is
    floored at exp(-60) so that no subnormal float reaches the second product (subnormals made it up
    to 10x slower on x86), and one product with aug gives numerator and denominator together. Chunks
    of ``chunk`` centres (all at once by default) are merged by their row maxima.
    """
    d = x.shape[1]
    coef = torch.cat([x * (alpha / var)[:, None], torch.zeros_like(var)[:, None], (-0.5 * alpha**2 / var)[:, None]], 1)
    parts = []
    for c in aug.split(chunk or len(aug)):
        logits = coef @ c.T
        top = logits.amax(1, keepdim=True)
        sums = logits.sub_(top).clamp_(min=LOG_WEIGHT_FLOOR).exp_() @ c[:, : d + 1]
        parts.append((top, sums))
    if len(parts) == 1:
        top, sums = parts[0]
    else:
        tops = torch.cat([p[0] for p in parts], 1)
        top = tops.amax(1, keepdim=True)
        sums = sum(s * torch.exp(m - top) for m, s in parts)
    lognorm = top[:, 0] + sums[:, d].log() - 0.5 * x.pow(2).sum(1) / var
    return sums[:, :d] / sums[:, d:], lognorm


class MixtureScore(torch.nn.Module):
    """Exact score of a diffused Gaussian KDE: centres x_i, bandwidth h, any data shape.

    ``bandwidth = 0`` is the empirical distribution of the centres itself (DSM's target; defined for
    t > 0). One ``kde_posterior`` evaluation, in chunks of ``chunk`` centres, so memory is O(batch x chunk).
    """

    def __init__(self, sde: SDE, centres: Tensor, bandwidth: float, chunk: int = 4096):
        super().__init__()
        if not bandwidth >= 0:
            raise ValueError(f"bandwidth must be >= 0, got {bandwidth}")
        self.sde = sde
        self.bandwidth = float(bandwidth)
        self.chunk = chunk
        self.register_buffer("centres", _floating(centres).flatten(1))
        self.register_buffer("aug", augment_centres(self.centres), persistent=False)

    def _stats(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Flat x, posterior mean of the centres, log-normaliser and the variance, per example."""
        xf = x.flatten(1)
        t = as_time(t, xf).expand(xf.shape[0])
        a = self.sde.alpha(t)
        var = a * a * self.bandwidth**2 + self.sde.sigma(t) ** 2
        mean, lognorm = kde_posterior(xf, a, var, self.aug.to(xf.dtype), self.chunk)
        return xf, a[:, None] * mean, lognorm, var

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        xf, mean, _, var = self._stats(x, t)
        return ((mean - xf) / var[:, None]).view_as(x)

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        _, _, lognorm, var = self._stats(x, t)
        d = self.centres.shape[1]
        return lognorm - math.log(self.centres.shape[0]) - 0.5 * d * torch.log(2 * math.pi * var)


def gaussian_nll(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """-log N(x; mean, cov) per example (flat x)."""
    mvn = torch.distributions.MultivariateNormal(mean.to(x.dtype), covariance_matrix=cov.to(x.dtype))
    return -mvn.log_prob(x.flatten(1))


__all__ = ["GaussianScore", "MixtureScore", "augment_centres", "gaussian_nll", "kde_posterior", "normalised_weights"]
