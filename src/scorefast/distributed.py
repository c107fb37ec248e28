"""Interval-parallel training on torch.distributed: intervals across process groups, DDP inside each.

``scorefast train --workers P`` starts P processes through torchrun (torch.distributed.run): gloo on
CPU, nccl on GPU. The P ranks form G = P / D groups of D ranks (D = P // K for K intervals, at least
1); intervals are assigned to groups round-robin and queued inside a group; inside a group the network
is trained with DistributedDataParallel. A single network (K = 1) is plain DDP over all P ranks.

The worker entry point reads everything from the run directory, so the same command runs unchanged
under an external launcher across machines:

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
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import UserError, run_command


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


def launch(cfg) -> None:
    """Run the worker entry point under torchrun on this machine; raise UserError if it fails."""
    from .trainer import build_sde, edges_for
    edges = edges_for(cfg, build_sde(cfg))
    layout(cfg.workers, len(edges) - 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads or 1)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.workers}",
           f"--max-restarts={cfg.max_restarts}", "-m", "scorefast.distributed", str(cfg.out)]
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise UserError(f"distributed training stopped: a worker failed (torchrun exit {proc.returncode}); the "
                        f"finished intervals are kept, run again with --resume to train the missing ones")


def worker(run_dir: str) -> None:
    """One rank: join the job, train this group's intervals, wait for all groups."""
    from .trainer import TrainConfig, _read_config, build_sde, edges_for, jobs_for, load_dataset, train_network
    cfg = TrainConfig.from_dict(_read_config(Path(run_dir))["config"])
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    # torchrun's workers share the agent's key-value store across restarts, so a restarted gloo group can read a
    # dead worker's address left from the previous attempt; a prefix per attempt keeps every attempt's keys apart.
    store, rank, world = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, store=dist.PrefixStore(f"scorefast/attempt-{attempt}", store), rank=rank,
                            world_size=world, timeout=timedelta(minutes=30))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        cfg.device = f"cuda:{local}"
    torch.set_num_threads(cfg.threads or 1)
    sde = build_sde(cfg)
    edges = edges_for(cfg, sde)
    groups, dp = layout(world, len(edges) - 1)
    handles = [dist.new_group(list(range(g * dp, (g + 1) * dp))) for g in range(groups)]
    g = rank // dp
    train_ds, test_ds = load_dataset(cfg)
    mine = assignment(len(edges) - 1, groups)[g]
    for job in jobs_for(cfg, edges, indices=mine):
        job.group, job.rank_in_group, job.group_size = handles[g], rank % dp, dp
        train_network(cfg, job, train_ds, None, progress=(rank % dp == 0) and sys.stderr.isatty())
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
