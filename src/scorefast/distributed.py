"""The torch.distributed worker of an interval-parallel run: intervals across process groups, DDP inside each.

``scorefast train --workers P`` starts P of these through torchrun (``training.launcher``): gloo on CPU,
nccl on GPU. The worker reads everything from the run directory it is given (never from the path
recorded in config.json, so a prepared directory can be copied elsewhere), so the same command runs
unchanged under an external launcher across machines:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m scorefast.distributed RUN_DIR

Each interval's checkpoint is written by rank 0 of its group; a resumed run skips finished intervals.
A worker that dies takes the job down (torchrun stops the others, nothing hangs) and ``--resume``
finishes the missing intervals; with ``--max-restarts`` torchrun restarts the workers, which resume
from their checkpoints by themselves.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import run_command
from .run import RunDir
from .training.launcher import assignment, layout
from .training.recipe import Group, context, jobs, train_network


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
    dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world,
                            timeout=timedelta(minutes=30))
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
        train_network(ctx, job, Group(handles[g], rank % dp, dp), init=init,
                      progress=(rank % dp == 0) and sys.stderr.isatty())
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scorefast.distributed",
                                description="torch.distributed worker of an interval-parallel scorefast run")
    p.add_argument("run_dir", help="run directory whose config.json describes the job")
    args = p.parse_args(argv)
    return run_command(lambda: worker(args.run_dir))


if __name__ == "__main__":
    sys.exit(main())
