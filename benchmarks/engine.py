"""Engine benchmark: what the library costs over hand-written PyTorch, measured side by side.

    .venv/bin/python benchmarks/engine.py [--repeats 5] [--threads 1]

1. Training-step overhead: the real training loop, ``training.loop.fit`` with the hooks of a run
   (checkpoints, snapshots, periodic metric, metrics log and progress bar, due outside the timed steps),
   a DSM objective.Objective, RandomBatches, the Optimiser (Adam + clipping) and the EMA, against a bare loop
   doing the same math by hand (same network class and initial weights, same batch draws, t and z, same
   VP formulas, clipping and EMA), for the 2-D MLP (batch 512) and the 8x8 U-Net (batch 128). The two
   variants alternate in chunks of steps; a repeat reports each one's median step time. Target: library /
   bare <= 1.05.
2. PF-ODE NLL of 4,000 2-D points, exact divergence, a small briefly-trained TimeMLP: scorefast's
   log_likelihood against a score_sde-style reference (scipy solve_ivp RK45 on the flattened float64
   state [x, logp], the float32 model called inside the right-hand side through a numpy round trip,
   exact divergence by one autograd pass per dimension). Equal accuracy: both are calibrated against a
   tight RK4 reference, and each runs at the cheapest setting of a short list whose max abs error over
   the points is <= --target nats. Target: >= 3x faster.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from threadpoolctl import threadpool_limits

from scorefast.likelihood import log_likelihood
from scorefast.nets import TimeMLP, UNet, make_model
from scorefast.objective import Objective
from scorefast.sde import VPSDE, make_sde
from scorefast.training.hooks import Checkpointer, MetricsLog, PeriodicMetric, Progress, Snapshots
from scorefast.training.loop import Budget, RandomBatches, TrainState, fit
from scorefast.training.optim import EMA, Optimiser

Tensor = torch.Tensor


def summary(values: list[float], fmt: str = "{:.3f}") -> str:
    """median [min, max]"""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def timed(fn: Callable[..., object], *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


# -- 1. training-step overhead ----------------------------------------------------------------------

def library_loop(sde: VPSDE, shape: tuple[int, ...], data: Tensor, batch: int, out: Path) -> Callable[[int], None]:
    """``run(k)``: k more steps of the real loop, ``fit``, with the hooks of a training run. Each chunk is a
    call of ``fit`` whose last step is final, so the hooks are built as on a non-writing rank (they run,
    but write no file at every chunk's end; a run's checkpoint every 500 steps is I/O, not loop overhead)."""
    torch.manual_seed(0)
    model = make_model(sde, shape)
    state = TrainState(model, EMA(model, 0.999))
    optimiser = Optimiser(model.parameters(), lr=1e-4, grad_clip=1.0)
    objective = Objective(model, sde)
    batches = RandomBatches(data, batch)
    rows: list[dict] = []
    hooks = [PeriodicMetric(10**9, lambda: None), Snapshots(lambda s: out / f"snap-{s}.pt", 0, writer=False),
             Checkpointer(out / "net.pt", 10**9, lambda done: state.state_dict(), lambda s: False, writer=False),
             MetricsLog(rows.append, 10**9, 0, writer=False), Progress(None, "bench", enabled=False)]

    def run(k: int) -> None:
        fit(state, objective, batches, optimiser, Budget(steps=state.step + k), hooks)
    return run


def bare_loop(sde: VPSDE, shape: tuple[int, ...], data: Tensor, batch: int) -> Callable[[int], None]:
    """The same k steps written out: a random batch, t ~ U[eps, T], x_t = alpha x0 + sigma z, mean (z -
    eps_net)^2, Adam with gradient clipping, and the EMA update with its warm-up."""
    torch.manual_seed(0)
    net = UNet(shape[0], mults=(1, 2)) if len(shape) == 3 else TimeMLP(shape[0])
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    b0, b1, eps, T = sde.b0, sde.b1, sde.eps, sde.T
    view = (-1,) + (1,) * len(shape)
    step = 0

    def run(k: int) -> None:
        nonlocal step
        for _ in range(k):
            x = data[torch.randint(0, data.shape[0], (batch,))]
            t = eps + (T - eps) * torch.rand(batch)
            z = torch.randn_like(x)
            ib = b0 * t + 0.5 * (b1 - b0) * t**2
            xt = torch.exp(-0.5 * ib).view(view) * x + (-torch.expm1(-ib)).sqrt().view(view) * z
            loss = (z - net(xt, t)).pow(2).flatten(1).mean(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            with torch.no_grad():
                torch._foreach_lerp_(ema, list(net.parameters()), 1 - min(0.999, (1 + step) / (10 + step)))
            loss.item()
    return run


def training_overhead(repeats: int, budget_s: float = 1.0) -> list[str]:
    """Each repeat alternates chunks of steps of the two variants for about budget_s each and keeps the
    median step time of each: load from other processes lands on both alike, and bursts drop out."""
    sde = make_sde("vp")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, batch, chunk in [("MLP 2-D", (2,), 512, 20), ("U-Net 8x8", (1, 8, 8), 128, 2)]:
            data = torch.randn(4096, *shape)
            loops = {"library": library_loop(sde, shape, data, batch, Path(tmp)),
                     "bare": bare_loop(sde, shape, data, batch)}
            for run in loops.values():  # warm-up
                run(chunk)
            n = max(8, int(budget_s / (timed(loops["bare"], chunk)[0])))
            times: dict[str, list[float]] = {"library": [], "bare": []}
            for r in range(repeats):
                per_step: dict[str, list[float]] = {"library": [], "bare": []}
                for i in range(n):
                    for key in (("library", "bare") if (r + i) % 2 == 0 else ("bare", "library")):
                        per_step[key].append(timed(loops[key], chunk)[0] / chunk)
                for key, values in per_step.items():
                    times[key].append(statistics.median(values) * 1e3)
            ratios = [a / b for a, b in zip(times["library"], times["bare"])]
            rows.append(f"| {name} batch {batch} | {n} x {chunk} | {summary(times['library'], '{:.2f}')} | "
                        f"{summary(times['bare'], '{:.2f}')} | {summary(ratios)} |")
    return rows


# -- 2. PF-ODE NLL at equal accuracy ---------------------------------------------------------------

def toy_data(n: int, generator: torch.Generator) -> Tensor:
    """Four Gaussian blobs (std 0.3) at distance 2 from the origin."""
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    return centres[torch.randint(0, 4, (n,), generator=generator)] + 0.3 * torch.randn(n, 2, generator=generator)


def trained_model(sde: VPSDE, steps: int) -> torch.nn.Module:
    """A small TimeMLP (64 wide, 2 hidden layers) after a few hundred DSM steps, frozen."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = make_model(sde, (2,), width=64, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    objective = Objective(model, sde)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        objective(toy_data(512, g)).mean().backward()
        opt.step()
    return model.eval().requires_grad_(False)


