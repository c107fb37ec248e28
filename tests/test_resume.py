"""A run stopped at any step and resumed ends bitwise equal to one that never stopped: for every recipe and every
time sampler, stopped at a step where the adaptive sampler measures, just before it, just after it, and at
random steps. Tiny networks and few steps, so that every combination runs in the default suite."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scorefast.checkpoint import load_checkpoint
from scorefast.config import Config
from scorefast.config.recipes import RECIPES
from scorefast.run import RunDir
from scorefast.time_sampling import TIME_SAMPLERS
from scorefast.training.context import context
from scorefast.training.recipe import jobs, train_network

STEPS, EVERY = 16, 4  # the adaptive sampler measures at steps 4, 8 and 12
TINY = {"data": "moons", "n_data": 200, "batch_size": 16, "width": 16, "eval_every": 1000, "eval_samples": 16,
        "eval_steps": 2, "ckpt_every": 1000}
COMBINATIONS = [(recipe, sampler) for recipe in RECIPES for sampler in [None, *TIME_SAMPLERS.names()]]
REFERENCE: dict = {}


def config(recipe: str, sampler: str | None) -> Config:
    cfg = Config(recipe=recipe, **TINY, **({} if sampler is None else {"time_sampler": sampler}))
    if cfg.time_sampler.name == "adaptive":
        cfg = cfg.replace(adapt_every=EVERY, adapt_probe=16)
    return cfg


def train_to(cfg: Config, out: Path, steps: int) -> dict:
    """Train (or resume) the run in ``out`` until ``steps``; its checkpoint."""
    ctx = context(cfg.replace(out=str(out), steps=steps), RunDir(out))
    ctx.run.mkdir()
    for job in jobs(ctx):
        train_network(ctx, job, progress=False)
    return load_checkpoint(ctx.run.checkpoint(0))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for k, v in a["optimizer"]["adam"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(v[name], b["optimizer"]["adam"]["state"][k][name]), (k, name)
    assert a["times"].keys() == b["times"].keys()
    for k, v in a["times"].items():
        assert v is None and b["times"][k] is None or torch.equal(v, b["times"][k]), k


@pytest.mark.cpu_only
@pytest.mark.parametrize("recipe, sampler", COMBINATIONS)
@settings(max_examples=2, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(stop=st.integers(1, STEPS - 1))
@example(stop=EVERY * 2 - 1)
@example(stop=EVERY * 2)
@example(stop=EVERY * 2 + 1)
@example(stop=STEPS - 1)  # after the last measurement: the run ends with the shares its checkpoint restored
def test_a_run_stopped_at_any_step_and_resumed_ends_bitwise_equal(recipe, sampler, stop):
    cfg = config(recipe, sampler)
    with tempfile.TemporaryDirectory() as tmp:
        if (recipe, sampler) not in REFERENCE:
            REFERENCE[recipe, sampler] = train_to(cfg, Path(tmp) / "straight", STEPS)
        assert int(train_to(cfg, Path(tmp) / "stopped", stop)["step"]) == stop
        assert_bitwise_equal(train_to(cfg, Path(tmp) / "stopped", STEPS), REFERENCE[recipe, sampler])


@pytest.mark.cpu_only
@pytest.mark.slow
def test_a_ddp_group_stopped_at_a_measurement_step_and_resumed_ends_bitwise_equal(tmp_path):
    """Two DDP ranks train one network with the adaptive sampler, stopped at a step where it measures: the resumed
    group measures once on resume, every rank the same way, and ends with the weights of an uninterrupted one."""
    args = ["--workers", "2", "--data", "moons", "--n-data", "400", "--batch-size", "32", "--width", "16",
            "--time-sampler", "adaptive", "--adapt-every", "10", "--adapt-probe", "16", "--eval-every", "1000",
            "--eval-samples", "16", "--eval-steps", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(*extra: str) -> None:
        done = subprocess.run([sys.executable, "-m", "scorefast.cli", "train", *extra], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr

    train("--out", str(tmp_path / "straight"), "--steps", "30", *args)
    train("--out", str(tmp_path / "stopped"), "--steps", "20", *args)
    train("--out", str(tmp_path / "stopped"), "--resume", "--steps", "30", "--quiet")
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "net-0.pt") for name in ("straight", "stopped"))
    assert_bitwise_equal(a, b)
