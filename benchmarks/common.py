"""Pieces every benchmark script shares: reusing finished runs, the machine description, the report,
plug-in options, curves for ``evaluate.time_to`` and the min/median/max statistics over seeds."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

import torch

from scorefast import Config, train
from scorefast.registry import Registry, flag_of


def command_line(file: str, argv: list[str] | None) -> str:
    """The exact command that is running, for the top of a report."""
    return shlex.join([sys.executable, *(sys.argv if argv is None else [file, *argv])])


def machine_info(**extra) -> dict:
    """Platform, cores, torch version and the load average at the start (the machines are shared)."""
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "loadavg_start": os.getloadavg(),
            **extra}


class Report:
    """Lines printed as they come and kept for report.txt."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


def stored_results(path: Path) -> dict:
    """A benchmark's stored raw results (its JSON), for ``--report-only``: the report is regenerated from
    the stored curves without training."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--report-only: cannot read '{path}' ({exc})") from None


def options_of(registry: Registry, name: str, **options) -> dict:
    """The options that plug-in ``name`` of ``registry`` has, from a set shared by several plug-ins
    (``Config`` refuses an option of a plug-in that is not selected)."""
    own = {flag_of(f) for f in dataclasses.fields(registry.get(name))}
    return {k: v for k, v in options.items() if k in own}


def same_config(run: Path, cfg: Config) -> bool:
    """Whether ``run`` was written by exactly this configuration (its location aside)."""
    try:
        saved = json.loads((run / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return False

    def located_nowhere(nested: dict) -> dict:
        return {**nested, "log": {k: v for k, v in nested.get("log", {}).items() if k != "out"}}
    return located_nowhere(saved) == located_nowhere(cfg.to_dict())


def train_run(cfg: Config, reuse: bool) -> tuple[dict, bool]:
    """Train one configuration (or reuse a finished identical run); returns (summary, reused)."""
    run = Path(cfg.log.out)
    if reuse and (run / "summary.json").is_file() and same_config(run, cfg):
        return json.loads((run / "summary.json").read_text()), True
    if run.exists():
        if any(run.iterdir()) and not (run / "config.json").is_file():
            raise SystemExit(f"refusing to delete '{run}': it is not a scorefast run directory")
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    return train(cfg, progress=False), False


def curve_of(points: list[dict], x: str, y: str) -> list[tuple[float, float]]:
    """[(x, y), ...] of curve points, for ``evaluate.time_to``; a value stored as null (JSON has no
    inf or NaN) is non-finite, so it never counts as reaching a target."""
    return [(p[x], math.nan if p[y] is None else p[y]) for p in points]


def mmm(values) -> list[float | None]:
    """min/median/max over seeds; None (a time never reached) ranks above every number and stays None
    (so a median of [3, None, None] is None: most seeds never got there)."""
    values = list(values)
    v: list = sorted(float(x) for x in values if x is not None)
    v += [None] * (len(values) - len(v))
    if not v:
        return [math.nan] * 3
    half = len(v) // 2
    if len(v) % 2:
        median = v[half]
    else:
        median = None if v[half] is None else (v[half - 1] + v[half]) / 2
    return [v[0], median, v[-1]]


def fmt3(t, spec: str = ".3f") -> str:
    """min/median/max as one string (one value when all equal); None is 'never', no statistics '-'."""
    if t is None or all(isinstance(x, float) and math.isnan(x) for x in t):
        return "-"
    parts = ["never" if x is None else format(x, spec) for x in t]
    if len(set(parts)) == 1:
        return parts[0]
    return "/".join(parts)