def scipy_log_likelihood(model: torch.nn.Module, sde: VPSDE, x: Tensor, rtol: float) -> tuple[Tensor, int]:
    """The score_sde recipe: RK45 on the flat float64 state [x, logp], the model in float32 inside."""
    n, d = x.shape
    nfe = 0

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(y[: n * d].reshape(n, d)).float().requires_grad_(True)
        tv = torch.full((n,), t)
        with torch.enable_grad():
            s = model(xt, tv)
            div = sum(torch.autograd.grad(s[:, i].sum(), xt, retain_graph=i < d - 1)[0][:, i] for i in range(d))
        beta = sde.b0 + (sde.b1 - sde.b0) * t
        dx = -0.5 * beta * (xt.detach() + s.detach())
        dlogp = -0.5 * beta * d - 0.5 * beta * div
        return np.concatenate([dx.double().numpy().ravel(), dlogp.double().numpy()])

    y0 = np.concatenate([x.double().numpy().ravel(), np.zeros(n)])
    sol = solve_ivp(rhs, (sde.eps, sde.T), y0, method="RK45", rtol=rtol, atol=rtol)
    y = torch.from_numpy(sol.y[:, -1])
    return sde.prior_logp(y[: n * d].view(n, d)) + y[n * d:], nfe


class Counted(torch.nn.Module):
    """Counts score evaluations (one per right-hand side)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.nfe = model, 0

    def forward(self, x, t):
        self.nfe += 1
        return self.model(x, t)


def nll_at_equal_accuracy(repeats: int, n_points: int, target: float, train_steps: int) -> list[str]:
    sde = make_sde("vp")
    model = trained_model(sde, train_steps)
    x = toy_data(n_points, torch.Generator().manual_seed(1))
    counted = Counted(model)

    def ours(setting):
        method, value = setting
        counted.nfe = 0
        if method == "rk4":
            lp = log_likelihood(counted, sde, x, steps=value)
        else:
            lp = log_likelihood(counted, sde, x, method=method, rtol=value, atol=value)
        return lp.double(), counted.nfe

    # ordered by cost: the first setting that reaches the target is the one timed
    candidates = {
        "scorefast": [("rk4", 220), ("rk4", 250), ("rk4", 300), ("dopri5", 3e-6), ("rk4", 400)],
        "scipy RK45": [("rtol", 3e-6), ("rtol", 2.2e-6), ("rtol", 1.5e-6), ("rtol", 1e-6), ("rtol", 3e-7)],
    }
    run = {"scorefast": ours, "scipy RK45": lambda s: scipy_log_likelihood(model, sde, x, s[1])}

    ref_steps = 500
    t_ref, (ref, _) = timed(ours, ("rk4", ref_steps))
    lines = [f"reference: scorefast rk4 {ref_steps} steps ({t_ref:.1f} s), mean NLL {float(-ref.mean()):.4f} nats; "
             f"RK4 error falls 16x per halving of h, so its own error is ~1/16 of rk4 250's", ""]

    chosen = {}
    lines += ["calibration (one run each, in order of cost until one reaches the target):", ""]
    lines += ["| method | setting | NFE | seconds | max abs error vs reference (nats) |", "|---|---|---|---|---|"]
    for name, settings in candidates.items():
        for setting in settings:
            dt, (lp, nfe) = timed(run[name], setting)
            err = float((lp - ref).abs().max())
            lines.append(f"| {name} | {setting[0]}={setting[1]:g} | {nfe} | {dt:.2f} | {err:.1e} |")
            if err <= target:
                chosen[name] = (setting, err, nfe)
                break
    if len(chosen) < 2:
        return lines + ["", f"no candidate of {sorted(set(candidates) - set(chosen))} reached {target:g} nats"]

    times: dict[str, list[float]] = {name: [] for name in chosen}
    for r in range(repeats):
        for name in (list(chosen) if r % 2 == 0 else list(chosen)[::-1]):
            setting = chosen[name][0]
            dt, _ = timed(run[name], setting)
            times[name].append(dt)
    ratios = [a / b for a, b in zip(times["scipy RK45"], times["scorefast"])]
    lines += ["", f"timed at the cheapest setting with max abs error <= {target:g} nats ({repeats} repeats, "
              "alternating order):", ""]
    lines += ["| method | setting | NFE | max abs error (nats) | seconds: median [min, max] |", "|---|---|---|---|---|"]
    for name, (setting, err, nfe) in chosen.items():
        lines.append(f"| {name} | {setting[0]}={setting[1]:g} | {nfe} | {err:.1e} | {summary(times[name], '{:.2f}')} |")
    lines += ["", f"speed-up scipy / scorefast: {summary(ratios, '{:.2f}')}x (target >= 3x)"]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 keeps timings stable on a shared machine)")
    parser.add_argument("--points", type=int, default=4000)
    parser.add_argument("--target", type=float, default=1e-3, help="max abs NLL error (nats) both must reach")
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # numpy's OpenBLAS pool too: left at its default, its threads spin after each RK45 step and slowed
    # the scipy reference's torch calls 2.7x per evaluation on a 2-core machine
    threadpool_limits(args.threads)
    print("$ " + shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"torch {torch.__version__}, {args.threads} thread(s) for torch and numpy's BLAS, {os.cpu_count()} cores, "
          f"repeats {args.repeats}\n")

    print("## 1. Training-step overhead (a repeat's median ms per step; over repeats: median [min, max])\n")
    print("| model | chunks x steps per variant and repeat | library (fit) | bare PyTorch | ratio library/bare |")
    print("|---|---|---|---|---|")
    for row in training_overhead(args.repeats):
        print(row, flush=True)
    print("\ntarget: ratio <= 1.05\n")

    print(f"## 2. PF-ODE NLL, {args.points} 2-D points, exact divergence, float32 TimeMLP 64x2 after "
          f"{args.train_steps} DSM steps\n")
    for line in nll_at_equal_accuracy(args.repeats, args.points, args.target, args.train_steps):
        print(line, flush=True)


if __name__ == "__main__":
    main()
