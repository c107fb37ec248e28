"""What runs around the training loop: checkpoints, snapshots, the periodic metric, the metrics log and
the progress bar, each a :class:`~scorefast.training.loop.Hook`.

They are given in that order, so a step's checkpoint is on disk before its log row (a run killed in
between re-trains and re-logs that step rather than logging a step it has lost), and the log row and the
progress bar show the metric of the same step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from ..checkpoint import save_checkpoint
from .loop import Hook, TrainState


def _due(state: TrainState, every: int) -> bool:
    return state.step % every == 0 or state.final


class Checkpointer(Hook):
    """Writes ``collect(done)`` atomically to ``path`` every ``every`` steps and after the last step.

    ``collect`` runs on every rank of a data-parallel group (it may gather from all of them); only the
    ``writer`` writes."""

    def __init__(self, path: Path, every: int, collect: Callable[[bool], dict], done: Callable[[TrainState], bool],
                 writer: bool = True):
        self.path, self.every, self.collect, self.done, self.writer = path, every, collect, done, writer
        self.saved_step: int | None = None

    def start(self, state):
        self.saved_step = state.step if self.path.exists() else None

    def save(self, state: TrainState) -> None:
        payload = self.collect(self.done(state))
        if self.writer:
            save_checkpoint(self.path, payload)
        self.saved_step = state.step

    def step(self, state, row):
        if _due(state, self.every):
            self.save(state)


class Snapshots(Hook):
    """Keeps the EMA weights every ``every`` steps at ``path_for(step)``, for quality-vs-time curves."""

    def __init__(self, path_for: Callable[[int], Path], every: int, writer: bool = True):
        self.path_for, self.every, self.writer = path_for, every, writer

    def step(self, state, row):
        if self.every and self.writer and state.step % self.every == 0:
            save_checkpoint(self.path_for(state.step), {"ema": state.ema.state_dict(), "step": state.step,
                                                        "wall": state.wall, "time": time.time()})


class PostHocEMA(Hook):
    """Tracks ``emas`` (power EMAs: ``optim.posthoc_emas``) of the trained weights and keeps them all every
    ``every`` steps and after the last at ``path_for(step)``, from which ``posthoc_ema`` reconstructs an
    average of any other length. Their state is checkpointed, so a resumed run continues them exactly."""

    def __init__(self, emas: list, path_for: Callable[[int], Path], every: int, writer: bool = True):
        self.emas, self.path_for, self.every, self.writer = emas, path_for, every, writer

    def step(self, state, row):
        for ema in self.emas:
            ema.update(state.model, state.step)
        if self.writer and _due(state, self.every):
            save_checkpoint(self.path_for(state.step), {"stds": [e.profile.ema_std for e in self.emas],
                                                        "emas": [e.state_dict() for e in self.emas],
                                                        "step": state.step})

    def state_dict(self):
        return {"emas": [e.state_dict() for e in self.emas]}

    def load_state_dict(self, state):
        for ema, saved in zip(self.emas, state.get("emas", ())):
            ema.load_state_dict(saved)


class AdaptTimes(Hook):
    """Every ``every`` steps, measures the held-out bound per bin (``measure()``) and moves an adaptive time
    sampler's shares; under DDP ``total`` sums the draw counts over the group, so that every rank moves the
    same way. Its time counts in the run's wall-clock: it is part of training. The step's row gets the
    bound summed over the bins (``heldout``): paired, so it is comparable across the run."""

    def __init__(self, sampler, measure: Callable[[], object], every: int, total: Callable | None = None):
        self.sampler, self.measure, self.every, self.total = sampler, measure, every, total
        self.measured: int | None = None  # the step of the last measurement

    def adapt(self, state: TrainState) -> None:
        began = time.perf_counter()
        if self.total is not None:
            self.sampler.counts = self.total(self.sampler.counts)
        self.sampler.update(self.measure())
        self.measured = state.step
        state.wall += time.perf_counter() - began

    def start(self, state):
        """The first measurement; on resume, the one a run that stopped at a measurement step skipped (no step
        followed it there), so that the resumed run draws what an uninterrupted one would."""
        skipped = self.measured is not None and self.measured != state.step and state.step % self.every == 0
        if self.sampler.previous is None or skipped:
            self.adapt(state)

    def state_dict(self):
        return {"measured": self.measured}

    def load_state_dict(self, state):
        self.measured = state.get("measured")

    def step(self, state, row):
        if state.step % self.every == 0 and not state.final:
            self.adapt(state)
            return {"heldout": float(self.sampler.previous.sum())}
        return None


class PeriodicMetric(Hook):
    """Every ``every`` steps and after the last: ``evaluate()`` -> {'metric', 'metric_name'} or None (not
    ready, e.g. while a prior is still being fitted).

    With ``budget`` (a fraction, e.g. 0.1) an evaluation that is due is skipped when the evaluations so far
    plus one more (at the measured cost of the last) would exceed that fraction of the run's time (its
    training wall-clock plus the evaluations), so the interval stretches by itself where an evaluation is
    dear; the first evaluation, which measures the cost, always runs. The time spent is checkpointed."""

    def __init__(self, every: int, evaluate: Callable[[], dict | None], budget: float = 0.0):
        self.every, self.evaluate, self.budget = every, evaluate, budget
        self.spent, self.last = 0.0, None

    def affordable(self, state: TrainState) -> bool:
        if not self.budget or self.last is None:
            return True
        return self.spent + self.last <= self.budget * (state.wall + self.spent + self.last)

    def step(self, state, row):
        if not _due(state, self.every) or not self.affordable(state):
            return None
        began = time.perf_counter()
        out = self.evaluate()
        if out is not None:
            self.last = time.perf_counter() - began
            self.spent += self.last
        return out

    def state_dict(self):
        return {"spent": self.spent, "last": self.last}

    def load_state_dict(self, state):
        self.spent, self.last = float(state.get("spent", 0.0)), state.get("last")


class MetricsLog(Hook):
    """Appends {step, wall, loss, net, time, + the row's fields} every ``every`` steps and after the last."""

    def __init__(self, append: Callable[[dict], None], every: int, net: int | str, writer: bool = True):
        self.append, self.every, self.net, self.writer = append, every, net, writer

    def step(self, state, row):
        if self.writer and _due(state, self.every):
            self.append({"step": state.step, "wall": round(state.wall, 4), "loss": state.loss, "net": self.net,
                         "time": time.time(), **row})


class TensorBoard(Hook):
    """Writes the metrics log's rows also as TensorBoard scalars (loss, wall-clock, the periodic metric) in
    ``folder``, one tag per network (``loss/net-0``, ...). Needs the ``tensorboard`` package (the extra
    ``scorefast[tensorboard]``)."""

    def __init__(self, folder: Path, every: int, net: int | str, writer: bool = True):
        self.folder, self.every, self.net, self.writer = folder, every, net, writer
        self.board = None

    def start(self, state):
        if self.writer:
            from torch.utils.tensorboard import SummaryWriter
            self.board = SummaryWriter(str(self.folder), flush_secs=10)

    def step(self, state, row):
        if self.board is not None and _due(state, self.every):
            self.board.add_scalar(f"loss/net-{self.net}", state.loss, state.step)
            self.board.add_scalar(f"wall_seconds/net-{self.net}", state.wall, state.step)
            if "metric" in row:
                self.board.add_scalar(f"{row['metric_name']}/net-{self.net}", row["metric"], state.step)

    def end(self, state):
        if self.board is not None:
            self.board.close()


class Progress(Hook):
    """Training progress over the step budget (or the time budget when there is no step budget).

    On a terminal: a tqdm bar showing the running loss and the latest metric. Elsewhere (a CI or file log):
    no bar, one line every ``every`` of the run (5% by default: at most 21 lines) with the step, the loss,
    the latest metric and the time left. Once the first steps are timed, one line says how long the run
    should take (its steps at that pace, or its time budget, plus at most ``eval_budget`` of evaluation).

    The training loss is an average over the time sampler's draws; an adaptive sampler moves its draws
    to harder times, so that average rises while the model improves. The line therefore also shows the
    held-out bound (``heldout``, added to the row by :class:`AdaptTimes`), which is measured on the same
    probe set and noise throughout and is comparable across the run."""

    ESTIMATE_AFTER = 1.0  # seconds of training before the estimate

    def __init__(self, total: int | None, desc: str, enabled: bool = True, seconds: float | None = None,
                 eval_budget: float = 0.0, terminal: bool | None = None, every: float = 0.05):
        self.total, self.desc, self.enabled, self.seconds, self.eval_budget = total, desc, enabled, seconds, eval_budget
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.every = every
        self.bar, self.estimated, self.fields, self.line = None, False, {}, 0

    def start(self, state):
        self.bar = tqdm(total=self.total, initial=state.step, desc=self.desc,
                        disable=not (self.enabled and self.terminal), dynamic_ncols=True, file=sys.stderr)
        self.began, self.estimated = (state.step, state.wall), False
        self.line = self.share(state)

    def say(self, text: str) -> None:
        if self.terminal:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def fraction(self, state: TrainState) -> float:
        """The share of the budget done: steps when there is a step budget, else seconds."""
        if self.total:
            return state.step / self.total
        return state.wall / self.seconds if self.seconds else 0.0

    def share(self, state: TrainState) -> int:
        """How many ``every`` of the budget are done (a new one is due for a line)."""
        return int(self.fraction(state) / self.every + 1e-9)

    def left(self, state: TrainState) -> float | None:
        """Seconds of training left at the pace since the start (the earlier of the two budgets)."""
        steps, wall = state.step - self.began[0], state.wall - self.began[1]
        if steps <= 0:
            return None
        left = [v for v in ((self.total - state.step) * wall / steps if self.total else None,
                            self.seconds - state.wall if self.seconds else None) if v is not None]
        return max(0.0, min(left)) if left else None

    def estimate(self, state: TrainState) -> None:
        steps, wall = state.step - self.began[0], state.wall - self.began[1]
        pace = wall / steps
        left = self.left(state)
        expect = left / (1 - self.eval_budget) if left is not None and self.eval_budget < 1 else None
        if expect is not None:
            self.say(f"scorefast: {pace * 1e3:.1f} ms a step; about {expect / 60:.1f} min more of training and "
                     f"evaluation (evaluation at most {self.eval_budget:.0%})")
        self.estimated = True

    def step(self, state, row):
        if not self.enabled:
            return
        if not self.estimated and state.wall - self.began[1] >= self.ESTIMATE_AFTER:
            self.estimate(state)
        if "metric" in row:
            self.fields[row["metric_name"]] = f"{row['metric']:.4f}"
        if "heldout" in row:
            self.fields["heldout"] = f"{row['heldout']:.4f}"
        if self.terminal:
            self.bar.update()
            if "metric" in row or "heldout" in row or state.step % 50 == 0:
                self.bar.set_postfix(loss=f"{state.loss:.4f}", **self.fields)
        elif state.final or self.share(state) > self.line:
            self.line = self.share(state)
            left = self.left(state)
            total = f"/{self.total}" if self.total else ""
            fields = "".join(f" {k} {v}" for k, v in self.fields.items())
            time_left = "" if state.final or left is None else \
                f" ({left:.0f} s left)" if left < 90 else f" ({left / 60:.1f} min left)"
            self.say(f"{self.desc}: step {state.step}{total} ({self.fraction(state):.0%}) loss {state.loss:.4f}"
                     f"{fields}{time_left}")

    def end(self, state):
        self.bar.close()


__all__ = ["AdaptTimes", "Checkpointer", "MetricsLog", "PeriodicMetric", "PostHocEMA", "Progress", "Snapshots",
           "TensorBoard"]
