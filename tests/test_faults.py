"""Faults of a single-process run: signals, SIGKILL at random points, and resumes that end bitwise equal."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scorefast.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from scorefast.errors import UserError
from scorefast.training.interrupt import Interrupt

BASE = ["--data", "moons", "--n-data", "600", "--batch-size", "64", "--width", "32", "--eval-samples", "100",
        "--eval-steps", "8", "--quiet"]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scorefast.cli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scorefast.cli", "train", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def saved_step(path: Path) -> int | None:
    try:
        return int(load_checkpoint(path)["step"])
    except UserError:
        return None


def wait_for(path: Path, at_least: int, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        step = saved_step(path)
        if step is not None and step >= at_least:
            return step
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step >= {at_least} in {timeout} s")


def weights(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir / "checkpoints" / "net-0.pt")
    return {"model": state["model"], "ema": state["ema"], "adam": state["optimizer"]["adam"]["state"],
            "step": state["step"]}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for k, v in a["adam"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(v[name], b["adam"][k][name]), (k, name)


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_current_step_and_exits_with_its_status(tmp_path, sig, status):
    out = tmp_path / "run"
    p = start("--out", str(out), "--steps", "100000", "--ckpt-every", "100", "--eval-every", "100000", *BASE)
    wait_for(out / "checkpoints" / "net-0.pt", 100)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == status
    lines = [line for line in err.strip().splitlines() if line.startswith("scorefast")]
    assert lines[-1].startswith(f"scorefast: error: stopped by {sig.name}") and "--resume" in lines[-1]
    step = saved_step(out / "checkpoints" / "net-0.pt")
    assert step >= 100 and step % 100 != 0  # the step it was at, not the last periodic checkpoint
    assert not list((out / "checkpoints").glob("*.tmp"))
    done = run("--out", str(out), "--resume", "--steps", str(step + 5), "--quiet")
    assert done.returncode == 0, done.stderr
    assert saved_step(out / "checkpoints" / "net-0.pt") == step + 5


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_corrupts_nothing(tmp_path):
    out = tmp_path / "run"
    p = start("--out", str(out), "--steps", "100000", "--ckpt-every", "7", "--eval-every", "100000", *BASE)
    wait_for(out / "checkpoints" / "net-0.pt", 50)
    p.send_signal(signal.SIGINT)
    time.sleep(0.002)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 130
    assert saved_step(out / "checkpoints" / "net-0.pt") >= 49  # readable: never half-written
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_a_stop_at_once_waits_for_the_file_being_written(tmp_path):
    """A Ctrl-C that arrives inside torch.save (outside the loop, or the second one) is raised when the write
    has ended: the file is whole and in place, no temporary is left (raised inside torch's zip writer it made
    a RuntimeError or an abort instead of exit status 130)."""
    path = tmp_path / "ck.pt"
    state = {"step": 3, "w": torch.arange(1000.0)}

    def write(f):
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode, in the middle of torch.save
        torch.save(state, f)

    with Interrupt(), pytest.raises(KeyboardInterrupt):
        atomic_write(path, write, what="checkpoint")
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])
    assert not list(tmp_path.glob("*.tmp"))
    with Interrupt(), pytest.raises(KeyboardInterrupt):  # outside a write: at once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    save_checkpoint(tmp_path / "after.pt", state)  # nothing held back from before
    assert saved_step(tmp_path / "after.pt") == 3


@pytest.mark.cpu_only
@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_ends_bitwise_equal(tmp_path):
    steps, args = 400, ["--ckpt-every", "25", "--eval-every", "100", "--snapshot-every", "50", *BASE]
    ref = tmp_path / "straight"
    assert run("--out", str(ref), "--steps", str(steps), *args).returncode == 0
    rng = random.Random(os.getpid())
    out = tmp_path / "killed"
    for kill in range(2):
        p = start("--out", str(out), "--steps", str(steps), *args, *(["--resume"] if kill else []))
        wait_for(out / "checkpoints" / "net-0.pt", 25 + 150 * kill)
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait()
    done = run("--out", str(out), "--resume", "--steps", str(steps), "--quiet")
    assert done.returncode == 0, done.stderr
    assert_bitwise_equal(weights(out), weights(ref))


@pytest.mark.cpu_only
@pytest.mark.slow
@pytest.mark.parametrize("extra, phase_seconds", [
    (["--T", "0.4", "--prior", "flow", "--prior-fit", "before", "--prior-steps", "3000"], 1.5),
    (["--method", "fp-regress", "--fp-grid", "181", "--fp-steps", "50"], 0.4),
])
def test_killed_during_precomputation_the_resumed_run_ends_bitwise_equal(tmp_path, extra, phase_seconds):
    """SIGKILL while the prior is fitted before training, or while the FP equation is solved: nothing of that
    phase is kept, and the resumed run redoes it and ends with the weights of an uninterrupted run."""
    args = ["--steps", "60", "--ckpt-every", "20", "--eval-every", "60", *BASE, *extra]
    ref = tmp_path / "straight"
    assert run("--out", str(ref), *args).returncode == 0
    out = tmp_path / "killed"
    p = start("--out", str(out), *args)
    deadline = time.time() + 60
    while not (out / "config.json").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(phase_seconds)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert saved_step(out / "checkpoints" / "net-0.pt") is None, "the kill came too late to test the phase"
    done = run("--out", str(out), "--resume", "--quiet")
    assert done.returncode == 0, done.stderr
    assert_bitwise_equal(weights(out), weights(ref))
