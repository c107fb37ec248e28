"""The optimiser step and the weight average, as small objects that checkpoint themselves.

:class:`Optimiser` owns what happens to a loss: zero the gradients, back-propagate, clip the gradient
norm, set the learning rate of this step (linear warm-up), step. :class:`EMA` is the exponential moving
average of the weights that every evaluation and sample uses, with the usual (1 + n) / (10 + n) warm-up
so that it is useful from the first steps.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class Optimiser:
    """Adam with a linear learning-rate warm-up over ``warmup`` steps and gradient-norm clipping
    (``grad_clip`` 0: none)."""

    def __init__(self, params, lr: float, warmup: int = 0, grad_clip: float = 0.0):
        self.params = list(params)
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.lr, self.warmup, self.grad_clip = float(lr), int(warmup), float(grad_clip)
        self.steps = 0

    def rate(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (counted from 1)."""
        return self.lr * min(1.0, step / self.warmup) if self.warmup else self.lr

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
    """An exponential moving average of a model's weights: decay min(decay, (1 + n) / (10 + n)) at step n."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay = float(decay)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], weight)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


__all__ = ["EMA", "Optimiser"]
