"""scorefast bench as a careless or hostile user meets it: every bad flag and every damaged file of a study
folder is one line and exit 2 with nothing in the folder changed (table-driven: a case is one line), and
the --jobs processes stop with their runs saved on Ctrl-C, on SIGTERM and when the bench itself is killed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scorefast.bench.curves import TIMING
from scorefast.bench.study import open_folder
from scorefast.cli import main

CORES = os.cpu_count() or 1


@pytest.mark.parametrize("args, needle", [
    (["--data", "moons", "--methods", "plain,nope"], "unknown --methods entry 'nope'"),
    (["--data", "moons", "--methods", ""], "--methods is empty"),
    (["--data", "moons", "--methods", ","], "--methods is empty"),
    (["--data", ""], "--data is required"),
    (["--data", "moons", "--seeds", "two"], "bench: --seeds expects int, got 'two'"),
    (["--data", "moons", "--quick", "maybe"], "--quick expects bool"),
    (["--data", "moons", "--T", "0.2,late"], "--T expects comma-separated numbers, got '0.2,late'"),
    (["--data", "moons", "--n-data", "100,x"], "--n-data expects comma-separated integers"),
    (["--data", "moons", "--n-data", ","], "--n-data is empty"),
    (["--data", "moons", "--base-recipe", "nope"], "unknown --base-recipe 'nope'; choose one of plain"),
    (["--preset", "nope"], "unknown --preset 'nope'"),
    (["--data", "moons", "--budget", "0steps"], "--budget must be > 0"),
    (["--data", "missing/points.npy"], "does not exist"),
    (["--data", "{fifty}", "--n-data", "5000"], "--n-data 5000: '{fifty}' holds only 50 examples"),
    (["--data", "moons", "--budget", "80steps"], "holds another study"),
    (["--data", "moons", "--set", "seed=3"], "--set seed: give it as the bench's --seeds"),
    (["--data", "moons", "--set", "T=0.3"], "--set T: give it as the bench's --T"),
    (["--data", "moons", "--set", "threads=4"], "--set threads: give it as the bench's --threads"),
    (["--data", "moons", "--set", "width"], "--set 'width': expected FLAG=VALUE"),
    (["--data", "moons", "--set", "width=wide"], "--width"),
    # a plug-in's option reaches only its variants: still refused before plain trains
    (["--data", "moons", "--methods", "fp-embed", "--set", "fp_variant=bogus"], "unknown --fp-variant 'bogus'"),
    (["--quick", "--data", "moons", "--methods", "fp-regress", "--set", "fp_grid=abc"], "--fp-grid expects int"),
    (["--quick", "--data", "moons", "--methods", "fp-regress", "--set", "fp_grid=1"], "--fp-grid must be >= 3"),
    (["--preset", "full", "--jobs", "0"], "--jobs must be >= 1"),
    (["--data", "moons", "--jobs", str(CORES + 1), "--threads", "1"], "would oversubscribe the CPU"),
    (["--data", "moons", "--threads", "0"], "--threads must be >= 1"),
    (["--data", "moons", "--seeds", "0"], "--seeds must be >= 1"),
    (["--data", "moons", "--T", "1.5"], "--T must be end times in (0, 1)"),
    (["--data", "moons", "--n-data", "100,0"], "--n-data must be >= 1, got 0"),
    (["--data", "moons", "--budget", "100steps", "--snapshot-every", "200"], "is larger than the budget (100 steps)"),
    (["--data", "moons", "--budget", "300steps", "--snapshot-every", "200"], "fewer than two snapshots"),
    (["--data", "moons", "--budget", "1steps"], "fewer than two snapshots"),
    (["--data", "moons", "--snapshot-every", "0"], "--snapshot-every must be >= 1"),
    (["--data", "moons", "--metric", "nope"], "unknown --metric 'nope'; choose one of swd"),
    (["--data", "moons", "--metric", "fid"], "scores images; 'moons' holds points"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path, capsys, args, needle):
    fifty = tmp_path / "fifty.npy"
    np.save(fifty, np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32))
    out = tmp_path / "study"
    open_folder(out, {"data": ["moons"], "budget": "40steps", "timing": TIMING, "variants": {}}, {})
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = [a.replace("{fifty}", str(fifty)) for a in args]
    assert main(["bench", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle.replace("{fifty}", str(fifty)) in err and len(err.splitlines()) == 1, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


STUDY = {"data": ["moons"], "budget": "40steps", "timing": TIMING, "variants": {"moons": {}}}
CURVE = {"points": [{"step": 20, "wall": 1.0, "nll": 2.0, "metric": 0.1}], "nll_key": "nll_nats",
         "metric_name": "swd", "networks": 1, "T": 1.0}


@pytest.mark.parametrize("file, content, needle", [
    ("study.json", "[1, 2]", "holds an array, expected a JSON object"),
    ("study.json", "{\"data\": ", "study.json"),
    ("study.json", json.dumps({**STUDY, "data": "moons"}), "is damaged: data is a string, expected an array"),
    ("study.json", json.dumps({**STUDY, "variants": {"moons": {"plain": 3}}}),
     "variants.moons.plain is an integer, expected an object"),
    ("study.json", json.dumps({k: v for k, v in STUDY.items() if k != "budget"}), "budget is missing"),
    ("study.json", json.dumps({k: v for k, v in STUDY.items() if k != "timing"}),
     "timed by the bench's earlier rules (study.json: timing 1"),
    ("curves/abc-x-t2.json", json.dumps({**CURVE, "points": 3}), "is damaged: points is an integer, expected an array"),
    ("curves/abc-x-t2.json", json.dumps({**CURVE, "points": [{"step": 1, "wall": "soon", "nll": 1, "metric": 1}]}),
     "points[0].wall is a string, expected an integer or a number"),
    ("curves/abc-x-t2-refined.json", json.dumps({"36": {"step": 36, "wall": 1.0, "nll": 1.0}}),
     "is damaged: 36.metric is missing"),
])
def test_a_damaged_study_folder_is_named_and_kept(tmp_path, capsys, file, content, needle):
    out = tmp_path / "study"
    (out / "curves").mkdir(parents=True)
    (out / "study.json").write_text(json.dumps(STUDY))
    (out / "curves" / "kept.json").write_text(json.dumps(CURVE))
    (out / "curves" / "0-kept-refined.json").write_text(json.dumps({"20": CURVE["points"][0]}))  # read first: fine
    (out / file).write_text(content)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["bench", "--data", "moons", "--budget", "40steps", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert Path(file).name in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# -- signals with --jobs ------------------------------------------------------------------------------------

def bench_with_two_jobs(out: Path, jobs: int = 2) -> subprocess.Popen:
    """A bench of two endless runs (side by side with 2 jobs), in a session of its own (its process group is
    its own)."""
    return subprocess.Popen([sys.executable, "-m", "scorefast.cli", "bench", "--data", "moons", "--methods",
                             "plain,default", "--budget", "1000000steps", "--seeds", "1", "--jobs", str(jobs),
                             "--threads", "1", "--snapshot-every", "500000", "--set", "width=16", "--set",
                             "ckpt_every=50", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def wait_for_both_runs(p: subprocess.Popen, out: Path, runs: int = 2) -> None:
    deadline = time.time() + 180
    while len(list(out.glob("runs/*/checkpoints/net-0.pt"))) < runs:
        assert time.time() < deadline and p.poll() is None, "the two jobs did not both start"
        time.sleep(0.2)
    time.sleep(1.0)


def alive_in_session(sid: int) -> list[int]:
    """Processes of session ``sid`` that still run (zombies aside)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, *fields = text.rsplit(")", 1)[1].split()
        if int(fields[4]) == sid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def saved(out: Path, said: str = "") -> list[int]:
    """The step of each run's checkpoint; none may be half-written (``said``: the bench's output, shown if one is)."""
    from scorefast.checkpoint import load_checkpoint
    assert not list(out.glob("runs/*/checkpoints/*.tmp")), said
    return [int(load_checkpoint(c)["step"]) for c in out.glob("runs/*/checkpoints/net-0.pt")]


