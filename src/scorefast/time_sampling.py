"""Time samplers: where in [t_min, t_max] the training times of a loss are drawn.

A sampler is a small object ``sampler(n, device, dtype) -> t (n,)`` with the range it draws from, so
that every loss, every interval of a partition and every target uses the same objects; a stateful
sampler checkpoints itself through ``state_dict``.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


class TimeSampler:
    """Draws n times in [t_min, t_max]."""

    def __init__(self, t_min: float, t_max: float):
        self.t_min, self.t_max = float(t_min), float(t_max)
        if not (0 < self.t_min <= self.t_max):
            raise ValueError(f"need 0 < t_min <= t_max, got [{self.t_min}, {self.t_max}]")

    def __call__(self, n: int, device=None, dtype: torch.dtype | None = None) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (nothing for a stateless sampler)."""


class UniformTimes(TimeSampler):
    """t ~ U[t_min, t_max]; ``stratified`` puts exactly one of the n times in each of n equal bins."""

    def __init__(self, t_min: float, t_max: float, stratified: bool = False):
        super().__init__(t_min, t_max)
        if not self.t_min < self.t_max:
            raise ValueError(f"need t_min < t_max, got [{self.t_min}, {self.t_max}]")
        self.stratified = stratified

    def __call__(self, n, device=None, dtype=None):
        u = torch.rand(n, device=device, dtype=dtype)
        if self.stratified:
            u = (torch.arange(n, device=device, dtype=u.dtype) + u) / n
        return self.t_min + (self.t_max - self.t_min) * u


class FixedTime(TimeSampler):
    """Every time is t (the per-time-point networks of parallel score matching)."""

    def __init__(self, t: float):
        super().__init__(t, t)

    def __call__(self, n, device=None, dtype=None):
        return torch.full((n,), self.t_min, device=device, dtype=dtype)


__all__ = ["FixedTime", "TimeSampler", "UniformTimes"]
