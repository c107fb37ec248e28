"""``--jobs``: the runs of a study trained side by side, each in a process of its own, and stopped together.

A Ctrl-C reaches every process (the terminal signals the whole process group); a SIGTERM to the bench
alone is passed on; a job whose bench is gone - killed, even by SIGKILL - saves its run and exits, so no
job outlives its bench.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .curves import Protocol
from .runs import Part, Variant, config_hash, run_config, run_job

BUSY = threading.Event()  # set while a --jobs process trains or evaluates a run
ORPHAN_GRACE = 30.0  # seconds a job whose bench is gone may take to save its run before it exits


def watch_bench(bench: int, stop) -> None:
    """In a --jobs process: when the bench process is gone (killed, SIGKILL included) or asks the jobs to stop
    (``stop`` set: the bench got a SIGTERM of its own), stop as a SIGTERM does - the run being trained saves its
    step - and, the bench gone, exit once that is done: no job outlives its bench."""
    def watch() -> None:
        while os.getppid() == bench and not stop.wait(0.5):
            pass
        time.sleep(1.0)  # a signal that reached the bench's whole process group has reached this job too
        if BUSY.is_set() or os.getppid() != bench:
            os.kill(os.getpid(), signal.SIGTERM)  # idle: the default action ends the process at once
        if os.getppid() != bench:
            deadline = time.monotonic() + ORPHAN_GRACE
            while BUSY.is_set() and time.monotonic() < deadline:
                time.sleep(0.1)
            os._exit(128 + signal.SIGTERM)
    threading.Thread(target=watch, daemon=True, name="scorefast-bench-watch").start()


def timed_job(part: Part, variant: Variant, seed: int, out: Path, protocol: Protocol, threads: int):
    """``run_job`` in a process of its own (``--jobs``): its torch threads set, its seconds measured."""
    import torch
    torch.set_num_threads(threads)
    BUSY.set()
    try:
        t0 = time.perf_counter()
        return run_job(part, variant, seed, out, protocol), time.perf_counter() - t0
    finally:
        BUSY.clear()


def terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


def side_by_side(jobs: list[tuple], out: Path, processes: int, protocol: Protocol, threads: int, done: Callable,
                 progress: Callable, say: Callable[[str], None]) -> None:
    """Run ``jobs`` in ``processes`` processes at a time (``threads`` torch threads each), in their order; a
    run whose configuration is already being trained waits until that one has finished (then it is reused).
    A Ctrl-C reaches every process: each stops its run as a single run does, and nothing else starts; a
    SIGTERM to the bench is passed on to the jobs; a job whose bench died (even by SIGKILL) saves its run and
    exits (``watch_bench``)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    def digest(job: tuple) -> str | None:
        try:
            return None if job[1].skipped else config_hash(run_config(*job))
        except Exception:  # bad flags: the run itself fails and says why
            return None

    keys = [digest(job) for job in jobs]
    waiting, running = list(range(len(jobs))), {}  # job indices; future -> job index
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
    stop = context.Event()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    pool = ProcessPoolExecutor(processes, mp_context=context, initializer=watch_bench, initargs=(os.getpid(), stop))
    try:
        while waiting or running:
            for i in list(waiting):
                busy = {keys[k] for k in running.values()}
                if len(running) == processes:
                    break
                if keys[i] is not None and keys[i] in busy:
                    continue
                waiting.remove(i)
                progress(i, *jobs[i], " start:")
                if jobs[i][1].skipped:
                    done(i, run_job(*jobs[i], out, protocol), 0.0)
                else:
                    running[pool.submit(timed_job, *jobs[i], out, protocol, threads)] = i
            if running:
                finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished_now:
                    done(running.pop(future), *future.result())
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            stop.set()  # the SIGTERM reached the bench alone: each job stops its run
        for future in running:
            future.cancel()
        pool.shutdown(wait=True)  # each job stops its run as a single run does
        for future, i in running.items():
            if future.done() and not future.cancelled() and future.exception() is not None:
                part, variant, seed = jobs[i]
                say(f"bench: {part.label}: {variant.name}, seed {seed}: {future.exception()}")
        raise
    finally:
        pool.shutdown(wait=True)
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["ORPHAN_GRACE", "side_by_side", "timed_job", "watch_bench"]
