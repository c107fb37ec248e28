"""The only training loop: it receives objects and knows no configuration and no method.

    state = fit(state, objective, batches, optimiser, budget, hooks)

``objective(x0)`` returns per-example losses (an ``objective.Objective``, which holds the model, possibly
wrapped in DistributedDataParallel); ``batches`` yields training batches; ``optimiser.step(loss)`` does the
backward pass and the update; ``budget`` says when to stop; ``hooks`` (checkpoints, snapshots, the
periodic metric, the metrics log, the progress bar) run after every step, in order, each adding to the
step's log row. ``state.wall`` counts the seconds of the steps themselves (plus the precomputation the
caller put there), never the hooks' evaluation time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from .optim import EMA


class Diverged(UserError):
    """The loss became non-finite; the message says at which step."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"training diverged at step {step}: the loss is {loss}")
        self.step, self.loss = step, loss


@dataclass
class TrainState:
    """The model, its weight average and the counters of a run; checkpointed as a whole."""

    model: nn.Module
    ema: EMA
    step: int = 0
    wall: float = 0.0
    loss: float | None = None  # running average of the training loss
    final: bool = False  # set by the loop: the budget is spent after this step

    def observe(self, loss: float) -> None:
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "step": self.step,
                "wall": self.wall, "loss_avg": self.loss, **rng_state(self.model)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.step, self.wall, self.loss = int(state["step"]), float(state["wall"]), state.get("loss_avg")
        set_rng_state(state, self.model)


def rng_state(model: nn.Module) -> dict:
    """The global generators a training step draws from: torch's CPU one ('rng') and, for a model on an
    accelerator (CUDA), that device's ('device_rng'): the batch indices, times and noise are drawn on the model's
    device, so a checkpoint without it would resume a GPU run with the draws of its first steps."""
    device = next(model.parameters()).device
    state = {"rng": torch.get_rng_state()}
    if device.type != "cpu":
        state["device_rng"] = torch.get_device_module(device).get_rng_state(device)
    return state


def set_rng_state(state: dict | torch.Tensor, model: nn.Module) -> None:
    """Restore what ``rng_state`` returned (a bare tensor is the CPU state alone, as older checkpoints hold it)."""
    state = {"rng": state} if isinstance(state, torch.Tensor) else state
    torch.set_rng_state(state["rng"])
    device = next(model.parameters()).device
    if device.type != "cpu" and "device_rng" in state:
        torch.get_device_module(device).set_rng_state(state["device_rng"], device)


@dataclass
class Budget:
    """Stop after ``steps`` steps and/or ``seconds`` of training, or when ``stop()`` says so (a signal).

    ``agree`` reduces (seconds so far, stop asked) over the ranks that train one network together
    (their maximum), so that all of them stop at the same step.
    """

    steps: int | None = None
    seconds: float | None = None
    stop: Callable[[], bool] = field(default=lambda: False)
    agree: Callable[[float, bool], tuple[float, bool]] | None = None

    def __post_init__(self):
        for name in ("steps", "seconds"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise UserError(f"a budget of {value} {name} is not a positive finite number")

    def reached(self, state: TrainState) -> bool:
        if self.steps is not None and state.step >= self.steps:
            return True
        wall, stop = state.wall, self.stop()
        if self.agree is not None:
            wall, stop = self.agree(wall, stop)
        return stop or (self.seconds is not None and wall >= self.seconds)

    def complete(self, state: TrainState) -> bool:
        """Whether the budget itself (not a stop request) is spent."""
        return (self.steps is not None and state.step >= self.steps) or \
            (self.seconds is not None and state.wall >= self.seconds)


class Hook:
    """Runs around the loop: ``start``, ``step`` after every step (returns fields for the log row) and
    ``end``; a stateful hook checkpoints itself through ``state_dict``."""

    def start(self, state: TrainState) -> None:
        """Called once before the first step."""

    def step(self, state: TrainState, row: dict) -> dict | None:
        """Called after every step with the fields earlier hooks added to this step's row."""

    def end(self, state: TrainState) -> None:
        """Called once after the last step (not after an exception)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (nothing for a stateless hook)."""


def fit(state: TrainState, objective: Callable[[torch.Tensor], torch.Tensor], batches: Iterator[torch.Tensor],
        optimiser, budget: Budget, hooks: Sequence[Hook] = ()) -> TrainState:
    """Train ``state.model`` until ``budget`` is reached; raise :class:`Diverged` on a non-finite loss
    (the hooks' last checkpoint is then the last good state)."""
    for hook in hooks:
        hook.start(state)
    state.final = budget.reached(state)
    while not state.final:
        began = time.perf_counter()
        loss = objective(next(batches)).mean()
        value = loss.item()  # the step's one host sync (on a GPU), before the update: a non-finite loss changes nothing
        if not math.isfinite(value):
            raise Diverged(state.step + 1, value)
        optimiser.step(loss)
        state.step += 1
        state.ema.update(state.model, state.step)
        state.observe(value)
        state.wall += time.perf_counter() - began
        state.final = budget.reached(state)
        row: dict = {}
        for hook in hooks:
            row.update(hook.step(state, row) or {})
    for hook in hooks:
        hook.end(state)
    return state


class RandomBatches:
    """Batches of ``size`` examples drawn uniformly with replacement from ``x`` (torch's global RNG,
    which the checkpoint saves, so a resumed run draws the same batches)."""

    def __init__(self, x: torch.Tensor, size: int):
        self.x, self.size = x, int(size)

    def __iter__(self) -> RandomBatches:
        return self

    def __next__(self) -> torch.Tensor:
        return self.x[torch.randint(0, self.x.shape[0], (self.size,), device=self.x.device)]


__all__ = ["Budget", "Diverged", "Hook", "RandomBatches", "TrainState", "fit", "rng_state", "set_rng_state"]
