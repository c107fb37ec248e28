"""Per-step cost of the pre-computed score targets against a DSM step, side by side (one thread).

    OMP_NUM_THREADS=1 python benchmarks/targets.py                 # about 5 minutes on a quiet machine
    OMP_NUM_THREADS=1 python benchmarks/targets.py --quick         # a smoke test; its numbers mean little

Two set-ups (VP SDE, Adam, float32, batch drawn with replacement, t ~ U[eps, 1] per example):
  2-D      checkerboard, 10,000 points, TimeMLP 3x128, batch 512, reference 1,024
  digits   8x8 digits (the 80 % training split, 1,437 images, flattened to d = 64), TimeMLP 3x256,
           batch 256, reference 1,024
Variants: DSM (objective.Goal), STF (estimators.ReferenceBatchTarget, what --method empirical uses; the
'empirical' row of results/targets.txt is the mixture it replaced), the exact target over all N points, the
nearest-neighbour target
(estimators.NearestNeighbourTarget, k and tail draws as listed), STF and k-NN also inside a sigma band
(DSM's target outside), and k-NN below a sigma with STF above it (``outside``).
Every non-DSM variant is trained through objective.ScoreGoal (the regression w(t) || sigma (s_theta -
s*) ||^2 on the estimator's for_batch). Two numbers per variant: the target evaluation alone (no
grad, on the step's x0, x_t, t) and a whole optimiser step (batch draw, loss, backward, Adam).
Each repeat alternates single calls of all variants ``--inner`` times and keeps each variant's median
call; ratios to DSM are taken within a repeat, then summarised as median [min, max] over ``--repeats``:
load from other processes lands on all variants alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from scorefast.data import load_data
from scorefast.nets import EpsilonParam, TimeMLP
from scorefast.objective import Goal, Objective, ScoreGoal
from scorefast.sde import make_sde
from scorefast.time_sampling import UniformTimes


def summary(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def setups(quick: bool) -> dict[str, dict]:
    digits = load_data("digits").x
    perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    return {
        "2-D": {"data": load_data("checkerboard", n=2000 if quick else 10_000).x, "hidden": 128, "batch": 512},
        "digits": {"data": digits[perm[: int(0.8 * len(digits))]].flatten(1), "hidden": 256, "batch": 256},
    }


def variants(sde, data: torch.Tensor, reference: int, band: tuple[float, float], ks: list[int],
             tails: list[int], split: float) -> dict[str, object | None]:
    """name -> estimator (None: DSM); 'stf' is what --method empirical trains on."""
    from scorefast.estimators import NearestNeighbourTarget, ReferenceBatchTarget

    out: dict[str, object | None] = {"dsm": None}
    out["stf"] = ReferenceBatchTarget(sde, data, reference)
    out["exact (all N points)"] = ReferenceBatchTarget(sde, data, len(data))
    out["stf, band"] = ReferenceBatchTarget(sde, data, reference, band=band)
    for k in ks:
        for tail in tails:
            name = f"knn k={k}" + (f" tail={tail}" if tail else "")
            out[name] = NearestNeighbourTarget(sde, data, k=k, tail=tail)
            out[name + ", band"] = NearestNeighbourTarget(sde, data, k=k, tail=tail, band=band)
    below = (1e-6, float(sde.sigma(torch.tensor(split))))
    for k in ks:
        out[f"knn k={k} below t={split:g}, stf above"] = NearestNeighbourTarget(
            sde, data, k=k, band=below, outside=ReferenceBatchTarget(sde, data, reference))
    return out


def timed_calls(fns: dict[str, Callable[[], object]], repeats: int, inner: int) -> dict[str, list[float]]:
    """Per repeat, the median ms of ``inner`` single calls of each fn, the fns alternating call by call
    (the order rotating), so that a burst of load lands on all of them alike."""
    for fn in fns.values():
        fn(), fn()
    names, times = list(fns), {k: [] for k in fns}
    for r in range(repeats):
        calls: dict[str, list[float]] = {k: [] for k in fns}
        for i in range(inner):
            j = (r + i) % len(names)
            for name in names[j:] + names[:j]:
                t0 = time.perf_counter()
                fns[name]()
                calls[name].append((time.perf_counter() - t0) * 1e3)
        for name, values in calls.items():
            times[name].append(statistics.median(values))
    return times


def bench(name: str, cfg: dict, args, say) -> None:
    torch.manual_seed(0)
    sde, data, batch = make_sde("vp"), cfg["data"], cfg["batch"]
    band = (float(sde.sigma(torch.tensor(args.band[0]))), float(sde.sigma(torch.tensor(args.band[1]))))
    ests = variants(sde, data, args.reference, band, args.k, args.tail, args.split)
    model = EpsilonParam(TimeMLP(data.shape[1], cfg["hidden"], 3), sde)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x0 = data[torch.randint(0, len(data), (batch,))]
    t = UniformTimes(sde.eps, sde.T)(batch)
    xt = sde.perturb(x0, t, torch.randn_like(x0))

    def target_call(est) -> Callable[[], object]:
        def call():
            with torch.no_grad():
                return est.for_batch(x0)(xt, t)
        return call

    def step_call(objective) -> Callable[[], object]:
        def call():
            opt.zero_grad(set_to_none=True)
            objective(data[torch.randint(0, len(data), (batch,))]).mean().backward()
            opt.step()
        return call

    losses = {k: Objective(model, sde, Goal() if e is None else ScoreGoal(e)) for k, e in ests.items()}
    steps = timed_calls({k: step_call(v) for k, v in losses.items()}, args.repeats, args.inner)
    targets = timed_calls({k: target_call(e) for k, e in ests.items() if e is not None}, args.repeats, args.inner)
    inside = ((sde.sigma(t) >= band[0]) & (sde.sigma(t) <= band[1])).float().mean()
    say(f"\n## {name}: N = {len(data)}, d = {data.shape[1]}, TimeMLP 3x{cfg['hidden']}, batch {batch}, "
        f"reference {args.reference}; band t in [{args.band[0]}, {args.band[1]}] = sigma in "
        f"[{band[0]:.3f}, {band[1]:.3f}] ({inside:.0%} of this batch)\n")
    say("| target | target alone (ms) | whole step (ms) | step / DSM step | (step - DSM step) / DSM step |")
    say("|---|---|---|---|---|")
    dsm = steps["dsm"]
    for k in steps:
        ratio = [s / d for s, d in zip(steps[k], dsm)]
        extra = [r - 1 for r in ratio]
        alone = summary(targets[k], "{:.3f}") if k in targets else "-"
        say(f"| {k} | {alone} | {summary(steps[k])} | {summary(ratio)} | {summary(extra, '{:+.2f}')} |")


def target_error(name: str, cfg: dict, args, say) -> None:
    """Mean squared error of each target in epsilon units, E |sigma (target - s*)|^2 / d, against the exact
    score s* of the diffused data (all N points), at fixed t: where a target beats DSM's, a band pays."""
    from scorefast.analytic import MixtureScore

    torch.manual_seed(1)
    sde, data, batch = make_sde("vp"), cfg["data"], cfg["batch"]
    exact = MixtureScore(sde, data, 0.0, chunk=4096)
    ests = {k: e for k, e in variants(sde, data, args.reference, (1e-3, 1e-2), args.k, args.tail, args.split).items()
            if e is not None and "band" not in k and "exact" not in k and "today" not in k}
    say(f"\n{name}: target error E|sigma (target - s*)|^2 / d at fixed t (batch {batch}, mean of "
        f"{args.error_batches} batches; DSM's target is -z / sigma)\n")
    say("| t | sigma | dsm | " + " | ".join(ests) + " |")
    say("|---|---|---|" + "---|" * len(ests))
    for t0 in args.error_times:
        t = torch.full((batch,), t0)
        sigma = sde.sigma(t)[:, None]
        err = {k: 0.0 for k in ["dsm", *ests]}
        for _ in range(args.error_batches):
            x0 = data[torch.randint(0, len(data), (batch,))]
            z = torch.randn_like(x0)
            xt = sde.perturb(x0, t, z)
            with torch.no_grad():
                s_star = exact(xt, t)
                err["dsm"] += float((z + sigma * s_star).pow(2).mean()) / args.error_batches
                for k, e in ests.items():
                    err[k] += float((sigma * (e.target(x0, xt, t) - s_star)).pow(2).mean()) / args.error_batches
        say(f"| {t0:g} | {float(sigma[0]):.3f} | " + " | ".join(f"{v:.2e}" for v in err.values()) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--inner", type=int, default=20, help="calls per variant and repeat")
    p.add_argument("--reference", type=int, default=1024)
    p.add_argument("--k", type=int, nargs="+", default=[8, 32])
    p.add_argument("--tail", type=int, nargs="+", default=[0, 32])
    p.add_argument("--band", type=float, nargs=2, default=[0.05, 0.5], metavar=("T_LO", "T_HI"),
                   help="the sigma band of the banded variants, given as the times at its ends")
    p.add_argument("--split", type=float, default=0.05,
                   help="the composite variants use k-NN below the sigma of this time and STF above it")
    p.add_argument("--error-times", type=float, nargs="+", default=[0.002, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    p.add_argument("--error-batches", type=int, default=4)
    p.add_argument("--parts", default="cost,error", help="cost (per-step timing), error (target error vs t)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="also write the report to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.inner, args.error_batches, args.error_times = 3, 3, 1, [0.01, 0.3]
    torch.set_num_threads(1)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"$ OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python {' '.join(sys.argv)}")
    say(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f} at the start; {args.repeats} repeats x {args.inner} calls; median [min, max]")
    parts = args.parts.split(",")
    for name, cfg in setups(args.quick).items():
        if "cost" in parts:
            bench(name, cfg, args, say)
        if "error" in parts:
            target_error(name, cfg, args, say)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
