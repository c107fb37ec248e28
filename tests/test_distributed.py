"""Interval-parallel training on torch.distributed (gloo, 2 CPU processes), and its failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scorefast.checkpoint import load_checkpoint
from scorefast.errors import UserError
from scorefast.training.launcher import assignment, layout

SMALL = ["--data", "moons", "--n-data", "600", "--batch-size", "64", "--width", "32", "--eval-samples", "200",
         "--eval-steps", "10", "--quiet"]


def cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "scorefast.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def worker_pids(run: Path) -> list[int]:
    """PIDs of this run's torch.distributed workers (python -m scorefast.distributed RUN)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"scorefast.distributed" in cmd and str(run).encode() in cmd and b"torch.distributed.run" not in cmd:
            pids.append(int(d.name))
    return pids


def wait_for_checkpoints(run: Path, k: int, min_step: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if all(load_checkpoint(run / "checkpoints" / f"net-{i}.pt")["step"] >= min_step for i in range(k)):
                return
        except UserError:
            pass
        time.sleep(0.3)
    raise AssertionError("workers did not checkpoint in time")


def test_layout_and_assignment():
    assert layout(2, 2) == (2, 1)
    assert layout(2, 1) == (1, 2)  # one network: plain DDP over both workers
    assert layout(4, 2) == (2, 2)
    assert layout(2, 8) == (2, 1)
    assert assignment(8, 2) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    for bad in [(3, 2), (0, 2)]:
        with pytest.raises(UserError):
            layout(*bad)


def test_bad_layout_fails_before_any_process(tmp_path):
    run = tmp_path / "bad"
    p = cli("train", "--out", str(run), "--intervals", "2", "--workers", "3", "--steps", "10", *SMALL)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "--workers 3" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


@pytest.mark.slow
def test_two_intervals_train_concurrently_and_assemble(tmp_path):
    from scorefast.run import open_run
    run = tmp_path / "par"
    # long enough (a few seconds per network) that the workers' start-up jitter (over 1 s was seen on a quiet
    # 2-core machine, where 1,000 steps took 1.1 s) cannot hide the overlap
    p = cli("train", "--out", str(run), "--intervals", "2", "--workers", "2", "--steps", "4000",
            "--eval-every", "50", *SMALL)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    for k in (0, 1):
        assert load_checkpoint(run / "checkpoints" / f"net-{k}.pt")["step"] == 4000
    r = rows(run)
    spans = {k: (min(x["time"] for x in r if x["net"] == k), max(x["time"] for x in r if x["net"] == k))
             for k in (0, 1)}
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], f"intervals did not overlap in time: {spans}"
    model_run = open_run(run)
    edges = list(model_run.model.edges)
    assert len(edges) == 3 and edges[0] == pytest.approx(1e-3) and edges[-1] == pytest.approx(1.0)
    x = model_run.sample(100, steps=10, progress=False)
    assert x.shape == (100, 2) and np.isfinite(x.numpy()).all()
    res = model_run.nll("moons", n=50, steps=10, progress=False)
    assert np.isfinite(res["nll_nats"])


@pytest.mark.slow
def test_dying_worker_stops_cleanly_then_resume_finishes(tmp_path):
    run = tmp_path / "die"
    p = cli("train", "--out", str(run), "--intervals", "2", "--workers", "2", "--steps", "100000",
                  "--ckpt-every", "20", "--eval-every", "100000", *SMALL)
    wait_for_checkpoints(run, 2, 20)
    victims = worker_pids(run)
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    _, err = p.communicate(timeout=120)  # no hang: torchrun stops the other worker
    assert p.returncode == 2 and "--resume" in err
    saved = [load_checkpoint(run / "checkpoints" / f"net-{k}.pt")["step"] for k in (0, 1)]
    target = max(saved) + 20
    p = cli("train", "--out", str(run), "--resume", "--steps", str(target), "--quiet")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert [load_checkpoint(run / "checkpoints" / f"net-{k}.pt")["step"] for k in (0, 1)] == [target, target]


@pytest.mark.slow
def test_max_restarts_recovers_by_itself(tmp_path):
    run = tmp_path / "restart"
    p = cli("train", "--out", str(run), "--intervals", "2", "--workers", "2", "--steps", "1500",
                  "--ckpt-every", "20", "--eval-every", "100000", "--max-restarts", "1", *SMALL)
    wait_for_checkpoints(run, 2, 20)
    os.kill(worker_pids(run)[1], signal.SIGKILL)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert [load_checkpoint(run / "checkpoints" / f"net-{k}.pt")["step"] for k in (0, 1)] == [1500, 1500]


