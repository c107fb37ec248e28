"""Run directories that parse but are wrong, logs torn by a kill, leftovers of a killed writer, two writers on
one run, and bad values of the commands that read a run: one clear line each, nothing changed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scorefast.checkpoint import load_checkpoint, save_checkpoint
from scorefast.cli import main
from scorefast.run import RunDir

TINY = ["--data", "moons", "--steps", "30", "--eval-every", "10", "--eval-samples", "50", "--eval-steps", "5",
        "--batch-size", "32", "--n-data", "300", "--width", "16", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("rundir") / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    return run


def snapshot(run: Path) -> dict:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def copy_of(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    return run


@pytest.mark.parametrize("damage, needle", [
    (lambda c: [], "holds an array, expected a JSON object"),
    (lambda c: {k: v for k, v in c.items() if k != "config"}, "no 'config' section"),
    (lambda c: {**c, "config": {**c["config"], "sde": {**c["config"]["sde"], "name": "vp-foo"}}}, "unknown --sde"),
    (lambda c: {**c, "config": {**c["config"], "net": {**c["config"]["net"], "width": "wide"}}}, "--width expects int"),
    (lambda c: {**c, "config": {**c["config"], "colour": {}}}, "unknown section 'colour'"),
    (lambda c: {**c, "run_format": 1}, "scorefast 0.1 (run format 1)"),
])
def test_a_damaged_config_json_is_one_line_for_every_command(trained, tmp_path, capsys, damage, needle):
    run = copy_of(trained, tmp_path)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(damage(saved)))
    before = snapshot(run)
    for args in (["sample", "--run", str(run), "--n", "5", "--out", str(tmp_path / "s.npy")],
                 ["nll", "--run", str(run), "--data", "moons", "--n", "5"],
                 ["train", "--out", str(run), "--resume", "--steps", "40", "--quiet"]):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, (args, err)
    assert snapshot(run) == before and not (tmp_path / "s.npy").exists()


def test_the_data_shape_comes_from_config_json_and_a_bad_one_is_one_line(trained, tmp_path, capsys, monkeypatch):
    """The network is rebuilt from the shape config.json records, without reading the data; a run written before
    config.json recorded it reads its summary.json's; a missing or invalid shape is one line naming the file."""
    import scorefast.run

    def unread(*args, **kwargs):
        raise AssertionError("the data was read")

    run = copy_of(trained, tmp_path)
    (run / "summary.json").unlink()
    monkeypatch.setattr(scorefast.run, "load_data", unread)
    assert RunDir(run).shape() == (2,)
    assert main(["sample", "--run", str(run), "--n", "5", "--out", str(tmp_path / "s.npy")]) == 0
    saved = json.loads((run / "config.json").read_text())
    for shape, needle in [([2, 0], "config.json records a data shape [2, 0], expected a list of positive integers"),
                          ("2", "config.json records a data shape '2'"), ([2.0], "config.json records a data shape"),
                          (None, "config.json records no data shape (it was written before it did) and the run has "
                                 "no summary.json")]:
        data = {"kind": "points"} if shape is None else {"kind": "points", "shape": shape}
        (run / "config.json").write_text(json.dumps({**saved, "data": data}))
        assert main(["sample", "--run", str(run), "--n", "5", "--out", str(tmp_path / "t.npy")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    (run / "summary.json").write_text(json.dumps({"shape": [2]}))  # a run written before config.json held it
    assert RunDir(run).shape() == (2,)
    (run / "summary.json").write_text((trained / "summary.json").read_text()[:40])
    assert main(["sample", "--run", str(run), "--n", "5", "--out", str(tmp_path / "t.npy")]) == 2
    assert "summary.json" in capsys.readouterr().err


def test_a_truncated_config_is_one_line(trained, tmp_path, capsys):
    run = copy_of(trained, tmp_path)
    (run / "config.json").write_text((run / "config.json").read_text()[:60])
    assert main(["nll", "--run", str(run), "--data", "moons"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json" in err and len(err.splitlines()) == 1


def test_resume_repairs_a_torn_log_line_and_removes_a_killed_writers_leftovers(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 35, "wa')  # a kill in the middle of the one write of a line
    stale = run / "checkpoints" / ".net-0.pt.a1b2c3d4.tmp"
    stale.write_bytes(b"")  # a 0-byte temporary file of a writer killed before it wrote
    assert main(["train", "--out", str(run), "--resume", "--steps", "40", "--quiet"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert not stale.exists() and load_checkpoint(run / "checkpoints" / "net-0.pt")["step"] == 40
    assert (run / "metrics.png").is_file()


def test_garbage_inside_the_log_is_one_line_naming_it(trained, tmp_path, capsys):
    run = copy_of(trained, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "40", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "metrics.jsonl" in err and "line 2" in err and len(err.splitlines()) == 1
    assert snapshot(run) == before


@pytest.mark.parametrize("args, needle", [
    (["nll", "--data", "moons", "--n", "-5"], "--n must be >= 1"),
    (["nll", "--data", "moons", "--steps", "0"], "--steps must be >= 1"),
    (["nll", "--data", "moons", "--hutchinson", "-1"], "--hutchinson must be >= 0"),
    (["sample", "--n", "10", "--steps", "0", "--out", "OUT/s.npy"], "--steps must be >= 1"),
    (["sample", "--n", "0", "--out", "OUT/s.npy"], "--n must be >= 1"),
    (["sample", "--n", "10", "--sampler", "magic", "--out", "OUT/s.npy"], "unknown --sampler 'magic'"),
    (["sample", "--n", "10", "--schedule", "spiral", "--out", "OUT/s.npy"], "unknown --schedule 'spiral'"),
    (["sample", "--n", "10", "--out", "OUT/s.txt"], "expected a .npy file name"),
    (["sample", "--n", "10", "--threads", "0", "--out", "OUT/s.npy"], "--threads must be >= 1"),
    (["evaluate", "--data", "moons", "--n", "0"], "--n must be >= 1"),
    (["evaluate", "--data", "digits"], "do not match the run's"),
    (["nll", "--data", "moons", "--hutchinson", "1000000000"], "--hutchinson 1000000000 is more than the limit"),
    (["nll", "--data", "moons", "--steps", "1000000000"], "--steps 1000000000 is more than the limit"),
    (["sample", "--n", "10", "--steps", "1000000000", "--out", "OUT/s.npy"], "--steps 1000000000 is more than"),
    (["sample", "--n", "100000000000000", "--out", "OUT/s.npy"], "GiB, more than this machine's"),
    (["sample", "--n", "10", "--sampler", "", "--out", "OUT/s.npy"], "--sampler is empty"),
    (["evaluate", "--data", "moons", "--schedule", " "], "--schedule is empty"),
])
def test_bad_values_of_the_reading_commands(trained, tmp_path, capsys, args, needle):
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    before = snapshot(trained)
    assert main([args[0], "--run", str(trained), *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert snapshot(trained) == before and not list(tmp_path.glob("s.*"))


def test_a_second_writer_on_a_run_is_one_line_and_the_lock_dies_with_its_holder(tmp_path, capsys):
    """While one `train` writes a run, a second `train` or `--resume` on it is refused before it touches anything;
    once the first is killed (SIGKILL: no clean-up ran), the lock is gone with it and a resume proceeds."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "scorefast.cli", "train", "--out", str(out), *TINY,
                              "--steps", "100000", "--ckpt-every", "10"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "net-0.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        config = (out / "config.json").read_bytes()
        for args, needle in ((["--resume", "--steps", "5", "--quiet"], f"in use by another scorefast process "
                              f"(pid {first.pid} "), ([*TINY, "--seed", "7"], "already exists and is not empty")):
            assert main(["train", "--out", str(out), *args]) == 2
            err = capsys.readouterr().err.strip()
            assert needle in err and len(err.splitlines()) == 1, err
        assert (out / "config.json").read_bytes() == config
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert main(["train", "--out", str(out), "--resume", "--steps", "1", "--quiet"]) == 0


# -- written files: nothing replaced without --overwrite, never an input ---------------------------------------

OVERWRITE = [  # (command, files in OUT before it runs, what the one line says); RUN is a copy of a trained run
    ("sample --run RUN --n 5 --out OUT/s.npy", ["s.npy"], "OUT/s.npy' already exists; pass --overwrite"),
    ("sample --run RUN --n 5 --out OUT/s.npy", ["s.png"], "OUT/s.png' already exists; pass --overwrite"),
    ("sample --run RUN --n 5 --out RUN/samples.npy", [], "RUN/samples.npy' already exists"),
    ("sample --run RUN --n 5 --out RUN/checkpoints/s.npy --overwrite", [], "would write over an input"),
    ("sample --run RUN --n 5 --out OUT/dir --overwrite", ["dir.npy/"], "expected a .npy file name"),
    ("fp --data OUT/d.npy --out OUT/f.npz --grid 11 --steps 2", ["f.npz"], "OUT/f.npz' already exists"),
    ("fp --data OUT/d.npz --out OUT/d.npz --overwrite", [], "would write over an input of this command"),
    ("sweep-T --data moons --out OUT --steps 5 --T 0.5", ["sweep.json"], "OUT/sweep.json' already exists"),
    ("sweep-T --data moons --out OUT --steps 5 --T 0.5 --config OUT/sweep.json --overwrite", ["sweep.json"],
     "would write over an input"),
]


@pytest.mark.parametrize("command, existing, needle", OVERWRITE)
def test_every_writing_command_keeps_existing_files_and_its_inputs(trained, tmp_path, capsys, command, existing,
                                                                   needle):
    run, out = copy_of(trained, tmp_path), tmp_path / "out"
    out.mkdir()
    np.save(out / "d.npy", np.random.default_rng(0).normal(size=(50, 2)))
    np.savez(out / "d.npz", x=np.random.default_rng(0).normal(size=(50, 2)))
    for name in existing:
        (out / name).mkdir() if name.endswith("/") else (out / name).write_text("{}")
    before = {**snapshot(run), **snapshot(out)}
    assert main(command.replace("RUN", str(run)).replace("OUT", str(out)).split()) == 2
    err = capsys.readouterr().err.strip()
    assert needle.replace("RUN", str(run)).replace("OUT", str(out)) in err and len(err.splitlines()) == 1, err
    assert {**snapshot(run), **snapshot(out)} == before


def test_overwrite_replaces_an_existing_output(trained, tmp_path):
    (tmp_path / "s.npy").write_text("old")
    (tmp_path / "s.png").write_text("old")
    assert main(["sample", "--run", str(trained), "--n", "5", "--out", str(tmp_path / "s.npy"), "--overwrite",
                 "--quiet"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 2) and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_a_model_with_non_finite_weights_is_refused_before_anything_is_written(trained, tmp_path, capsys):
    run = copy_of(trained, tmp_path)
    path = run / "checkpoints" / "net-0.pt"
    state = load_checkpoint(path)
    key = next(iter(state["ema"]))
    state["ema"][key] = torch.full_like(state["ema"][key], float("nan"))
    save_checkpoint(path, state)
    for args in (["sample", "--n", "5", "--out", str(tmp_path / "s.npy")], ["evaluate", "--data", "moons"]):
        assert main([args[0], "--run", str(run), *args[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert f"({key}); the model cannot be used" in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("s.*"))


def test_a_resume_with_a_checkpoint_of_another_network_is_refused_before_config_json_is_rewritten(trained, tmp_path,
                                                                                                 capsys):
    wider = tmp_path / "wider"
    assert main(["train", "--out", str(wider), *TINY, "--width", "24", "--steps", "2"]) == 0
    run = copy_of(trained, tmp_path)
    shutil.copy(wider / "checkpoints" / "net-0.pt", run / "checkpoints" / "net-0.pt")
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "40", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not hold this run's network" in err and "copied from another run" in err, err
    assert snapshot(run) == before
