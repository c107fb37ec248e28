"""The held-out NLL of a finished run on a uniform time grid and on a noise-level (log-SNR) grid, at a few step counts.

    OMP_NUM_THREADS=2 python benchmarks/nll_grid.py RUN mnist 32 20,100     # about 2.5 minutes
    OMP_NUM_THREADS=2 python benchmarks/nll_grid.py RUN digits 300 40,200

The bench's curves integrate the probability-flow ODE on a uniform grid in t (``evaluate.test_nll``); this says
how far that is from a converged value at the steps a study affords, by the bench's own ``test_nll`` (the same
held-out images, dequantisation and 2 Hutchinson probes, seed 7) on each grid, bits/dim.
"""

from __future__ import annotations

import sys
import time

import torch

from scorefast.evaluate import test_nll
from scorefast.run import open_run


def main() -> None:
    path, spec, n, counts = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(c) for c in sys.argv[4].split(",")]
    run = open_run(path)
    held = run.heldout(spec, n)
    print(f"$ python benchmarks/nll_grid.py {' '.join(sys.argv[1:])}   ({torch.get_num_threads()} threads)")
    for schedule in ("uniform", "logsnr"):
        for steps in counts:
            t0 = time.perf_counter()  # the bench's own call (its seed 7, 2 probes), on the grid asked for
            bpd = test_nll(run.model, run.sde, held, run.prior, steps=steps, hutchinson=2, seed=7,
                           schedule=schedule)["bpd"]
            print(f"{spec}: {schedule:7s} grid, {steps:3d} RK4 steps: {bpd:.3f} bits/dim "
                  f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
