"""What runs around the training loop: checkpoints, snapshots, the periodic metric, the metrics log and
the progress bar, each a :class:`~scorefast.training.loop.Hook`.

They are given in that order, so a step's checkpoint is on disk before its log row (a run killed in
between re-trains and re-logs that step rather than logging a step it has lost), and the log row and the
progress bar show the metric of the same step.
"""

from __future__ import annotations

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


class PeriodicMetric(Hook):
    """Every ``every`` steps and after the last: ``evaluate()`` -> {'metric', 'metric_name'} or None (not
    ready, e.g. while a prior is still being fitted)."""

    def __init__(self, every: int, evaluate: Callable[[], dict | None]):
        self.every, self.evaluate = every, evaluate

    def step(self, state, row):
        return self.evaluate() if _due(state, self.every) else None


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
    """A tqdm bar over the step budget, showing the running loss and the latest metric."""

    def __init__(self, total: int | None, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.bar = None

    def start(self, state):
        self.bar = tqdm(total=self.total, initial=state.step, desc=self.desc, disable=not self.enabled,
                        dynamic_ncols=True)

    def step(self, state, row):
        self.bar.update()
        if "metric" in row:
            self.bar.set_postfix(loss=f"{state.loss:.4f}", **{row["metric_name"]: f"{row['metric']:.4f}"})
        elif state.step % 50 == 0:
            self.bar.set_postfix(loss=f"{state.loss:.4f}")

    def end(self, state):
        self.bar.close()


__all__ = ["Checkpointer", "MetricsLog", "PeriodicMetric", "Progress", "Snapshots", "TensorBoard"]
