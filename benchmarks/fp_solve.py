"""FP grid solve: the user's `scorefast fp` end to end against a naive per-step spsolve of the same scheme.

    .venv/bin/python benchmarks/fp_solve.py [--repeats 3] [--sde vp] [--grid 181] [--steps 50]

Two data sets: 36 points of a 3-mode 2-D mixture (Scott's bandwidth) and the off-centre, anisotropic
300-point sample of issue 14 (bandwidth 0.25). Per data set, times (wall and CPU seconds: median, min,
max over --repeats) of ``solve_fp`` with solver='lu' and 'krylov' (default BDF2 time stepping) and 'lu'
with order=1 (backward Euler), and of a naive reference: the same scheme (BDF2, the same residual and
Jacobian, the same initial condition), solved by Newton's method from the previous time level with a
fresh ``spsolve`` (SuperLU factorise + solve) at every iteration and no reuse, no predictor and no step
halving. Each row's score error is the relative L2 error against the closed-form diffused KDE
(MixtureScore) over the grid points holding 99% of the mass, max and mean over the times. On the
second data set `scorefast fp` is also run as a user runs it (a fresh process: start-up, KDE, solve,
the .npz and the picture), and the speed-up is the naive reference's solve alone over that whole run,
which flatters the reference. CPU time is reported because the machine may be shared.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as spla
import torch
from threadpoolctl import threadpool_limits

from scorefast.analytic import MixtureScore
from scorefast.methods import fokker_planck as fp
from scorefast.sde import make_sde


def mixture(n: int = 36, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    modes = torch.tensor([[-1.5, -1.0], [1.2, 1.0], [0.5, -1.5]], dtype=torch.float64)
    idx = torch.randint(0, 3, (n,), generator=g)
    return (modes[idx] + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)).numpy()


def anisotropic(n: int = 300, seed: int = 0) -> np.ndarray:
    """Off-centre (mean (3, -1)), stretched 2 : 0.3 and turned by 0.5 rad."""
    z = np.random.default_rng(seed).standard_normal((n, 2)) * [2.0, 0.3]
    c, s = math.cos(0.5), math.sin(0.5)
    return z @ np.array([[c, s], [-s, c]]) + [3.0, -1.0]


def naive_solve(data: np.ndarray, sde, grid: int, steps: int, bandwidth: float, tol: float = 1e-6,
                max_iter: int = 10) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, int]:
    """The default scheme by Newton's method with a fresh spsolve per iteration; returns the unconverged count."""
    t = np.linspace(sde.eps, sde.T, steps + 1)
    axes = [np.linspace(lo, hi, grid) for lo, hi in fp.default_box(data, sde, t, bandwidth)]
    alpha, sigma = fp.marginals(sde, t)
    st = fp.Stencil(axes)
    X = np.stack(st.coords, 1)
    ms = [fp.log_kde(X, alpha[0] * data, math.sqrt(alpha[0] ** 2 * bandwidth**2 + sigma[0] ** 2))]
    cs, phis, ws = fp.time_coefficients(sde, t, order=2)
    unconverged = 0
    for c, phi, w in zip(cs, phis, ws):
        rhs = (1 - w) * ms[-1] + (w * ms[-2] if w else 0.0) - st.d * phi
        m = ms[-1].copy()
        switches = st.switches(st.gradient(m), c, phi)
        for _ in range(max_iter):
            dm = spla.spsolve(st.jacobian(m, c, phi, switches), st.residual(m, rhs, c, phi, switches))
            m += dm
            if np.max(np.abs(dm)) <= tol:
                break
        else:
            unconverged += 1
        ms.append(m)
    return axes, t, np.stack([st.gradient(m) for m in ms]), unconverged


