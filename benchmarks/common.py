"""Pieces every benchmark script shares: reusing finished runs, the machine description, the report."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

import torch

from scorefast.trainer import TrainConfig, train


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


def same_config(run: Path, cfg: TrainConfig) -> bool:
    """Whether ``run`` was written by exactly this configuration (its location aside)."""
    try:
        saved = json.loads((run / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return False
    return {**saved, "out": ""} == {**cfg.to_dict(), "out": ""}


def train_run(cfg: TrainConfig, reuse: bool) -> tuple[dict, bool]:
    """Train one configuration (or reuse a finished identical run); returns (summary, reused)."""
    run = Path(cfg.out)
    if reuse and (run / "summary.json").is_file() and same_config(run, cfg):
        return json.loads((run / "summary.json").read_text()), True
    if run.exists():
        if any(run.iterdir()) and not (run / "config.json").is_file():
            raise SystemExit(f"refusing to delete '{run}': it is not a scorefast run directory")
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    return train(cfg, progress=False), False
