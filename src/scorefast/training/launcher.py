"""Launching interval-parallel training on this machine with torchrun, and the layout of the ranks.

The P ranks form G = P / D groups of D ranks (D = P // K for K intervals, at least 1); intervals go to
groups round-robin and are queued inside a group; inside a group a network is trained with
DistributedDataParallel. The worker that each rank runs is ``scorefast.distributed``; nothing here
imports it (it imports the recipe, which imports this module).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from .interrupt import Interrupted


def layout(workers: int, intervals: int) -> tuple[int, int]:
    """(groups G, data-parallel size D) for P workers and K intervals, or a UserError."""
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    dp = max(1, workers // intervals)
    if workers % dp:
        raise UserError(f"--workers {workers} cannot be split into equal data-parallel groups for {intervals} "
                        f"intervals (use a multiple of {intervals}, or fewer workers than intervals)")
    groups = workers // dp
    if groups > intervals:
        raise UserError(f"--workers {workers} is more than intervals x data-parallel size ({intervals} x {dp})")
    return groups, dp


def assignment(intervals: int, groups: int) -> list[list[int]]:
    """Intervals of each group, round-robin."""
    return [list(range(g, intervals, groups)) for g in range(groups)]


def launch(cfg, run_dir: Path) -> None:
    """Run the worker entry point under torchrun on this machine (a free port: --standalone); raise
    UserError if it fails. The workers know this process (SCOREFAST_PARENT_PID) and stop, saving their
    checkpoints, if it dies. A first Ctrl-C / SIGTERM is passed on to torchrun, which stops the workers
    the same way; a second one kills torchrun at once."""
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.launch.threads or 1), "SCOREFAST_PARENT_PID": str(os.getpid())}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.launch.workers}",
           f"--max-restarts={cfg.launch.max_restarts}", "-m", "scorefast.distributed", str(run_dir)]
    proc = subprocess.Popen(cmd, env=env)
    try:
        code = proc.wait()
    except (KeyboardInterrupt, SystemExit) as stop:
        signum = signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM
        proc.send_signal(signum)
        try:
            proc.wait()
        except (KeyboardInterrupt, SystemExit):
            proc.kill()
            proc.wait()
            raise
        raise Interrupted(signum, "the workers saved their checkpoints") from None
    if code != 0:
        raise UserError(f"distributed training stopped: a worker failed (torchrun exit {code}); the finished "
                        "intervals are kept, run again with --resume to train the missing ones")


__all__ = ["assignment", "launch", "layout"]
