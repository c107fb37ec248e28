"""Losses as small objects: ``loss(model, x0) -> per-example loss (B,)``; the trainer reduces.

Both losses draw t from a time sampler on [t_min, t_max] (so a truncated diffusion or one interval of a
piecewise model is just another range), perturb x_t = alpha_t x0 + sigma_t z, and weight in the epsilon form:

    DSM:         w(t) * mean || sigma_t s_theta(x_t, t) + z ||^2
    regression:  w(t) * mean || sigma_t (s_theta(x_t, t) - s*(x_t, t)) ||^2

The weighting w(t) is a ``weightings.Weighting`` (or its registered name): 'epsilon' (w = 1, the
"simple" loss), 'likelihood' (w = g^2 / sigma^2, an ELBO bound), 'inv_g2' (the score-embedding code's),
'min-snr', 'soft-min-snr', 'edm'.
"""

from __future__ import annotations

import torch

from .sde import SDE, ScoreFn, append_dims
from .time_sampling import TimeSampler, UniformTimes
from .weightings import WEIGHTINGS, Epsilon, Weighting

Tensor = torch.Tensor

class DSMLoss:
    """Denoising score matching with times from ``times`` (default: U[t_min, t_max], stratified over the
    batch if asked; t_min / t_max default to the SDE's [eps, T])."""

    def __init__(self, sde: SDE, weighting: str | Weighting = "epsilon", t_min: float | None = None,
                 t_max: float | None = None, stratified: bool = False, times: TimeSampler | None = None):
        self.sde = sde
        self.weighting = WEIGHTINGS.create(weighting) if isinstance(weighting, str) else weighting
        if times is None:
            times = UniformTimes(sde.eps if t_min is None else t_min, sde.T if t_max is None else t_max, stratified)
        self.times = times

    @property
    def t_min(self) -> float:
        return self.times.t_min

    @property
    def t_max(self) -> float:
        return self.times.t_max

    def sample_t(self, n: int, device=None, dtype: torch.dtype | None = None) -> Tensor:
        return self.times(n, device, dtype)

    def weight(self, t: Tensor) -> Tensor:
        return self.weighting(self.sde, t)

    def residual(self, model, x0: Tensor, xt: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """sigma (s_theta - target) in the epsilon form; for DSM the target is -z / sigma."""
        return noise - model.eps(xt, t)

    def __call__(self, model, x0: Tensor, t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        if t is None:
            t = self.sample_t(x0.shape[0], x0.device, x0.dtype)
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.sde.perturb(x0, t, noise)
        return self.reduce(self.residual(model, x0, xt, t, noise), t)

    def reduce(self, residual: Tensor, t: Tensor) -> Tensor:
        """w(t) * mean over all but the batch dimension of residual^2."""
        loss = residual.pow(2).flatten(1).mean(1)
        return loss if isinstance(self.weighting, Epsilon) else self.weight(t) * loss  # w = 1: no multiply


class ScoreRegressionLoss(DSMLoss):
    """Regression onto a given score field s*(x, t): a zero-variance target when s* is exact."""

    def __init__(self, sde: SDE, target: ScoreFn, **kwargs):
        super().__init__(sde, **kwargs)
        self.target = target

    def residual(self, model, x0, xt, t, noise):
        sigma = append_dims(self.sde.sigma(t), xt.ndim)
        with torch.no_grad():
            target = self.target(xt, t)
        return -model.eps(xt, t) - sigma * target
