"""The trainer, run directories and the command line, end to end on tiny budgets."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import scorefast
from scorefast.checkpoint import load_checkpoint
from scorefast.cli import main
from scorefast.errors import UserError
from scorefast.methods.targets import DSM, TARGETS
from scorefast.objective import Goal
from scorefast.run import RUN_FORMAT, RunDir

TINY = ["--steps", "40", "--eval-every", "20", "--eval-samples", "200", "--eval-steps", "10", "--batch-size", "64",
        "--n-data", "500", "--width", "32", "--eval-budget", "0", "--quiet"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "scorefast.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def snapshot(run: Path) -> dict:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "moons"
    assert main(["train", "--data", "moons", "--out", str(run), *TINY]) == 0
    return run


def test_run_directory_contents(trained):
    for name in ("config.json", "metrics.jsonl", "checkpoints/net-0.pt", "samples.npy", "samples.png", "summary.json",
                 "metrics.png"):
        assert (trained / name).is_file(), name
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40]
    assert all(r["wall"] > 0 and np.isfinite(r["loss"]) and r["metric_name"] == "swd" for r in rows)
    assert rows[1]["wall"] >= rows[0]["wall"]
    state = load_checkpoint(trained / "checkpoints" / "net-0.pt")
    assert state["step"] == 40 and state["done"]
    assert {"model", "ema", "optimizer", "rng", "wall"} <= set(state)
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["config"]["budget"]["steps"] == 40 and cfg["run_format"] == RUN_FORMAT
    assert cfg["data"] == {"kind": "points", "shape": [2]}
    from scorefast import Config  # resolved once, with the data's kind: the configuration says what the run trained
    assert Config(data="moons").time_sampler.name == cfg["config"]["time_sampler"]["name"] == "adaptive"
    assert RunDir(trained).read_config().data_kind == "points"


def test_sample_nll_evaluate(trained, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert main(["sample", "--run", str(trained), "--n", "300", "--out", str(out), "--steps", "20", "--quiet"]) == 0
    x = np.load(out)
    assert x.shape == (300, 2) and np.isfinite(x).all()
    assert out.with_suffix(".png").is_file()
    capsys.readouterr()
    assert main(["nll", "--run", str(trained), "--data", "moons", "--n", "80", "--steps", "20", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 80 and np.isfinite(res["nll_nats"]) and res["seconds"] > 0
    assert main(["evaluate", "--run", str(trained), "--data", "moons", "--n", "300", "--steps", "20", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["swd"] > 0 and np.isfinite(ev["mmd"])
    # without --data: the run's own held-out split, the same figures as naming the run's data
    assert main(["nll", "--run", str(trained), "--n", "80", "--steps", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nll_nats"] == res["nll_nats"]
    assert main(["evaluate", "--run", str(trained), "--n", "300", "--steps", "20", "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert (own["swd"], own["mmd"], own["n_reference"]) == (ev["swd"], ev["mmd"], ev["n_reference"])


@pytest.mark.cpu_only
def test_deterministic_on_cpu(tmp_path):
    states = []
    for name in ("a", "b"):
        assert main(["train", "--data", "8gaussians", "--out", str(tmp_path / name), "--steps", "15",
                     "--eval-every", "100", "--eval-samples", "50", "--eval-steps", "5", "--batch-size", "32",
                     "--n-data", "200", "--width", "16", "--quiet"]) == 0
        states.append(load_checkpoint(tmp_path / name / "checkpoints" / "net-0.pt")["model"])
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_resume_extends_steps(trained, tmp_path):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "60", "--quiet"]) == 0
    assert load_checkpoint(run / "checkpoints" / "net-0.pt")["step"] == 60
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60]


@pytest.mark.slow
def test_sigkill_and_resume(tmp_path):
    run = tmp_path / "killed"
    args = ["train", "--data", "moons", "--out", str(run), "--steps", "100000", "--ckpt-every", "25",
            "--eval-every", "100000", "--batch-size", "64", "--n-data", "500", "--width", "32", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "scorefast.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt = run / "checkpoints" / "net-0.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists() and load_checkpoint(ckpt)["step"] >= 50:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = load_checkpoint(ckpt)["step"]
    assert saved >= 50 and saved % 25 == 0
    # resume with a budget just beyond the saved step: it must continue, not restart
    r = cli("train", "--out", str(run), "--resume", "--steps", str(saved + 10), "--quiet", "--eval-every", "5")
    assert r.returncode == 0, r.stderr
    state = load_checkpoint(ckpt)
    assert state["step"] == saved + 10
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == saved + 5  # the first row logged after the resume


class ExplodingGoal(Goal):
    """DSM's goal, NaN from its 26th evaluation on."""

    calls = 0

    def __call__(self, sde, x0, xt, t, noise):
        self.calls += 1
        return noise * float("nan") if self.calls > 25 else noise


