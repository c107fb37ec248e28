"""`make demo`'s job, shortened: it trains, measures and writes its numbers, and the model it trains beats the best
Gaussian fit of the data (the 8 modes are far from Gaussian); its log off a terminal is a few readable lines."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from scorefast.data import load_data
from scorefast.demo import run_demo
from scorefast.training.hooks import Progress


@pytest.mark.slow
def test_demo_beats_the_best_gaussian(tmp_path, capsys):
    out = tmp_path / "demo"
    numbers = run_demo(str(out), steps=600, data="8gaussians")
    log = "".join(capsys.readouterr())  # off a terminal: a few lines, no progress bars
    assert "\r" not in log and len(log.splitlines()) < 60 and "train: step 600/600 (100%)" in log, log
    assert json.loads((out / "demo.json").read_text()) == numbers
    assert (out / "samples.png").stat().st_size > 0 and numbers["steps"] == 600
    x = load_data("8gaussians", n=20000, seed=3).x.double()
    cov = torch.cov(x.T)
    gaussian_nll = 0.5 * (x.shape[1] * math.log(2 * math.pi * math.e) + torch.logdet(cov).item())
    assert numbers["nll_nats"] < gaussian_nll - 0.5
    assert 0 < numbers["swd"] < 0.5


def drive_progress(capsys, total, seconds, steps, terminal=False):
    """Runs a Progress hook over ``steps`` steps of 10 ms each; returns its stderr lines."""
    state = SimpleNamespace(step=0, wall=0.0, loss=None, final=False)
    hook = Progress(total, "train", seconds=seconds, terminal=terminal)
    hook.start(state)
    for k in range(1, steps + 1):
        state.step, state.wall, state.loss, state.final = k, k * 0.01, 1.0 / k, k == steps
        hook.step(state, {"heldout": 2.0 / k} if k % 100 == 0 else {})
    hook.end(state)
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("total, seconds", [(3000, None), (None, 30.0)])
def test_a_log_that_is_not_a_terminal_gets_one_line_every_few_percent(capsys, total, seconds):
    lines = drive_progress(capsys, total, seconds, 3000)
    estimate, *progress = lines
    assert estimate.startswith("scorefast: 10.0 ms a step; about 0.5 min more")  # 2900 steps of 10 ms
    assert 20 <= len(progress) <= 21 and not any("\r" in line for line in lines)
    assert progress[-1].startswith("train: step 3000") and "(100%)" in progress[-1] and "left" not in progress[-1]
    halfway = next(line for line in progress if "(50%)" in line)
    assert "step 1500" in halfway and "loss 0.0007" in halfway and "heldout 0.0013" in halfway
    assert "(15 s left)" in halfway  # 1500 steps of 10 ms


def test_a_terminal_gets_a_bar_and_no_log_lines(capsys):
    lines = drive_progress(capsys, 300, None, 300, terminal=True)
    assert not any(line.startswith("train: step") for line in lines)
    assert lines[-1].startswith("train: 100%|") and "300/300" in lines[-1] and "heldout=0.0067" in lines[-1]

