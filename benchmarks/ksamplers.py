"""Few-step samplers against today's default: with the exact score of a 2-D Gaussian mixture, and on
trained runs.

    .venv/bin/python benchmarks/ksamplers.py [--seeds 3] [--n 4000]
    .venv/bin/python benchmarks/ksamplers.py --runs RUN_DIR[,RUN_DIR...] [--seeds 3] [--n 10000]

With ``--runs``, each trained run is sampled by every row's sampler through the one evaluator
(evaluate.Evaluator: the run's start law, the given sampler, schedule and steps) and scored with the
run's own metric against its held-out data (SWD on 2-D sets, the digits Frechet distance on digits),
median [min, max] over --seeds sampling seeds, with the ratio of the median to RK4's at 100 steps.

Data: 8 equal modes N(c_k, 0.1^2 I) on a circle of radius 2; MixtureScore with bandwidth 0.1 over the
8 centres is its exact score for every t, so only the sampler is measured. Each row: network
evaluations counted, and median [min, max] over seeds (a seed sets x_T and any sampler noise) of
- swd: sliced Wasserstein distance (500 fixed projections) of n samples to n reference draws;
- rms: root-mean-square distance of each sample to the RK4 100-step sample from the same x_T
  (the discretisation error of a deterministic sampler; not defined for the stochastic ones).
The floor is the swd of a fresh set of n draws from the mixture: with 4,000 points swd is dominated by
the sampling noise of the mode weights, so rms is what separates the deterministic samplers.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from scorefast.analytic import MixtureScore
from scorefast.choices import SAMPLERS, SCHEDULES
from scorefast.metrics import sliced_wasserstein
from scorefast.sde import make_sde

# (label, sampler, schedule, steps, options)
ROWS = [("RK4 PF-ODE, uniform t", "ode", "uniform", 100, {"method": "rk4"}),
        ("RK4 PF-ODE, uniform t", "ode", "uniform", 5, {"method": "rk4"}),
        ("DPM-Solver++(2M), Karras", "dpmpp-2m", "karras", 20, {}),
        ("DPM-Solver++(2M), log-SNR", "dpmpp-2m", "logsnr", 20, {}),
        ("EDM Heun, Karras", "heun", "karras", 10, {}),
        ("Euler ancestral, Karras", "euler-a", "karras", 50, {})]


class Counted(torch.nn.Module):
    """Counts network evaluations (calls on the whole batch)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x, t):
        self.calls += 1
        return self.model(x, t)


def mixture(n: int, centres: torch.Tensor, h: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(len(centres), (n,), generator=g)
    return centres[k] + h * torch.randn(n, 2, generator=g, dtype=centres.dtype)


def trained_runs(runs: list[str], n: int, seeds: int) -> None:
    """Every row's sampler on trained runs, scored by the run's metric against its held-out data."""
    from scorefast import open_run
    from scorefast.evaluate import Evaluator, metric_name, quality
    for path in runs:
        run = open_run(path, device="cpu")
        held = run.heldout(run.config.data.spec)
        name = metric_name(held)
        count = min(n, 2000) if name == "digits_fd" else n
        print(f"\n{path}: {run.config.data.spec}, {name} of {count} samples against {len(held)} held-out examples")
        print(f"{'sampler':28s} {'steps':>5s} {'NFE':>4s}  {name:23s}  ratio to RK4-100")
        base = None
        for label, sampler, schedule, steps, _ in ROWS:  # the 'ode' sampler's own method is RK4
            counted = Counted(run.model)
            values = []
            for seed in range(seeds):
                counted.calls = 0
                ev = Evaluator(count, sampler, steps, seed=seed, scale_steps=False, schedule=schedule)
                values.append(quality(name, ev.samples(counted, run.sde, run.shape, run.prior), held.x))
            nfe = counted.calls
            base = statistics.median(values) if base is None else base
            print(f"{label:28s} {steps:5d} {nfe:4d}  {summary(values)}  {statistics.median(values) / base:.3f}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--runs", default=None, help="comma-separated run directories to sample instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.runs:
        trained_runs(args.runs.split(","), args.n, args.seeds)
        return
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    centres, h = 2 * torch.stack([angles.cos(), angles.sin()], 1), 0.1
    reference = mixture(args.n, centres, h, seed=1000)
    fresh = [mixture(args.n, centres, h, seed=2000 + s) for s in range(args.seeds)]
    print(f"floor, {args.n} fresh draws: swd {summary([sliced_wasserstein(f, reference) for f in fresh])}")
    for family in ("vp", "ve"):
        sde = make_sde(family)
        model = Counted(MixtureScore(sde, centres, h))
        print(f"\n{sde}")
        print(f"{'sampler':28s} {'steps':>5s} {'NFE':>4s}  {'swd':23s}  rms to RK4-100")
        exact = {}
        for label, name, schedule, steps, options in ROWS:
            swd, rms, nfe = [], [], set()
            ts = SCHEDULES[schedule](sde, steps, dtype=torch.float64)
            for seed in range(args.seeds):
                g = torch.Generator().manual_seed(seed)
                x = sde.prior_sampling((args.n, 2), generator=g).double()
                model.calls = 0
                out = SAMPLERS[name](model, sde, x, ts, progress=False, generator=g, **options)
                nfe.add(model.calls)
                swd.append(sliced_wasserstein(out, reference))
                exact.setdefault(seed, out)
                rms.append(float((out - exact[seed]).pow(2).sum(1).mean().sqrt()))
            stochastic = name == "euler-a"
            print(f"{label:28s} {steps:5d} {'/'.join(map(str, sorted(nfe))):>4s}  {summary(swd)}  "
                  f"{'-' if stochastic else summary(rms)}")


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


if __name__ == "__main__":
    main()
