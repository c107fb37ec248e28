"""Weight averages and learning-rate schedules, as registered plug-ins (pure arithmetic on the step).

``--ema-profile NAME`` gives the EMA's decay at optimiser step n: 'fixed' (today's: min(ema,
(1 + n) / (10 + n))), 'power' (EDM2's power function, Karras et al. 2024: decay (1 - 1/n)^(gamma + 1),
an average over a fixed fraction of the run so far, set by its relative standard deviation, whatever
the run's length), 'warmup' (k-diffusion's EMAWarmup: 1 - (1 + n)^-power, capped). ``--lr-schedule``
gives the learning rate at step n, after the linear warm-up of ``--warmup`` steps: 'constant',
'rsqrt' (EDM2: lr / sqrt(max(n / ref, 1))) and 'cosine' (to lr_min_ratio x lr at the last step).
Nothing here imports torch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..errors import UserError
from ..registry import Plugin, Registry, option

EMA_PROFILES = Registry("EMA profile", flag="ema_profile", title="weight average", default="fixed")
LR_SCHEDULES = Registry("learning-rate schedule", flag="lr_schedule", title="learning-rate schedule",
                        default="constant")


class EMAProfile(Plugin):
    """decay(n): the weight the average keeps at optimiser step n (1-based)."""

    def decay(self, n: int) -> float:
        raise NotImplementedError


@EMA_PROFILES.register("fixed")
@dataclass
class FixedEMA(EMAProfile):
    """min(ema, (1 + n) / (10 + n)): a fixed decay with the usual warm-up."""

    ema: float = option(0.999, "EMA decay of the weights used for sampling (with the usual (1+n)/(10+n) warm-up)",
                        locked=False, min=0, below=1)

    def decay(self, n):
        return min(self.ema, (1 + n) / (10 + n))


def power_std(gamma: float) -> float:
    """The relative standard deviation of EDM2's power-function profile p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)
    on [0, t]: sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


@functools.lru_cache(maxsize=64)
def power_gamma(std: float) -> float:
    """The exponent gamma of EDM2's power-function average with relative standard deviation ``std`` (in (0, 0.2887)):
    the largest real root of (gamma + 2)^2 (gamma + 3) = (gamma + 1) / std^2, i.e. of the cubic
    gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) with s = std^-2 (EDM2's std_to_exp), by Newton's method from
    above (the cubic is convex there, so the iterates fall monotonically onto the root)."""
    s = std**-2.0
    gamma = s  # above the largest root: the cubic and its slope are positive there
    for _ in range(200):
        value = ((gamma + 7) * gamma + 16 - s) * gamma + 12 - s
        step = value / ((3 * gamma + 14) * gamma + 16 - s)
        gamma -= step
        if abs(step) <= 1e-14 * max(1.0, abs(gamma)):
            break
    return gamma


@EMA_PROFILES.register("power")
@dataclass
class PowerEMA(EMAProfile):
    """EDM2's power-function EMA: decay (1 - 1/n)^(gamma + 1); the average at step n weighs step k like
    k^gamma, with relative standard deviation ``ema_std`` of its profile."""

    ema_std: float = option(0.05, "power EMA: relative standard deviation of the averaging profile (EDM2 uses "
                            "0.05-0.15)", locked=False, above=0, below=math.sqrt(1 / 12))

    def decay(self, n):
        return (1 - 1 / n) ** (power_gamma(self.ema_std) + 1) if n > 1 else 0.0


@EMA_PROFILES.register("warmup")
@dataclass
class WarmupEMA(EMAProfile):
    """k-diffusion's EMAWarmup: decay 1 - (1 + n)^-ema_power, at most ema_max."""

    ema_power: float = option(2 / 3, "warm-up EMA: exponent (2/3 suits runs of about 1M steps, 3/4 shorter ones)",
                              locked=False, above=0)
    ema_max: float = option(0.9999, "warm-up EMA: largest decay", locked=False, min=0, below=1)

    def decay(self, n):
        return min(self.ema_max, max(0.0, 1 - (1 + n) ** -self.ema_power))


class LRSchedule(Plugin):
    """factor(n, total): the learning rate at step n is lr x warm-up(n) x factor(n, total)."""

    needs_total = False

    def factor(self, n: int, total: int | None) -> float:
        raise NotImplementedError


@LR_SCHEDULES.register("constant")
@dataclass
class Constant(LRSchedule):
    """The learning rate stays at --lr (after the warm-up)."""

    def factor(self, n, total):
        return 1.0


@LR_SCHEDULES.register("rsqrt")
@dataclass
class RSqrt(LRSchedule):
    """EDM2's inverse square root: 1 / sqrt(max(n / lr_ref_steps, 1))."""

    lr_ref_steps: int = option(2000, "rsqrt schedule: the step after which the rate decays as 1/sqrt(step)",
                               locked=False, min=1)

    def factor(self, n, total):
        return 1 / math.sqrt(max(n / self.lr_ref_steps, 1.0))


@LR_SCHEDULES.register("cosine")
@dataclass
class Cosine(LRSchedule):
    """Cosine decay over the run's steps to lr_min_ratio x lr at the last one."""

    needs_total = True
    lr_min_ratio: float = option(0.1, "cosine schedule: final learning rate as a fraction of --lr", locked=False,
                                 min=0, max=1)

    def factor(self, n, total):
        progress = min(1.0, n / max(total, 1))
        return self.lr_min_ratio + (1 - self.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def learning_rate(lr: float, warmup: int, schedule: LRSchedule, total: int | None):
    """rate(n) for optimiser step n (1-based): lr x min(1, n / warmup) x schedule.factor(n, total)."""
    if schedule.needs_total and total is None:
        raise UserError(f"--lr-schedule {schedule.name} needs the run's length: give --steps")

    def rate(n: int) -> float:
        ramp = min(1.0, n / warmup) if warmup else 1.0
        return lr * ramp * schedule.factor(n, total)
    return rate


__all__ = ["EMA_PROFILES", "EMAProfile", "LR_SCHEDULES", "LRSchedule", "learning_rate", "power_gamma", "power_std"]
