"""The optimiser step and the weight average, as small objects that checkpoint themselves.

:class:`Optimiser` owns what happens to a loss: zero the gradients, back-propagate, clip the gradient
norm, set the learning rate of this step (warm-up and schedule), step. :class:`EMA` is the moving
average of the weights that every evaluation and sample uses, with the decay profile of
``schedules`` (by default the usual (1 + n) / (10 + n) warm-up, so that it is useful from the first steps).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config.schedules import Constant, EMAProfile, FixedEMA, LRSchedule, PowerEMA, learning_rate

POSTHOC_STDS = (0.05, 0.10)  # the power EMAs a run keeps for post-hoc reconstruction (EDM2's pair)


class Optimiser:
    """Adam (betas 0.9 and ``beta2``) with a linear learning-rate warm-up over ``warmup`` steps, then
    ``schedule`` (a ``schedules.LRSchedule``; constant by default, ``total`` steps for the cosine), and
    gradient-norm clipping (``grad_clip`` 0: none)."""

    def __init__(self, params, lr: float, warmup: int = 0, grad_clip: float = 0.0, schedule: LRSchedule | None = None,
                 total: int | None = None, beta2: float = 0.999):
        self.params = list(params)
        self.opt = torch.optim.Adam(self.params, lr=lr, betas=(0.9, beta2))
        self.rate = learning_rate(float(lr), int(warmup), schedule or Constant(), total)
        self.grad_clip = float(grad_clip)
        self.steps = 0

    def step(self, loss: torch.Tensor) -> None:
        self.steps += 1
        for group in self.opt.param_groups:
            group["lr"] = self.rate(self.steps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()

    def state_dict(self) -> dict:
        return {"adam": self.opt.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["adam"])
        self.steps = int(state["steps"])


class EMA:
    """An exponential moving average of a model's weights, with the decay of ``profile`` at each step (a
    ``schedules.EMAProfile``; a number is the fixed profile with that decay)."""

    def __init__(self, model: nn.Module, profile: EMAProfile | float):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.profile = FixedEMA(ema=float(profile)) if isinstance(profile, (int, float)) else profile
        self.pairs: tuple | None = None  # (source model, its tensors, ours): walking the module tree costs per step

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if self.pairs is None or self.pairs[0] is not model:
            self.pairs = (model, list(model.parameters()), list(self.model.parameters()),
                          list(model.buffers()), list(self.model.buffers()))
        _, theirs, mine, their_buffers, my_buffers = self.pairs
        torch._foreach_lerp_(mine, theirs, 1 - self.profile.decay(step))
        for a, b in zip(my_buffers, their_buffers):
            a.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def posthoc_emas(model: nn.Module, stds: tuple[float, ...] = POSTHOC_STDS) -> list[EMA]:
    """The power EMAs (relative widths ``stds``) whose snapshots ``posthoc_ema`` recombines into any other width."""
    return [EMA(model, PowerEMA(ema_std=s)) for s in stds]


__all__ = ["EMA", "Optimiser", "POSTHOC_STDS", "posthoc_emas"]
