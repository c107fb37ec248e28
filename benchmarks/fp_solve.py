"""FP grid solve: 181 x 181 grid, 50 steps, against a naive per-step spsolve, and its error.

    .venv/bin/python benchmarks/fp_solve.py [--repeats 3] [--sde vp] [--grid 181] [--steps 50]

Times (wall and CPU seconds: median, min, max over --repeats) of ``solve_fp`` with solver='lu' and
'krylov' (default BDF2 time stepping), 'lu' with order=1 (backward Euler, the naive reference's
scheme), and a naive reference written here: the same backward-Euler Picard scheme (same initial
condition, coefficients, upwinding and edges), but every Picard iteration assembles its matrix from
scratch out of scipy.sparse kron / diags operators and calls spsolve (SuperLU, factorise + solve) with
no reuse. Then the speed-up ratios and the relative L2 error of the score against the closed-form
MixtureScore (over the grid points holding 99% of the mass, max and mean over the times). Data: 36
points of a 3-mode 2-D mixture. CPU time is reported because the machine may be shared: wall-clock
then overstates the cost.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from threadpoolctl import threadpool_limits

from scorefast.analytic import MixtureScore
from scorefast.methods import fokker_planck as fp
from scorefast.sde import make_sde


def mixture(n: int = 36, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    modes = torch.tensor([[-1.5, -1.0], [1.2, 1.0], [0.5, -1.5]], dtype=torch.float64)
    return modes[torch.randint(0, 3, (n,), generator=g)] + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def naive_solve(data: np.ndarray, sde, grid: int, steps: int, tol: float = 1e-6, max_picard: int = 10):
    """Backward Euler + Picard with a fresh kron/diags assembly and spsolve at every iteration."""
    h = fp.scott_bandwidth(data)
    t = np.linspace(sde.eps, sde.T, steps + 1)
    box = fp.default_box(data, sde, t, h)
    axes = [np.linspace(lo, hi, grid) for lo, hi in box]
    alpha, sigma = fp._marginals(sde, t)
    X = np.stack([g.reshape(-1) for g in np.meshgrid(*axes, indexing="ij")], 1)
    m = fp.log_kde(X, alpha[0] * data, np.sqrt(alpha[0] ** 2 * h**2 + sigma[0] ** 2))
    cs, phis, _ = fp._coefficients(sde, t, order=1)
    d, n = data.shape[1], grid**data.shape[1]
    score = [np.stack(np.gradient(m.reshape(grid, grid), *[a[1] - a[0] for a in axes]), -1)]
    for c, phi in zip(cs, phis):
        rhs = m - d * phi
        for _ in range(max_picard):
            A = sp.identity(n, format="csr")
            for k, a in enumerate(axes):
                dx = a[1] - a[0]
                one = np.ones(grid)
                d2 = sp.diags([one[:-1], -2 * one, one[:-1]], [-1, 0, 1], format="lil") / dx**2
                d2[0, :], d2[-1, :] = 0, 0
                fwd = sp.diags([-one, one[:-1]], [0, 1], format="lil") / dx
                fwd[-1, -2:] = [-1 / dx, 1 / dx]
                bwd = sp.diags([-one[:-1], one], [-1, 0], format="lil") / dx
                bwd[0, :2] = [-1 / dx, 1 / dx]
                cen = (fwd + bwd) / 2
                cen[0, :], cen[-1, :] = fwd[0, :], bwd[-1, :]
                ops = [sp.identity(grid)] * d
                lift = [sp.kron(*(ops[:k] + [op] + ops[k + 1:])) for op in (d2, fwd, bwd, cen)]
                s = np.gradient(m.reshape(grid, grid), dx, axis=k).ravel()
                b = c * s - phi * X[:, k]
                up = np.abs(b) * dx > 2 * c
                A = A - c * lift[0] - sp.diags(np.where(up, 0, b)) @ lift[3] \
                    - sp.diags(np.where(up & (b > 0), b, 0)) @ lift[1] \
                    - sp.diags(np.where(up & (b < 0), b, 0)) @ lift[2]
            m_new = spla.spsolve(A.tocsc(), rhs)
            change = np.linalg.norm(m_new - m) / np.linalg.norm(m_new)
            m = m_new
            if change <= tol:
                break
        score.append(np.stack(np.gradient(m.reshape(grid, grid), *[a[1] - a[0] for a in axes]), -1))
    return axes, t, np.stack(score)


def score_error(axes, t, score, sde, data, bandwidth) -> tuple[float, float]:
    ref = MixtureScore(sde, data, bandwidth)
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
    sde, data = make_sde(args.sde), mixture()
    x = data.numpy()
    print(f"{args.grid} x {args.grid} grid, {args.steps} steps, SDE {args.sde}, {len(x)} data points, "
          f"{args.repeats} repeats\n")
    rows = {}
    for label, kw in [("lu (BDF2, default)", {"solver": "lu"}), ("krylov (BDF2)", {"solver": "krylov"}),
                      ("lu, backward Euler", {"solver": "lu", "order": 1})]:
        stats: dict = {}
        walls, cpus, sol = timed(lambda kw=kw, stats=stats: fp.solve_fp(
            data, sde, grid=args.grid, steps=args.steps, progress=False, stats=stats, **kw), args.repeats)
        err = score_error(sol.axes, sol.t, sol.score, sde, data, sol.bandwidth)
        rows[label] = (walls, cpus, err, f"{stats['iterations']} iterations, {stats['factorizations']} factorisations")
    with threadpool_limits(limits=1, user_api="blas"):
        walls, cpus, (axes, t, score) = timed(lambda: naive_solve(x, sde, args.grid, args.steps), args.repeats)
    rows["naive spsolve (backward Euler)"] = (walls, cpus, score_error(axes, t, score, sde, data,
                                                                        fp.scott_bandwidth(x)), "")
    for label, (walls, cpus, (emax, emean), note) in rows.items():
        print(f"{label:32s} wall {fmt(walls)}   cpu {fmt(cpus)}   score error max {100 * emax:.2f}% "
              f"mean {100 * emean:.2f}%   {note}")
    naive_w, naive_c = (statistics.median(v) for v in rows["naive spsolve (backward Euler)"][:2])
    print()
    for label in list(rows)[:3]:
        w, c = (statistics.median(v) for v in rows[label][:2])
        print(f"speed-up of {label:22s} over the naive reference: {naive_w / w:5.1f}x wall, {naive_c / c:5.1f}x cpu")


if __name__ == "__main__":
    main()