@pytest.mark.slow
@pytest.mark.skipif(CORES < 2, reason="two jobs side by side need two cores")
@pytest.mark.parametrize("how, status", [("ctrl-c", 130), ("sigterm", 143)])
def test_a_stop_reaches_every_job_and_each_saves_its_run(tmp_path, how, status):
    """Ctrl-C reaches the whole process group; a SIGTERM to the bench alone is passed on to its jobs. Either
    way each job saves the step it is at and the bench exits with the signal's status."""
    out = tmp_path / "study"
    p = bench_with_two_jobs(out)
    wait_for_both_runs(p, out)
    if how == "ctrl-c":
        os.killpg(p.pid, signal.SIGINT)
    else:
        p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == status, err
    steps = saved(out)
    assert len(steps) == 2 and min(steps) >= 50
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    assert sum(f"stopped by {name}" in line for line in err.splitlines()) == 2, err  # each job says where
    assert not alive_in_session(p.pid)


@pytest.mark.slow
@pytest.mark.skipif(CORES < 2 or not Path("/proc/self/stat").exists(), reason="two cores and Linux's /proc")
def test_jobs_do_not_outlive_a_bench_killed_by_sigkill(tmp_path):
    """kill -9 of the bench: its jobs notice within a second, save their runs and exit - nothing is left."""
    out = tmp_path / "study"
    p = bench_with_two_jobs(out)
    wait_for_both_runs(p, out)
    p.kill()
    p.wait()
    deadline = time.time() + 20
    while alive_in_session(p.pid):
        assert time.time() < deadline, f"left running: {alive_in_session(p.pid)}"
        time.sleep(0.2)
    steps = saved(out, p.stderr.read())  # every writer of the pipe is gone: read to its end
    assert len(steps) == 2 and min(steps) >= 50