def launcher_pid(p: subprocess.Popen) -> int:
    return p.pid


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


@pytest.mark.slow
def test_a_hung_worker_is_detected_and_the_job_stops(tmp_path):
    """SIGSTOP one worker: the other sees its heartbeat stop, and the job ends within --worker-timeout plus a
    few seconds (the hung worker is killed, so torchrun does not wait out its own 30 s grace)."""
    run = tmp_path / "hang"
    p = cli("train", "--out", str(run), "--intervals", "2", "--workers", "2", "--steps", "100000", "--ckpt-every", "20",
            "--eval-every", "100000", "--worker-timeout", "5", *SMALL)
    wait_for_checkpoints(run, 2, 20)
    victim = worker_pids(run)[1]
    os.kill(victim, signal.SIGSTOP)
    began = time.time()
    try:
        _, err = p.communicate(timeout=120)
    finally:
        for pid in alive([victim]):
            os.kill(pid, signal.SIGKILL)
    assert time.time() - began < 5 + 25
    assert p.returncode == 2 and "no heartbeat for 5 s" in err and "--resume" in err
    assert not alive(worker_pids(run))
    for k in (0, 1):
        load_checkpoint(run / "checkpoints" / f"net-{k}.pt")  # intact


@pytest.mark.slow
def test_killing_the_launcher_stops_the_workers_with_their_checkpoints(tmp_path):
    run = tmp_path / "orphans"
    p = cli("train", "--out", str(run), "--intervals", "2", "--workers", "2", "--steps", "100000", "--ckpt-every",
            "1000", "--eval-every", "100000", *SMALL)
    wait_for_checkpoints(run, 2, 1000)
    workers = worker_pids(run)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.time() + 30
    while alive(workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(workers), "workers outlived the scorefast train process that launched them"
    steps = [load_checkpoint(run / "checkpoints" / f"net-{k}.pt")["step"] for k in (0, 1)]
    assert all(s > 1000 and s % 1000 for s in steps)  # each saved the step it stopped at
    r = subprocess.run([sys.executable, "-m", "scorefast.cli", "train", "--out", str(run), "--resume", "--steps",
                        str(max(steps) + 10), "--quiet"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_a_prepared_run_copied_elsewhere_writes_into_the_copy(tmp_path):
    original, copy = tmp_path / "prepared", tmp_path / "copy"
    r = subprocess.run([sys.executable, "-m", "scorefast.cli", "train", "--out", str(original), "--intervals", "2",
                        "--workers", "2", "--steps", "30", "--prepare", *SMALL], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import shutil
    shutil.copytree(original, copy)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                        "scorefast.distributed", str(copy)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert [load_checkpoint(copy / "checkpoints" / f"net-{k}.pt")["step"] for k in (0, 1)] == [30, 30]
    assert not (original / "checkpoints").exists() and not (original / "metrics.jsonl").exists()


@pytest.mark.slow
def test_ports_in_use_do_not_stop_a_local_launch(tmp_path):
    import socket
    held = []
    for port in (29400, 29500):  # torchrun's and torch.distributed's usual defaults
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            held.append(s)
        except OSError:
            s.close()  # already taken by someone else: the point stands
    try:
        run = tmp_path / "ports"
        p = cli("train", "--out", str(run), "--intervals", "2", "--workers", "2", "--steps", "20", *SMALL,
                env={"MASTER_PORT": "29500"})
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    finally:
        for s in held:
            s.close()


@pytest.mark.cpu_only
@pytest.mark.slow
def test_ddp_group_killed_and_resumed_ends_bitwise_equal(tmp_path):
    """One network, DDP over 2 workers: every rank's RNG is checkpointed, so a killed and resumed group draws
    exactly the batches and noise of an uninterrupted one."""
    args = ["--workers", "2", "--steps", "300", "--ckpt-every", "20", "--eval-every", "100000", *SMALL]
    ref, out = tmp_path / "straight", tmp_path / "killed"
    p = cli("train", "--out", str(ref), *args)
    assert p.communicate(timeout=300) and p.returncode == 0
    p = cli("train", "--out", str(out), *args)
    wait_for_checkpoints(out, 1, 100)
    os.kill(worker_pids(out)[1], signal.SIGKILL)
    p.communicate(timeout=120)
    assert p.returncode == 2
    p = cli("train", "--out", str(out), "--resume", "--steps", "300", "--quiet")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    a, b = (load_checkpoint(r / "checkpoints" / "net-0.pt") for r in (ref, out))
    assert a["step"] == b["step"] == 300
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]) and torch.equal(a["ema"][k], b["ema"][k]), k
