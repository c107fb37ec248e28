"""Each curve's first meeting with its seed's target, narrowed by bisection over the run's kept snapshots.

A curve holds a few snapshots spread geometrically (``Protocol.points``); between two of them a run can move
far, and a time to target interpolated linearly across such a gap can be off by much of the gap (a curve that
falls fast and then flattens meets the target long before the chord does). Every run keeps a snapshot every
2 % of its budget, so once every run of a study has its curve (and so every seed its target: plain's final
values), the bench evaluates the kept snapshot in the middle of the gap where a curve first meets its target,
for the target the study judges by and for the one shown beside it, ``Protocol.refine`` rounds at most: each
round halves the gap, and a gap with no kept snapshot inside is as narrow as the run allows. The points are
cached apart from the curve (``refined_points``), so a study run again evaluates nothing.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ..checkpoint import write_json
from ..evaluate import first_reach
from .curves import TIMING, Protocol, evaluate_run, snapshot_steps
from .report import Tables
from .shapes import REFINED_SUFFIX, saved_curve


def gap(points: list[dict], target: float, key: str) -> tuple[int, int] | None:
    """The steps of the point before the first that meets ``target`` (lower is better) and of that point: where
    ``evaluate.time_to`` interpolates. None when no point meets it, or the first point does (nothing earlier is
    known), or the point before has no value."""
    values = [math.nan if p[key] is None else p[key] for p in points]
    i = first_reach(values, target)
    return None if not i or not math.isfinite(values[i - 1]) else (points[i - 1]["step"], points[i]["step"])


def refined_points(run: Path, protocol: Protocol, cache: Path, steps: list[int]) -> tuple[list[dict], int]:
    """The points of the kept snapshots at ``steps`` (``curves.evaluate_run``), from
    ``cache/<run>-<protocol>-t<timing rules>-refined.json`` where evaluated before; and how many were evaluated now."""
    file = cache / f"{run.name}-{protocol.key()}-t{TIMING}{REFINED_SUFFIX}"
    known = saved_curve(file) if file.exists() else {}
    missing = [s for s in steps if str(s) not in known]
    if missing:
        known.update({str(p["step"]): p for p in evaluate_run(run, protocol, missing)["points"]})
        write_json(file, known)
    return [known[str(s)] for s in steps], len(missing)


def narrowed(row: dict, targets: dict[str, float], protocol: Protocol, cache: Path) -> tuple[list[dict], int]:
    """``row``'s curve points narrowed around each of ``targets`` ({key: value}), and how many snapshots were
    evaluated for them."""
    run, points, evaluated = Path(row["run"]), list(row["curve"]["points"]), 0
    kept = snapshot_steps(run, row["curve"]["networks"])
    for key, target in targets.items():
        for _ in range(protocol.refine):
            found = gap(points, target, key)
            inside = [s for s in kept if found and found[0] < s < found[1]]
            if not inside:
                break
            middle = min(inside, key=lambda s: abs(s - (found[0] + found[1]) / 2))
            new, n = refined_points(run, protocol, cache, [middle])
            points, evaluated = sorted(points + new, key=lambda p: p["step"]), evaluated + n
    return points, evaluated


def narrowing_worker(threads: int) -> None:
    """A process of ``narrow_all``'s pool: ``threads`` torch threads; a Ctrl-C ends it at once (the points it
    evaluated are cached, so the same bench command goes on from there)."""
    import torch
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def narrow_all(tables: Tables, protocol: Protocol, out: Path, say: Callable[[str], None], processes: int = 1,
               threads: int = 1) -> None:
    """Narrow every finished row of ``tables`` in place around its seed's targets; rows of one run (a control
    that is another scenario's run) are narrowed once. The rounds of one run depend on each other, those of two
    runs do not: with ``processes`` > 1 the runs are spread over that many processes of ``threads`` torch
    threads each (in this process otherwise, on its own threads)."""
    work: dict[str, tuple[list[dict], dict[str, float]]] = {}  # run -> its rows, its seed's targets
    for data in tables.parts:
        judged = tables.key(data)
        targets = {key: tables.targets(data, key) for key in (judged, "metric" if judged == "nll" else "nll")}
        for row in tables.rows:
            if row["data"] == data and row["status"] == "ok":
                mine = {key: by_seed[row["seed"]] for key, by_seed in targets.items() if row["seed"] in by_seed}
                work.setdefault(row["run"], ([], mine))[0].append(row)

    def done(run: str, points: list[dict], n: int) -> None:
        rows = work[run][0]
        for row in rows:
            row["curve"] = {**row["curve"], "points": points}
        if n:
            say(f"bench: {rows[0]['data']}: {rows[0]['variant']}, seed {rows[0]['seed']}: {n} more snapshots "
                "evaluated where it meets its target")

    cache, processes = out / "curves", min(processes, len(work))  # no process started for want of a run
    if processes <= 1:
        for run, (rows, mine) in work.items():
            done(run, *narrowed(rows[0], mine, protocol, cache))
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
    with ProcessPoolExecutor(processes, mp_context=context, initializer=narrowing_worker,
                             initargs=(threads,)) as pool:
        running = {pool.submit(narrowed, rows[0], mine, protocol, cache): run for run, (rows, mine) in work.items()}
        for future in as_completed(running):
            done(running[future], *future.result())


def bracket(rows: list[dict], protocol: Protocol, out: Path, say: Callable[[str], None], processes: int = 1,
            threads: int = 1) -> list[dict]:
    """Every finished row of a study with its curve narrowed around its seed's targets (``narrowed``): the key the
    study is judged by, then the other; on the study's cores (no run trains now, and the points' wall-clock is the
    snapshots' own): its runs spread over ``processes`` processes of ``threads`` torch threads each."""
    import torch
    if protocol.refine == 0:
        return rows
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        narrow_all(Tables(rows), protocol, out, say, processes, threads)
    finally:
        torch.set_num_threads(before)
    return rows


__all__ = ["bracket", "gap", "narrow_all", "narrowed", "narrowing_worker", "refined_points"]