def test_the_bench_flags_and_python_values_make_the_same_options():
    """The bench's parser is generated from BenchOptions' fields and its text read by the one coercion: the flags
    and the same values given in Python are equal options (a --set value keeps its commas)."""
    from scorefast.bench.options import BenchOptions
    from scorefast.cli import build_parser, options_given
    args = build_parser("bench").parse_args(["bench", "--data", "moons, digits", "--T", "0.2,0.4", "--n-data", "80,320",
                                             "--seeds", "2", "--quick", "--set", "width=8", "--set",
                                             "channel_mults=1,2", "--out", "x"])
    assert BenchOptions(**options_given(args, BenchOptions)) == \
        BenchOptions(data=("moons", "digits"), T=(0.2, 0.4), n_data=[80, 320], seeds=2, quick=True,
                     settings=["width=8", "channel_mults=1,2"], out="x")


def test_quick_on_a_small_file_trains_on_what_it_holds(tmp_path):
    """--quick's 2,000 points are at most the file's 50 (never a size the data cannot give)."""
    from scorefast.bench.command import make_study
    from scorefast.bench.options import BenchOptions
    fifty = tmp_path / "fifty.npy"
    np.save(fifty, np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32))
    study = make_study(BenchOptions(quick=True, data=str(fifty), methods="baselines"))
    (part,) = study.parts()
    assert part.size == 50 and {v.flags["n_data"] for v in study.variants(part)} == {50}


@pytest.mark.slow
def test_a_stopped_bench_says_how_to_continue_it(tmp_path):
    """One run at a time: Ctrl-C saves the run being trained; the advice is the bench's own command, not the
    single run's --resume."""
    out = tmp_path / "study"
    p = bench_with_two_jobs(out, jobs=1)
    wait_for_both_runs(p, out, runs=1)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "bench stopped by SIGINT: the checkpoint of step" in last and "the same bench command continues" in last
    assert "--resume" not in last and min(saved(out)) >= 50
