"""Few-step samplers against today's default, with the exact score of a 2-D Gaussian mixture.

    .venv/bin/python benchmarks/ksamplers.py [--seeds 3] [--n 4000]

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
from scorefast.ksampling import KSAMPLERS, SCHEDULES
from scorefast.metrics import sliced_wasserstein
from scorefast.sampling import sample_ode
from scorefast.sde import make_sde

SAMPLERS = {"ode": sample_ode, **KSAMPLERS}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
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
