"""The bench narrows each curve's first meeting with its target by bisection over the kept snapshots: on a curve
that falls fast and then flattens, the chord between a few spread snapshots puts the crossing far too late."""

import math
from pathlib import Path

import pytest

from scorefast.bench import bracket as bracket_module
from scorefast.bench.bracket import bracket, gap
from scorefast.bench.curves import Protocol
from scorefast.bench.report import Tables
from scorefast.errors import UserError
from scorefast.evaluate import time_to

KEPT = list(range(12, 601, 12))  # a snapshot every 2 % of 600 steps, as the bench keeps them
COARSE = [12, 84, 588, 600]  # what Protocol.points = 4 spreads over them (curves.spread)
FLOOR = {"plain": 1.0, "default": 0.5}  # each run's value: FLOOR + 100 / step, wall = step seconds


def value(run: str, step: int) -> float:
    return FLOOR[run] + 100 / step


def point(run: str, step: int) -> dict:
    return {"step": step, "wall": float(step), "nll": value(run, step), "metric": 10 * value(run, step)}


@pytest.fixture
def study(tmp_path, monkeypatch):
    """Rows of a study of plain and the default recipe (one seed) whose runs evaluate by the closed form above;
    the evaluated steps are recorded."""
    evaluated = []

    def evaluate_run(run, protocol, steps):
        evaluated.extend(steps)
        return {"points": [point(Path(run).name, s) for s in steps]}

    monkeypatch.setattr(bracket_module, "evaluate_run", evaluate_run)
    (tmp_path / "curves").mkdir()

    def rows():
        out = []
        for name in FLOOR:
            run = tmp_path / "runs" / name
            (run / "snapshots").mkdir(parents=True, exist_ok=True)
            for s in KEPT:
                (run / "snapshots" / f"net-0-{s:08d}.pt").touch()
            out.append({"data": "toy", "variant": name, "scenario": name, "status": "ok", "seed": 0, "run": str(run),
                        "target": "nll", "curve": {"points": [point(name, s) for s in COARSE], "networks": 1,
                                                   "metric_name": "swd", "nll_key": "nll_nats", "T": 1.0}})
        return out
    return tmp_path, rows, evaluated


def crossing(row: dict, key: str) -> float:
    target = FLOOR["plain"] + 100 / 600
    return time_to([(p["wall"], p[key]) for p in row["curve"]["points"]], target * (10 if key == "metric" else 1))


def test_gap_is_where_time_to_interpolates():
    pts = [{"step": s, "v": v} for s, v in [(1, 5.0), (2, None), (3, 3.0), (4, 1.0)]]
    assert gap(pts, 2.0, "v") == (3, 4)
    assert gap(pts, 6.0, "v") is None  # met at the first point: only a bound, nothing earlier to evaluate
    assert gap(pts, 0.5, "v") is None  # never met
    assert gap(pts, 3.0, "v") is None  # the point before has no value


def test_bisection_finds_the_crossing_the_chord_misses(study):
    out, rows, evaluated = study
    first = rows()
    coarse = crossing(first[1], "nll")
    assert coarse > 300  # the chord from step 84 to 588: more than twice the true 150 steps
    said = []
    bracket(first, Protocol(refine=6), out, said.append)
    exact = 100 / (FLOOR["plain"] + 100 / 600 - FLOOR["default"])  # 150 steps
    for key in ("nll", "metric"):
        assert math.isclose(crossing(first[1], key), exact, abs_tol=1.0), key
    steps = [p["step"] for p in first[1]["curve"]["points"]]
    assert 144 in steps and 156 in steps and steps == sorted(steps)  # adjacent kept snapshots around 150
    assert crossing(first[0], "nll") == 600  # plain meets its own final value at its end: nothing to narrow
    assert len(said) == 1 and "default" in said[0]
    assert Tables(first).ratios("toy", "default", "plain")[0][0] == pytest.approx(exact / 600, abs=0.002)


def test_rounds_are_bounded_and_cached(study):
    out, rows, evaluated = study
    bracket(rows(), Protocol(refine=2), out, lambda _: None)
    assert evaluated == [336, 204, 144, 168]  # two rounds for the NLL, two for the metric (its gap is the NLL's)
    evaluated.clear()
    again = rows()
    bracket(again, Protocol(refine=2), out, lambda _: None)
    assert evaluated == [] and len(again[1]["curve"]["points"]) == len(COARSE) + 4  # read back, not evaluated
    bracket(again := rows(), Protocol(refine=0), out, lambda _: None)
    assert len(again[1]["curve"]["points"]) == len(COARSE)


def test_refine_must_be_a_whole_number_and_is_not_in_the_curve_key():
    assert Protocol(refine=0).key() == Protocol(refine=5).key()
    for bad in (-1, 1.5, True):
        with pytest.raises(UserError, match="refine"):
            Protocol(refine=bad)
