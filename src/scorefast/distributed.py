"""The torch.distributed worker of an interval-parallel run: intervals across process groups, DDP inside each.

``scorefast train --workers P`` starts P of these through torchrun (``training.launcher``): gloo on CPU,
nccl on GPU. The worker reads everything from the run directory it is given (never from the path
recorded in config.json, so a prepared directory can be copied elsewhere), so the same command runs
unchanged under an external launcher across machines:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m scorefast.distributed RUN_DIR

Each interval's checkpoint is written by rank 0 of its group; a resumed run skips finished intervals.
Failures: a worker that dies takes the job down (torchrun stops the others) and ``--resume`` finishes
the missing intervals; with ``--max-restarts`` torchrun restarts the workers, which resume from their
checkpoints by themselves. A worker that hangs (e.g. SIGSTOP) stops sending heartbeats
(RUN_DIR/heartbeats/): after ``--worker-timeout`` seconds the others stop the job instead of waiting in a
collective forever. SIGINT / SIGTERM (torchrun passes them on) and the death of the ``scorefast train``
process that launched the job stop every worker after its current step, with its checkpoint saved.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import run_command
from .run import RunDir
from .training.context import context
from .training.interrupt import Interrupt
from .training.launcher import assignment, layout
from .training.recipe import Group, jobs, train_network


class Watchdog(threading.Thread):
    """Writes this rank's heartbeat every ``period`` seconds and watches the others' and the launcher's.

    A rank whose heartbeat has not changed for ``timeout`` seconds is hung: its process is killed if it
    runs on this host (so torchrun sees it fail at once) and this worker exits, which makes torchrun stop
    the job. If the launching process (SCOREFAST_PARENT_PID) or torchrun itself is gone, ``on_orphan``
    asks this worker to stop after its current step.
    """

    def __init__(self, folder: Path, rank: int, world: int, timeout: float, on_orphan, period: float = 1.0):
        super().__init__(daemon=True)
        self.folder, self.rank, self.world, self.timeout, self.period = folder, rank, world, timeout, period
        self.on_orphan = on_orphan
        self.launcher = int(os.environ.get("SCOREFAST_PARENT_PID", "0")) or None
        self.agent = os.getppid()
        self.stopped = threading.Event()
        folder.mkdir(parents=True, exist_ok=True)

    def beat(self, count: int) -> None:
        path = self.folder / f"rank-{self.rank}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"count": count, "pid": os.getpid(), "host": socket.gethostname()}))
        os.replace(tmp, path)

    def orphaned(self) -> bool:
        if os.getppid() != self.agent:
            return True
        if self.launcher is None:
            return False
        try:
            os.kill(self.launcher, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def run(self) -> None:
        seen: dict[int, tuple[object, float]] = {}
        count = 0
        while not self.stopped.wait(self.period):
            count += 1
            self.beat(count)
            if self.orphaned():
                self.on_orphan()
            now = time.monotonic()
            for peer in range(self.world):
                if peer == self.rank:
                    continue
                try:
                    info = json.loads((self.folder / f"rank-{peer}.json").read_text())
                except (OSError, ValueError):
                    info = None
                mark = None if info is None else info["count"]
                if peer not in seen or seen[peer][0] != mark:
                    seen[peer] = (mark, now)
                elif now - seen[peer][1] > self.timeout:
                    self.abort(peer, info)

    def abort(self, peer: int, info: dict | None) -> None:
        print(f"scorefast: worker rank {peer} sent no heartbeat for {self.timeout:g} s (hung or stopped): stopping "
              "the job; the finished intervals are kept, continue with --resume", file=sys.stderr, flush=True)
        if info and info.get("host") == socket.gethostname():
            try:
                os.kill(int(info["pid"]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        os._exit(3)


def worker(run_dir: str) -> None:
    """One rank: join the job, train this group's intervals, wait for all groups."""
    run = RunDir(run_dir)
    cfg = run.read_config().replace(out=str(run.path))
    use_cuda = torch.cuda.is_available() and cfg.launch.device != "cpu"
    # torchrun's workers share the agent's key-value store across restarts, so a restarted gloo group can read a
    # dead worker's address left from the previous attempt; a prefix per attempt keeps every attempt's keys apart.
    store, rank, world = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"scorefast/attempt-{attempt}", store)
    with Interrupt() as interrupt:
        watchdog = Watchdog(run.path / "heartbeats", rank, world, cfg.launch.worker_timeout,
                            on_orphan=lambda: interrupt.request(signal.SIGTERM))
        watchdog.start()
        dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=max(60.0, 2 * cfg.launch.worker_timeout)))
        if use_cuda:
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            cfg = cfg.replace(device=f"cuda:{local}")
        torch.set_num_threads(cfg.launch.threads or 1)
        ctx = context(cfg, run)
        groups, dp = layout(world, len(ctx.edges) - 1)
        handles = [dist.new_group(list(range(g * dp, (g + 1) * dp))) for g in range(groups)]
        g = rank // dp
        init = None
        if cfg.partition.warm_start:
            from .checkpoint import load_checkpoint
            init = load_checkpoint(run.checkpoint("warm"))["ema"]
        for job in jobs(ctx, assignment(len(ctx.edges) - 1, groups)[g]):
            train_network(ctx, job, Group(handles[g], rank % dp, dp), init=init, interrupt=interrupt,
                          progress=(rank % dp == 0) and sys.stderr.isatty())
        dist.barrier()
        watchdog.stopped.set()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scorefast.distributed",
                                description="torch.distributed worker of an interval-parallel scorefast run")
    p.add_argument("run_dir", help="run directory whose config.json describes the job")
    args = p.parse_args(argv)
    return run_command(lambda: worker(args.run_dir))


if __name__ == "__main__":
    sys.exit(main())
