"""The held-out NLL of a finished run on a uniform time grid and on a noise-level (log-SNR) grid, at a few step counts.

    OMP_NUM_THREADS=2 python benchmarks/nll_grid.py RUN mnist 32 20,100     # about 2.5 minutes
    OMP_NUM_THREADS=2 python benchmarks/nll_grid.py RUN digits 300 40,200

The bench's curves integrate the probability-flow ODE on a uniform grid in t (``evaluate.test_nll``); this says
how far that is from a converged value at the steps a study affords: the same held-out images, dequantisation
and Hutchinson probes (2, seeded) for every grid, bits/dim.
"""

from __future__ import annotations

import sys
import time

import torch

from scorefast.likelihood import bits_per_dim, dequantize, log_likelihood
from scorefast.run import open_run


def main() -> None:
    path, spec, n, counts = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(c) for c in sys.argv[4].split(",")]
    run = open_run(path)
    held = run.heldout(spec, n)
    x = dequantize(held.x, held.levels, generator=torch.Generator().manual_seed(7))
    prior_logp = run.prior.log_prob if run.prior is not None else None
    print(f"$ python benchmarks/nll_grid.py {' '.join(sys.argv[1:])}   ({torch.get_num_threads()} threads)")
    for schedule in ("uniform", "logsnr"):
        for steps in counts:
            t0 = time.perf_counter()
            logp = log_likelihood(run.model, run.sde, x, steps=steps, hutchinson=2, schedule=schedule,
                                  generator=torch.Generator().manual_seed(7), prior_logp=prior_logp)
            bpd, seconds = float(bits_per_dim(logp, held.dim, held.levels).mean()), time.perf_counter() - t0
            print(f"{spec}: {schedule:7s} grid, {steps:3d} RK4 steps: {bpd:.3f} bits/dim ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
