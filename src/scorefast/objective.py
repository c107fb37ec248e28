"""The training objective: one ``nn.Module`` that turns a batch into per-example losses (EDM's loss object).

    t    = times(B)                          the time sampler (on [t_min, t_max]: all of [eps, T], one interval
                                             of a partition, or a fixed time)
    z    = coupling(x0, z ~ N(0, I))         'independent' keeps the draws as they are; an assignment reorders
                                             them over the batch (``couplings``)
    x_t  = alpha_t x0 + sigma_t z            the forward kernel
    loss = w(t) mean || goal - eps_theta(x_t, t) ||^2      per example (B,); the trainer reduces

A :class:`Goal` says what eps_theta regresses onto: the noise z itself (denoising score matching) or
-sigma_t s*(x_t, t) for a known score s* (a regression; ``ScoreGoal``). Every loss is computed in this epsilon
form, whatever the network's parameterisation; the weighting w(t) is a ``weightings.Weighting``. A goal may
also draw its own times and perturb otherwise (the published transport embedding,
``methods.embedding.Embedding``). The objective holds the model, so that DistributedDataParallel sees the
whole step in ``forward``; ``training.loop.fit`` calls it and knows nothing else about it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .sde import SDE, ScoreFn, append_dims
from .time_sampling import TimeSampler, UniformTimes
from .weightings import WEIGHTINGS, Epsilon, Weighting

Tensor = torch.Tensor


class Goal:
    """What eps_theta(x_t, t) regresses onto; this base is denoising score matching's goal, the noise z
    (the epsilon form of the score target -z / sigma_t)."""

    def draw(self, sde: SDE, times: TimeSampler, x0: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor]:
        """(t, the point the noise perturbs): the time sampler's draws (unless ``t`` is given) and x0 itself."""
        return (times(x0.shape[0], x0.device, x0.dtype) if t is None else t), x0

    def perturb(self, sde: SDE, start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = alpha_t start + sigma_t z."""
        return sde.perturb(start, t, noise)

    def __call__(self, sde: SDE, x0: Tensor, xt: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The regression goal of eps_theta(x_t, t) for the batch x0 (computed without gradients)."""
        return noise


class ScoreGoal(Goal):
    """Regression onto a known score: goal -sigma_t s*(x_t, t), so the loss is w || sigma_t (s_theta - s*) ||^2,
    a zero-variance target when s* is exact. ``provider.for_batch(x0)`` gives s* for a batch (a fixed field,
    or one that depends on the batch: a reference batch, the nearest neighbours)."""

    def __init__(self, provider):
        self.provider = provider

    def __call__(self, sde, x0, xt, t, noise):
        return -append_dims(sde.sigma(t), xt.ndim) * self.provider.for_batch(x0)(xt, t)


class FixedField:
    """A score field that does not depend on the batch (the grid score, a closed-form mixture), as a provider."""

    def __init__(self, fn: ScoreFn):
        self.fn = fn

    def for_batch(self, x0: Tensor) -> ScoreFn:
        return self.fn


class Objective(nn.Module):
    """``objective(x0) -> per-example loss (B,)`` for ``model`` (see the module docstring).

    ``times`` defaults to U[eps, T]; ``weighting`` is a ``Weighting`` or its registered name; ``coupling``
    (a ``couplings.Coupling``, default: none) pairs the points to be perturbed (x0, or the embedding's
    transported points) with the batch's noise draws. ``t`` and ``noise`` may be
    given (tests, exact comparisons); given noise is used as it is, uncoupled."""

    def __init__(self, model: nn.Module, sde: SDE, goal: Goal | None = None, times: TimeSampler | None = None,
                 weighting: str | Weighting = "epsilon",
                 coupling: Callable[[Tensor, Tensor], Tensor] | None = None):
        super().__init__()
        self.model, self.sde = model, sde
        self.goal = Goal() if goal is None else goal
        self.times = UniformTimes(sde.eps, sde.T) if times is None else times
        self.weighting = WEIGHTINGS.create(weighting) if isinstance(weighting, str) else weighting
        self.coupling = coupling

    def forward(self, x0: Tensor, t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        t, start = self.goal.draw(self.sde, self.times, x0, t)
        if noise is None:
            noise = torch.randn_like(start)
            if self.coupling is not None:
                noise = self.coupling(start, noise)
        xt = self.goal.perturb(self.sde, start, t, noise)
        with torch.no_grad():
            goal = self.goal(self.sde, x0, xt, t, noise)
        loss = (goal - self.model.eps(xt, t)).pow(2).flatten(1).mean(1)
        return loss if isinstance(self.weighting, Epsilon) else self.weighting(self.sde, t) * loss  # w = 1: no multiply


__all__ = ["FixedField", "Goal", "Objective", "ScoreGoal"]