@TARGETS.register("test-exploding")
class Exploding(DSM):
    """DSM whose loss turns NaN from its 26th evaluation on: a target handed to the trainer like any other."""

    def precompute(self, sde, x, *, progress):
        return ExplodingGoal(), {}


def test_divergence_guard_keeps_last_good_checkpoint(tmp_path):
    run = tmp_path / "div"
    cfg = scorefast.Config(data="moons", out=str(run), steps=100, ckpt_every=10, eval_every=1000, batch_size=32,
                           n_data=300, width=16, method="test-exploding")
    with pytest.raises(UserError, match="diverged at step 26") as err:
        scorefast.train(cfg, progress=False)
    assert "step 20" in str(err.value) and "\n" not in str(err.value)
    state = load_checkpoint(run / "checkpoints" / "net-0.pt")
    assert state["step"] == 20
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# -- bad input: one line on stderr, exit 2, nothing lost ------------------------------------------

@pytest.mark.parametrize("extra, needle", [
    (["--T", "-0.5"], "--T"),
    (["--T", "1.5"], "--T"),
    (["--steps", "0"], "--steps"),
    (["--batch-size", "100000"], "batch-size"),
    (["--sde", "foo"], "unknown --sde"),
    (["--data", "nosuchset"], "nosuchset"),
    (["--method", "magic"], "--method"),
    (["--lr", "-1"], "--lr"),
    (["--prior", "unicorn"], "--prior"),
    (["--sde", "vp-foo"], "unknown --sde 'vp-foo'"),
    (["--fp-grid", "65"],
     "--fp-grid is an option of target fp-regress, fp-embed, fp-embed-off, not of the selected --method dsm"),
    (["--warm-start", "10"], "--warm-start is an option of partition intervals, edges"),
    (["--edges", "0,0.5,1", "--intervals", "4"], "only one of the partition flags"),
    (["--grad-clip", "-1"], "--grad-clip"),
    (["--width", "0"], "--width must be >= 1"),
    (["--time-budget", "nan"], "--time-budget must be a finite number"),
    (["--steps", "ten"], "--steps expects int"),
])
def test_train_bad_values(tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    args = ["train", "--data", "moons", "--out", str(out), "--steps", "5", "--quiet", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unknown_flag_exits_nonzero():
    r = cli("train", "--data", "moons", "--out", "x", "--no-such-flag")
    assert r.returncode != 0 and "--no-such-flag" in r.stderr


def test_existing_run_is_not_overwritten(trained, capsys):
    before = snapshot(trained)
    assert main(["train", "--data", "moons", "--out", str(trained), "--steps", "5", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert snapshot(trained) == before


def test_resume_with_different_T_is_refused(trained, capsys):
    before = snapshot(trained)
    assert main(["train", "--out", str(trained), "--resume", "--T", "0.5", "--quiet"]) == 2
    assert "--T" in capsys.readouterr().err
    assert snapshot(trained) == before


def test_missing_and_incompatible_run_directories(trained, tmp_path, capsys):
    assert main(["sample", "--run", str(tmp_path / "nope"), "--n", "5", "--out", str(tmp_path / "a.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
    import shutil
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    cfg = json.loads((old / "config.json").read_text())
    for version, needle in ((99, "not written by this scorefast"), (1, "scorefast 0.1 (run format 1)")):
        cfg["run_format"] = version
        (old / "config.json").write_text(json.dumps(cfg))
        before = snapshot(old)
        assert main(["nll", "--run", str(old), "--data", "moons"]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
        assert main(["train", "--out", str(old), "--resume", "--steps", "50", "--quiet"]) == 2
        assert needle in capsys.readouterr().err and snapshot(old) == before


def test_config_file_and_print_config(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    assert main(["train", "--data", "8gaussians", "--method", "empirical", "--reference-size", "64", "--steps", "30",
                 "--intervals", "2", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "reference_size = 64" in text and "[partition]" in text
    cfg.write_text(text)
    run = tmp_path / "fromfile"
    # flags given on the command line win over the file's
    assert main(["train", "--config", str(cfg), "--out", str(run), "--steps", "12", "--eval-every", "6", "--n-data",
                 "300", "--batch-size", "32", "--width", "16", "--eval-samples", "50", "--eval-steps", "5",
                 "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["target"] == {"name": "empirical", "reference_size": 64, "bandwidth": None, "sigma_lo": None,
                               "sigma_hi": None}
    assert saved["budget"]["steps"] == 12 and saved["partition"]["intervals"] == 2
    # the printed file holds the recipe's defaults for the data's kind: a run from it trains as the flags would
    from scorefast import Config
    from scorefast.config import read_config_file
    capsys.readouterr()
    assert main(["train", "--data", "moons", "--steps", "30", "--print-config"]) == 0
    cfg.write_text(capsys.readouterr().out)
    resolved = Config(data="moons", steps=30)
    assert resolved.optim.lr == 4e-3  # the recipe's on points
    assert Config(**read_config_file(cfg)) == resolved
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 0.1\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rate' in [optim]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_truncated_and_tampered_checkpoints(trained, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    ck = bad / "checkpoints" / "net-0.pt"
    ck.write_bytes(ck.read_bytes()[: 200])
    assert main(["sample", "--run", str(bad), "--n", "5", "--out", str(tmp_path / "a.npy")]) == 2
    err = capsys.readouterr().err
    assert "net-0.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.npy").exists()

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(ck, "wb") as f:
        pickle.dump({"format": "scorefast-checkpoint", "x": Evil()}, f)
    assert main(["sample", "--run", str(bad), "--n", "5", "--out", str(tmp_path / "a.npy")]) == 2
    assert "net-0.pt" in capsys.readouterr().err
    assert not marker.exists()


def test_python_api_mirrors_cli(trained):
    import scorefast
    run = scorefast.open_run(trained)
    x = run.sample(50, steps=10, progress=False)
    assert x.shape == (50, 2)
    assert run.nll("moons", n=50, steps=10, progress=False)["n"] == 50


def test_run_command_turns_bad_input_into_one_line_and_exit_2(capsys):
    from scorefast.errors import UserError, run_command

    def bad():
        raise UserError("--steps must be >= 1, got 0")

    assert run_command(bad) == 2
    assert capsys.readouterr().err == "scorefast: error: --steps must be >= 1, got 0\n"
    assert run_command(lambda: 3) == 3 and run_command(lambda: {"nll": 1.0}) == 0
    with pytest.raises(RuntimeError):  # a bug is not bad input: it keeps its traceback
        run_command(lambda: (_ for _ in ()).throw(RuntimeError("bug")))


def test_tensorboard_events_mirror_the_metrics_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "tb"
    assert main(["train", "--data", "moons", "--out", str(run), "--tensorboard", *TINY]) == 0
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    loss = acc.Scalars("loss/net-0")
    assert [e.step for e in loss] == [r["step"] for r in rows]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.value for e in acc.Scalars("swd/net-0")] == pytest.approx([r["metric"] for r in rows], rel=1e-6)


@pytest.mark.slow
def test_tensorboard_without_the_package_is_one_clear_line(tmp_path):
    out = tmp_path / "never"
    code = ("import sys; sys.modules['tensorboard'] = None; from scorefast.cli import main; "
            f"sys.exit(main(['train', '--data', 'moons', '--out', {str(out)!r}, '--tensorboard', '--steps', '5']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and "pip install 'scorefast[tensorboard]'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