def score_error(axes, t, score, sde, data, bandwidth) -> tuple[float, float]:
    ref = MixtureScore(sde, torch.as_tensor(data), bandwidth)
    x = torch.as_tensor(np.stack([g.reshape(-1) for g in np.meshgrid(*axes, indexing="ij")], 1))
    errs = []
    for n, tn in enumerate(t):
        tt = torch.tensor(float(tn), dtype=torch.float64)
        logp, exact = ref.log_prob(x, tt).numpy(), ref(x, tt).numpy()
        p = np.exp(logp - logp.max())
        order = np.argsort(-p)
        region = order[: np.searchsorted(np.cumsum(p[order]) / p.sum(), 0.99) + 1]
        approx = score[n].reshape(-1, x.shape[1])[region]
        errs.append(np.linalg.norm(approx - exact[region]) / np.linalg.norm(exact[region]))
    return float(np.max(errs)), float(np.mean(errs))


def timed(fn, repeats: int):
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return walls, cpus, out


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.2f} s  (min {min(xs):.2f}, max {max(xs):.2f})"


def user_run(data: np.ndarray, args, repeats: int) -> list[float]:
    """Wall seconds of `scorefast fp` in a fresh process, as a user runs it."""
    exe = Path(sys.executable).with_name("scorefast")
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "data.npy", data.astype(np.float32))
        for i in range(repeats):
            cmd = [str(exe), "fp", "--data", str(Path(tmp) / "data.npy"), "--bandwidth", "0.25", "--grid",
                   str(args.grid), "--steps", str(args.steps), "--sde", args.sde, "--out", str(Path(tmp) / f"{i}.npz"),
                   "--quiet"]
            w0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - w0)
    return walls


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sde", default="vp")
    p.add_argument("--grid", type=int, default=181)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the KDE initial condition)")
    args = p.parse_args(argv)
    print("command:", shlex.join([sys.executable] + sys.argv))
    torch.set_num_threads(args.threads)
    sde = make_sde(args.sde)
    print(f"{args.grid} x {args.grid} grid, {args.steps} steps, SDE {args.sde}, {args.repeats} repeats")
    for name, x, h in [("3-mode mixture, 36 points, Scott's bandwidth", mixture(), None),
                       ("off-centre anisotropic, 300 points, bandwidth 0.25", anisotropic(), 0.25)]:
        h = fp.scott_bandwidth(x) if h is None else h
        print(f"\n{name}")
        rows = {}
        for label, kw in [("lu (BDF2, default)", {"solver": "lu"}), ("krylov (BDF2)", {"solver": "krylov"}),
                          ("lu, backward Euler", {"solver": "lu", "order": 1})]:
            stats: dict = {}
            walls, cpus, sol = timed(lambda kw=kw, stats=stats, x=x, h=h: fp.solve_fp(
                x, sde, grid=args.grid, steps=args.steps, bandwidth=h, progress=False, stats=stats, **kw),
                args.repeats)
            rows[label] = (walls, cpus, score_error(sol.axes, sol.t, sol.score, sde, x, h),
                           f"{stats['iterations']} iterations, {stats['factorizations']} factorisations, "
                           f"{stats['halvings']} halvings, {stats['unconverged']} unconverged")
        with threadpool_limits(limits=1, user_api="blas"):
            walls, cpus, (axes, t, score, bad) = timed(lambda x=x, h=h: naive_solve(x, sde, args.grid, args.steps, h),
                                                       args.repeats)
        naive = "naive spsolve (BDF2)"
        rows[naive] = (walls, cpus, score_error(axes, t, score, sde, x, h), f"{bad} unconverged steps")
        for label, (walls, cpus, (emax, emean), note) in rows.items():
            print(f"{label:32s} wall {fmt(walls)}   cpu {fmt(cpus)}   score error max {100 * emax:.2f}% "
                  f"mean {100 * emean:.2f}%   {note}")
        naive_w, naive_c = (statistics.median(v) for v in rows[naive][:2])
        for label in list(rows)[:3]:
            w, c = (statistics.median(v) for v in rows[label][:2])
            print(f"speed-up of {label:22s} over the naive reference: {naive_w / w:5.1f}x wall, "
                  f"{naive_c / c:5.1f}x cpu")
        if h == 0.25:
            walls = user_run(x, args, args.repeats)
            print(f"`scorefast fp` end to end (start-up, KDE, solve, .npz, picture): wall {fmt(walls)}; "
                  f"the naive solve alone over it: {naive_w / statistics.median(walls):.1f}x")


if __name__ == "__main__":
    main()
