"""The training loop on its own, with fake objectives: budgets, divergence, hook order, exact resume."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from scorefast.errors import UserError
from scorefast.training.loop import Budget, Diverged, Hook, RandomBatches, TrainState, fit
from scorefast.training.optim import EMA, Optimiser


class Quadratic(nn.Module):
    """A noisy quadratic objective: per-example loss |w - x0 + 0.1 z|^2 with z from torch's global RNG."""

    def __init__(self, model: nn.Module, delay: float = 0.0, nan_at: int | None = None):
        super().__init__()
        self.model, self.delay, self.nan_at, self.calls = model, delay, nan_at, 0

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        loss = (self.model.w - x0 + 0.1 * torch.randn_like(x0)).pow(2).sum(1)
        return loss * float("nan") if self.nan_at is not None and self.calls >= self.nan_at else loss


class Vector(nn.Module):
    def __init__(self, d: int = 3):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))


class Recorder(Hook):
    """Logs every call as (name, event, step) into a shared list and adds its name to the row."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def start(self, state):
        self.log.append((self.name, "start", state.step))

    def step(self, state, row):
        self.log.append((self.name, "step", state.step, tuple(row)))
        return {self.name: state.step}

    def end(self, state):
        self.log.append((self.name, "end", state.step))


def setup(seed: int = 0, lr: float = 0.05):
    torch.manual_seed(seed)
    model = Vector()
    state = TrainState(model, EMA(model, 0.9))
    opt = Optimiser(model.parameters(), lr=lr, warmup=3, grad_clip=1.0)
    data = torch.randn(64, 3)
    return state, opt, data


def test_budget_in_steps_and_hooks_in_order():
    state, opt, data = setup()
    log: list = []
    fit(state, Quadratic(state.model), RandomBatches(data, 8), opt, Budget(steps=4),
        [Recorder("a", log), Recorder("b", log)])
    assert state.step == 4 and opt.steps == 4
    assert log[0] == ("a", "start", 0) and log[1] == ("b", "start", 0)
    assert log[-2:] == [("a", "end", 4), ("b", "end", 4)]
    steps = log[2:-2]
    assert [e[0] for e in steps] == ["a", "b"] * 4
    # each hook sees the fields of the hooks before it in the same step's row
    assert all(e[3] == () for e in steps if e[0] == "a") and all(e[3] == ("a",) for e in steps if e[0] == "b")
    assert state.final and state.loss is not None


def test_budget_in_seconds_stops_at_the_first_step_past_it():
    state, opt, data = setup()
    walls: list[float] = []

    class Walls(Hook):
        def step(self, s, row):
            walls.append(s.wall)

    fit(state, Quadratic(state.model, delay=0.01), RandomBatches(data, 8), opt, Budget(seconds=0.08), [Walls()])
    assert walls[-1] >= 0.08 and all(w < 0.08 for w in walls[:-1])
    assert 4 <= state.step <= 9


def test_a_spent_budget_trains_nothing_and_stop_requests_end_the_loop():
    state, opt, data = setup()
    state.step = 10
    objective = Quadratic(state.model)
    fit(state, objective, RandomBatches(data, 8), opt, Budget(steps=10))
    assert objective.calls == 0
    state, opt, data = setup()
    asked = {"stop": False}

    class AskAtThree(Hook):
        def step(self, s, row):
            asked["stop"] = s.step >= 3

    budget = Budget(steps=100, stop=lambda: asked["stop"])
    fit(state, Quadratic(state.model), RandomBatches(data, 8), opt, budget, [AskAtThree()])
    # asked during the hooks of step 3, after that step's budget check: honoured at the end of step 4
    assert state.step == 4 and not budget.complete(state)


def test_group_agreement_decides_when_to_stop():
    state, opt, data = setup()
    seen = []

    def agree(wall, stop):  # another rank of the group is slower and asks to stop at its 5th call
        seen.append(wall)
        return wall + 1.0, len(seen) >= 5

    fit(state, Quadratic(state.model), RandomBatches(data, 8), opt, Budget(seconds=1e6, agree=agree))
    assert state.step == 4 and len(seen) == 5


def test_divergence_raises_with_the_step_and_leaves_earlier_state():
    state, opt, data = setup()
    with pytest.raises(Diverged, match="step 6") as err:
        fit(state, Quadratic(state.model, nan_at=6), RandomBatches(data, 8), opt, Budget(steps=50))
    assert isinstance(err.value, UserError) and err.value.step == 6 and state.step == 5
    assert torch.isfinite(state.model.w).all()


@pytest.mark.parametrize("bad", [0, -3, float("nan"), float("inf")])
def test_budget_refuses_nonsense(bad):
    with pytest.raises(UserError):
        Budget(steps=bad)
    with pytest.raises(UserError):
        Budget(seconds=bad)


def test_resume_mid_run_gives_the_same_state_bitwise():
    state, opt, data = setup(seed=3)
    fit(state, Quadratic(state.model), RandomBatches(data, 8), opt, Budget(steps=12))
    straight = (state.model.w.detach().clone(), state.ema.model.w.detach().clone(), state.loss)

    state, opt, data = setup(seed=3)
    fit(state, Quadratic(state.model), RandomBatches(data, 8), opt, Budget(steps=5))
    saved = {**state.state_dict(), "optimizer": opt.state_dict()}
    torch.manual_seed(999)  # a new process: the global RNG is anywhere
    model = Vector()
    resumed, opt2 = TrainState(model, EMA(model, 0.9)), Optimiser(model.parameters(), lr=0.05, warmup=3, grad_clip=1.0)
    resumed.load_state_dict(saved)
    opt2.load_state_dict(saved["optimizer"])
    fit(resumed, Quadratic(model), RandomBatches(data, 8), opt2, Budget(steps=12))
    assert torch.equal(resumed.model.w, straight[0]) and torch.equal(resumed.ema.model.w, straight[1])
    assert resumed.loss == straight[2] and resumed.step == 12


def test_optimiser_warmup_and_ema_profile():
    model = Vector()
    opt = Optimiser(model.parameters(), lr=0.1, warmup=4)
    assert [opt.rate(s) for s in (1, 2, 4, 9)] == pytest.approx([0.025, 0.05, 0.1, 0.1])
    ema = EMA(model, 0.99)
    with torch.no_grad():
        model.w.fill_(1.0)
    ema.update(model, step=1)  # decay min(0.99, 2/11)
    assert torch.allclose(ema.model.w, torch.full((3,), 1 - 2 / 11))
