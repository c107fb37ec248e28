"""How far each prior at T is from p_T on images: how much of a truncated run's sample error a prior can explain.

    OMP_NUM_THREADS=1 python benchmarks/prior_gap.py --data digits --prior-steps 100    # every prior, 5 minutes
    OMP_NUM_THREADS=1 python benchmarks/prior_gap.py --data mnist --priors standard,gaussian   # 2 minutes
    OMP_NUM_THREADS=2 python benchmarks/prior_gap.py --data digits --T 0.4 --quick      # a smoke test

(benchmarks/results/prior_gap.txt holds both tables; at d = 784 a step of the gmm's online EM and of the flow
costs seconds, so mnist is measured with the closed-form priors.)

A run truncated at T < 1 starts its samples from a prior nu fitted at T; by data processing, KL[p_T || nu] bounds
the prior's share of the error of the samples' law, whatever the score network. ``elbo.prior_gap`` measures it
exactly up to Monte Carlo for p_T the forward marginal (the trainer's VP SDE) of the training images in model
space: a mixture of N(alpha_T x_i, sigma_T^2 I), whose log-density is a log-sum-exp over the images. The priors are
those of ``--prior``, fitted as a run fits them (``Prior.fit`` on the same images, the run's seed): the standard
N(0, I), the moment-matched full-covariance Gaussian (the KL-optimal Gaussian: no Gaussian does better), the
mixture of 8 full-covariance Gaussians, and the flow. The empirical p_T is sharper than the law of
the data at small T (its entropy is at most log N nats above the noise's), so the figures slightly overstate the
gap there; they are a bound on what any prior of the family can reach, not an estimate of sample quality.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import torch

from scorefast.data import load_data
from scorefast.methods.elbo import prior_gap
from scorefast.methods.priors import PRIORS
from scorefast.sde import VPSDE


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="comma-separated image sets")
    p.add_argument("--T", default="0.2,0.4,0.6,0.8,1.0", help="comma-separated end times")
    p.add_argument("--priors", default="standard,gaussian,gmm,flow", help="comma-separated priors (--prior's names)")
    p.add_argument("--n", type=int, default=4096, help="Monte-Carlo draws from p_T per cell")
    p.add_argument("--prior-steps", type=int, default=500, help="fit steps of the gmm and flow priors")
    p.add_argument("--quick", action="store_true", help="n = 512, 20 fit steps")
    args = p.parse_args()
    n, steps = (512, 20) if args.quick else (args.n, args.prior_steps)
    lines = [f"$ OMP_NUM_THREADS={torch.get_num_threads()} python benchmarks/prior_gap.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "quick")
        + (" --quick" if args.quick else ""),
        f"{date.today()}, {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__};"
        f" {n} draws from p_T per cell, gmm/flow fitted for at most {steps} steps (early-stopped)", "",
        "| data | d | T | prior | KL[p_T \\|\\| nu], nats | per dimension | +- (s.e.) | fit s |",
        "|---|---|---|---|---|---|---|---|"]
    for spec in args.data.split(","):
        train, _ = load_data(spec).split()
        x0 = train.x.flatten(1)
        for T in map(float, args.T.split(",")):
            sde = VPSDE(T=T)
            for name in args.priors.split(","):
                plugin = PRIORS.create(name, **({"prior_steps": steps} if name in ("gmm", "flow") else {}))
                torch.manual_seed(0)
                prior = plugin.build(x0.shape[1], sde)
                t0 = time.perf_counter()
                prior.fit(x0, sde, seed=0, progress=False, **plugin.fit_options())
                fit_s = time.perf_counter() - t0
                gap = prior_gap(sde, x0, prior, n=n, generator=torch.Generator().manual_seed(1))
                lines.append(f"| {spec} | {gap['dim']} | {T:g} | {name} | {gap['kl']:.2f} | {gap['kl_per_dim']:.4f} "
                             f"| {gap['sem']:.2f} | {fit_s:.1f} |")
                print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
