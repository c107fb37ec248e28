"""The log-density Fokker-Planck equation on a tensor grid (score embedding, docs/methods.md section 1).

With m = log p_t and the engine's linear drift f(x, t) = f(t) x (div f = d f(t)),

    m_t = -d f - f x . grad m + g^2/2 (Lap m + |grad m|^2),

and the score is grad m. The scheme (docs/methods.md section 1.2) is implicit in time and keeps the
quadratic term: each step solves the nonlinear equations

    m^n - [c Lap_h m^n + H(x, D_h m^n)] = rhs - d phi,    H(x, p) = sum_k c p_k^2 - phi x_k p_k,

by Newton's method. order=1 is backward Euler (rhs = m^(n-1), c = int g^2/2 dt, phi = int f dt =
log(alpha_n/alpha_(n-1)) over the step: exact step integrals of the coefficients, so that for f = 0
it is backward Euler in the variance sigma_t^2). order=2 (the default) is BDF2 (variable steps):
c, phi scaled by 2/3 dt, rhs = (4 m^(n-1) - m^(n-2)) / 3 for equal steps. Backward Euler's relative
score error in the late, self-similar phase is about dt g^2 / sigma_t^2; BDF2 brings it below 1 % at
the same cost (see ``time_coefficients``).

Space: central differences (2d+1-point stencil) where they keep the Jacobian an M-matrix (non-positive
off-diagonals: no new extrema), i.e. where the characteristic speed H' = 2 c s - phi x per axis has
|H'| dx <= 2c; Godunov's numerical Hamiltonian (upwind, monotone) at the nodes that break it. Box
edges use linear extrapolation (a ghost node m_(-1) = 2 m_0 - m_1), which makes every edge difference
one-sided; at an inflow edge the normal term is dropped. The initial condition at t = eps is the log
of the data's Gaussian KDE diffused in closed form to eps (again a Gaussian KDE), computed with
log-sum-exp; m is stored, never p.

Newton's corrections use a SuperLU factor of a recent Jacobian (``solver='lu'``, the chord method) or
BiCGSTAB preconditioned by one (``solver='krylov'``), refactored when the contraction slows; a step
that still fails is redone as two half-steps. Only the values of a fixed sparsity pattern are
refilled, and BLAS runs on one thread (its threads only spin on these vector sizes); see
``_Newton``. ``solve_fp`` is the entry point: data -> KDE -> grid -> ``FPSolution``.

``paper_matrix`` / ``paper_image_score`` reproduce the published construction (section 1.3),
defects included, for comparison only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ..checkpoint import atomic_write
from ..errors import UserError
from ..sde import SDE

Tensor = torch.Tensor

MAX_DIM = 3
BOX_SIGMAS = 4.0
SOLVERS = ("lu", "krylov")
REFRESH_RATE = 0.5
REFRESH_AFTER = 5
GIVE_UP_RATE = 0.5
MAX_HALVINGS = 4
KRYLOV_RTOL = 1e-2
PIVOT_THRESH = 0.0
KRYLOV_MAXITER = 20
_KEYS = ("axes", "t", "alpha", "sigma", "bandwidth", "logp", "score")


# --------------------------------------------------------------------------------------------------
# the solution object


@dataclass
class FPSolution:
    """log p_t and its score on a tensor grid ('ij' order) at times t (N,).

    ``logp`` is (N, G, ..., G), ``score`` is (N, G, ..., G, d); ``alpha``/``sigma`` are the SDE's
    marginal coefficients at ``t`` and ``bandwidth`` the KDE bandwidth of the t = 0 density.
    """

    axes: list[np.ndarray]
    t: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    bandwidth: float
    logp: np.ndarray
    score: np.ndarray
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return len(self.axes)

    def score_at(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The grid score at (x, t): multilinear in space, linear in time, clamped to the box and to
        [t[0], t[-1]]. x is (B, d), t a scalar or (B,); the result has x's shape, dtype and device.
        Usable as a ``ScoreRegressionLoss`` target."""
        d = self.dim
        if x.ndim != 2 or x.shape[1] != d:
            raise UserError(f"score_at needs points of shape (B, {d}), got {tuple(x.shape)}")
        key = str(x.device)
        if key not in self._cache:
            flat = torch.as_tensor(self.score.reshape(-1, d), device=x.device)
            lo = torch.tensor([a[0] for a in self.axes], dtype=torch.float64, device=x.device)
            step = torch.tensor([a[1] - a[0] for a in self.axes], dtype=torch.float64, device=x.device)
            self._cache[key] = (flat, lo, step, torch.as_tensor(self.t, device=x.device))
        flat, lo, step, tt = self._cache[key]
        G, N = len(self.axes[0]), len(self.t)
        xb = x.detach().to(torch.float64)
        tb = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        u = ((xb - lo) / step).clamp(0.0, G - 1.0)
        i0 = u.floor().clamp(max=G - 2).long()
        w = u - i0
        tc = tb.clamp(float(self.t[0]), float(self.t[-1]))  # the ends from the host: no device sync per call
        n0 = (torch.searchsorted(tt, tc, right=True) - 1).clamp(0, N - 2)
        wt = ((tc - tt[n0]) / (tt[n0 + 1] - tt[n0])).clamp(0.0, 1.0)
        strides = [G ** (d - 1 - k) for k in range(d)]
        out = torch.zeros(x.shape[0], d, dtype=torch.float64, device=x.device)
        for corner in range(2 ** (d + 1)):
            bits = [(corner >> k) & 1 for k in range(d + 1)]
            idx = (n0 + bits[d]) * G**d
            weight = wt if bits[d] else 1.0 - wt
            for k in range(d):
                idx = idx + (i0[:, k] + bits[k]) * strides[k]
                weight = weight * (w[:, k] if bits[k] else 1.0 - w[:, k])
            out += weight[:, None] * flat[idx]
        return out.to(x.dtype)

    def save(self, path: str | Path) -> None:
        """Write an npz with keys axes (d, G), t, alpha, sigma, bandwidth, logp, score, atomically
        (a temporary file in the same folder, then ``os.replace``)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise UserError(f"cannot save the FP solution: folder {path.parent} does not exist")
        atomic_write(path, lambda fh: np.savez(fh, axes=np.stack(self.axes), t=self.t, alpha=self.alpha,
                                               sigma=self.sigma, bandwidth=np.float64(self.bandwidth),
                                               logp=self.logp, score=self.score))

    @classmethod
    def load(cls, path: str | Path) -> FPSolution:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no FP solution at {path}")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise UserError(f"{path} is not an FP solution: missing {', '.join(missing)}")
            return cls(axes=list(z["axes"]), t=z["t"], alpha=z["alpha"], sigma=z["sigma"],
                       bandwidth=float(z["bandwidth"]), logp=z["logp"], score=z["score"])


# --------------------------------------------------------------------------------------------------
# initial condition, bandwidth, box


def scott_bandwidth(data: np.ndarray) -> float:
    """Isotropic Scott's rule: n^(-1/(d+4)) times the root-mean per-dimension standard deviation."""
    n, d = data.shape
    spread = math.sqrt(float(np.mean(np.var(data, axis=0, ddof=1)))) if n > 1 else 0.0
    if not spread > 0:
        raise UserError("Scott's rule needs at least two distinct data points; give a bandwidth")
    return n ** (-1.0 / (d + 4)) * spread


def log_kde(points: np.ndarray, centres: np.ndarray, bandwidth: float, chunk: int = 2**22) -> np.ndarray:
    """log (1/N) sum_i N(x; c_i, h^2 I) at points (P, d), by log-sum-exp in chunks of points."""
    x = torch.as_tensor(points, dtype=torch.float64)
    c = torch.as_tensor(centres, dtype=torch.float64)
    n, d = c.shape
    out = torch.empty(x.shape[0], dtype=torch.float64)
    rows = max(1, chunk // n)
    for i in range(0, x.shape[0], rows):
        sq = torch.cdist(x[i:i + rows], c, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        out[i:i + rows] = torch.logsumexp(-0.5 * sq / bandwidth**2, dim=1)
    return (out - math.log(n) - 0.5 * d * math.log(2 * math.pi * bandwidth**2)).numpy()


def marginals(sde: SDE, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tt = torch.as_tensor(t, dtype=torch.float64)
    return sde.alpha(tt).numpy(), sde.sigma(tt).numpy()


def default_box(data: np.ndarray, sde: SDE, t: np.ndarray, bandwidth: float,
                sigmas: float = BOX_SIGMAS) -> np.ndarray:
    """(d, 2) box holding alpha_t [data range] +/- ``sigmas`` kernel stds at every time of ``t``."""
    a, s = marginals(sde, t)
    spread = sigmas * np.sqrt(a**2 * bandwidth**2 + s**2)
    lo, hi = data.min(0), data.max(0)
    return np.stack([np.min(a[:, None] * lo - spread[:, None], 0), np.max(a[:, None] * hi + spread[:, None], 0)], 1)


# --------------------------------------------------------------------------------------------------
# the sound scheme


def time_coefficients(sde: SDE, t: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step n = 1..N-1: (c_n, phi_n, w_n) for  m^n - [c Lap m^n + H(x, D m^n)] = rhs_n - d phi,
    H(x, p) = sum_k c p_k^2 - phi x_k p_k.

    Backward Euler (order 1, and the first step of order 2) uses the step integrals
    c = int g^2/2 dt (8-point Gauss-Legendre) and phi = int f dt = log(alpha_n / alpha_(n-1)), so that
    for f = 0 it is exactly backward Euler in the variance sigma_t^2. BDF2 (variable step,
    omega = dt_n / dt_(n-1)) uses end-point values scaled by dt_n (1 + omega) / (1 + 2 omega), and
    rhs = (1 - w) m^(n-1) + w m^(n-2) with w = -omega^2 / (1 + 2 omega) (w = 0 for backward Euler).
    """
    nodes, weights = np.polynomial.legendre.leggauss(8)
    a, b = t[:-1, None], t[1:, None]
    tq = torch.as_tensor(0.5 * (b - a) * nodes + 0.5 * (a + b))
    c = 0.25 * (b - a)[:, 0] * (sde.g2(tq).numpy() @ weights)
    alpha, _ = marginals(sde, t)
    phi = np.diff(np.log(alpha))
    w = np.zeros(len(t) - 1)
    if order == 2 and len(t) > 2:
        dt = np.diff(t)
        om = dt[1:] / dt[:-1]
        scale = dt[1:] * (1 + om) / (1 + 2 * om)
        te = torch.as_tensor(t[2:])
        c[1:] = 0.5 * scale * sde.g2(te).numpy()
        phi[1:] = scale * sde.drift_coef(te).numpy()
        w[1:] = -(om**2) / (1 + 2 * om)
    return c, phi, w


class Stencil:
    """The discrete operators of the scheme on a tensor grid, matrix-free and as CSC matrices of one
    fixed (2d+1)-point pattern.

    Per axis, fd and bd are the forward and backward differences (m_+ - m)/dx, (m - m_-)/dx; at the box
    edges the ghost node m_(-1) = 2 m_0 - m_1 makes both the one-sided inner difference and the
    Laplacian 0. H is evaluated per axis at q = wf fd + wb bd (+ the minimiser p* of H): central
    (wf = wb = 1/2) where the switches say so, Godunov's choice elsewhere (see ``switches``).
    """

    def __init__(self, axes: list[np.ndarray]):
        self.d = d = len(axes)
        self.G = G = len(axes[0])
        self.n = n = G**d
        self.h = [float(a[1] - a[0]) for a in axes]
        self.shape = (G,) * d
        idx = np.arange(n)
        multi = np.unravel_index(idx, self.shape)
        self.coords = [axes[k][multi[k]] for k in range(d)]
        first = [multi[k] == 0 for k in range(d)]
        last = [multi[k] == G - 1 for k in range(d)]
        self.first = first
        self.inner = [(~first[k] & ~last[k]).astype(np.float64) for k in range(d)]
        self.central = [(np.where(last[k], 0.0, np.where(first[k], 1.0, 0.5)),
                         np.where(first[k], 0.0, np.where(last[k], 1.0, 0.5))) for k in range(d)]
        rows, cols = [idx], [idx]
        self.plus, self.minus = [], []
        for k in range(d):
            stride = G ** (d - 1 - k)
            p, m = np.flatnonzero(~last[k]), np.flatnonzero(~first[k])
            self.plus.append(p)
            self.minus.append(m)
            rows += [p, m]
            cols += [p + stride, m - stride]
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        self.order = np.lexsort((rows, cols))
        self.indices = rows[self.order].astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))]).astype(np.int32)

    def differences(self, m: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per axis (fd, bd), each 0 where its neighbour is missing."""
        grid = m.reshape(self.shape)
        out = []
        for k, h in enumerate(self.h):
            fd = np.zeros(self.shape)
            bd = np.zeros(self.shape)
            lo = (slice(None),) * k + (slice(0, -1),)
            hi = (slice(None),) * k + (slice(1, None),)
            np.subtract(grid[hi], grid[lo], out=fd[lo])
            fd *= 1 / h
            bd[hi] = fd[lo]
            out.append((fd.reshape(-1), bd.reshape(-1)))
        return out

    def gradient(self, m: np.ndarray) -> np.ndarray:
        """Central differences inside, one-sided at the box edges (np.gradient, edge_order=1): (n, d)."""
        return np.stack([wf * fd + wb * bd for (fd, bd), (wf, wb) in zip(self.differences(m), self.central)], 1)

    def switches(self, s: np.ndarray, c: float, phi: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per axis, from a predicted gradient s: the inner nodes that take Godunov's H, those where the
        characteristic speed H'(s) = 2 c s - phi x has |H'| dx > 2c (where the central Jacobian would not
        be an M-matrix), and the mask of edge nodes that keep their normal term: those where H' points out
        of the box (at an inflow edge the ghost node would make it a downwind difference)."""
        out = []
        for k in range(self.d):
            u = 2 * c * s[:, k] - phi * self.coords[k]
            inner = self.inner[k] > 0
            inflow = ~inner & np.where(self.first[k], u < 0, u > 0)
            out.append((np.flatnonzero(inner & (np.abs(u) * self.h[k] > 2 * c)), (~inflow).astype(np.float64)))
        return out

    def terms(self, m: np.ndarray, c: float, phi: float, switches):
        """Per axis: fd, bd, the weights (wf, wb) of q, H(q) and H'(q) (both 0 at inflow edges).

        Godunov for m_t = H(p), H convex: max(H(bd), H(fd)) if bd <= fd, else min of H over [fd, bd],
        which is H at p* = phi x / (2c) when p* lies inside (then H'(q) = 0)."""
        for k, ((fd, bd), (wf, wb), (god, keep)) in enumerate(zip(self.differences(m), self.central, switches)):
            x = self.coords[k]
            q = wf * fd + wb * bd
            wf, wb = wf.copy(), wb.copy()
            if god.size:
                a, b, xg = bd[god], fd[god], x[god]
                ha, hb = c * a**2 - phi * xg * a, c * b**2 - phi * xg * b
                star = phi * xg / (2 * c)
                take_b = np.where(a <= b, hb >= ha, star <= b)
                take_a = ~take_b & np.where(a <= b, True, star >= a)
                wf[god], wb[god] = take_b, take_a
                q[god] = np.where(take_b, b, np.where(take_a, a, star))
            yield fd, bd, wf, wb, keep * (c * q**2 - phi * x * q), keep * (2 * c * q - phi * x)

    def residual(self, m: np.ndarray, rhs: np.ndarray, c: float, phi: float, switches) -> np.ndarray:
        """rhs - m + sum_k [c Lap_k m + H_k(q_k)]: minus the scheme's residual at m."""
        out = rhs - m
        for k, (fd, bd, _, _, hq, _) in enumerate(self.terms(m, c, phi, switches)):
            out += (c / self.h[k]) * self.inner[k] * (fd - bd) + hq
        return out

    def jacobian(self, m: np.ndarray, c: float, phi: float, switches) -> sp.csc_matrix:
        """d/dm of the scheme's residual, I - sum_k [c Lap_k + diag(H'(q_k)) (wf D_fwd + wb D_bwd)]: an
        M-matrix (non-positive off-diagonals, rows summing to >= 1) where the switches hold."""
        diag = np.ones(self.n)
        plus, minus = [], []
        for k, (_, _, wf, wb, _, dh) in enumerate(self.terms(m, c, phi, switches)):
            h, lap = self.h[k], c * self.inner[k] / self.h[k] ** 2
            uf, ub = dh * wf / h, dh * wb / h
            diag += 2 * lap + uf - ub
            plus.append(-lap - uf)
            minus.append(-lap + ub)
        vals = np.concatenate([diag] + [v for k in range(self.d) for v in (plus[k][self.plus[k]],
                                                                            minus[k][self.minus[k]])])
        return sp.csc_matrix((vals[self.order], self.indices, self.indptr), shape=(self.n, self.n))


def extrapolate(ts: np.ndarray, ms: list[np.ndarray], t: float) -> np.ndarray:
    """Lagrange polynomial through (ts, ms) evaluated at t: the Newton predictor."""
    weights = [math.prod((t - tj) / (ti - tj) for j, tj in enumerate(ts) if j != i) for i, ti in enumerate(ts)]
    return sum(w * m for w, m in zip(weights, ms))


class _Newton:
    """Implicit steps of the scheme by Newton's method with a reused factorisation of the Jacobian.

    'lu': m <- m + P^-1 r(m) (the chord method) with P a SuperLU factor of the Jacobian at an earlier
    iterate, possibly of an earlier step; with P fresh this is Newton's method. 'krylov': each Newton
    correction J(m) dm = r(m) is solved to ``KRYLOV_RTOL`` by BiCGSTAB preconditioned with P. P is
    refactored at the current iterate when the contraction rate |dm_k| / |dm_(k-1)| exceeds
    ``REFRESH_RATE``. A step is converged when |dm| (max over the grid, in nats: an absolute error of
    log p is a relative error of p) or its geometric tail |dm| rate / (1 - rate) is <= tol. A step that
    diverges, stays slow with a fresh P or uses up ``max_iter`` iterations is redone as two half-steps
    (at most ``MAX_HALVINGS`` deep); only then is it counted unconverged.
    """

    def __init__(self, st: Stencil, sde: SDE, order: int, solver: str, tol: float, max_iter: int):
        self.st, self.sde, self.order, self.solver, self.tol, self.max_iter = st, sde, order, solver, tol, max_iter
        self.P = None
        self.counts = {"iterations": 0, "factorizations": 0, "halvings": 0, "unconverged": 0}

    def refactor(self, J: sp.csc_matrix) -> None:
        self.P = spla.splu(J, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=PIVOT_THRESH)
        self.counts["factorizations"] += 1

    def correction(self, m: np.ndarray, r: np.ndarray, c: float, phi: float, switches) -> np.ndarray:
        if self.solver == "lu":
            return self.P.solve(r)
        J = self.st.jacobian(m, c, phi, switches)
        dm, info = spla.bicgstab(J, r, rtol=KRYLOV_RTOL, maxiter=KRYLOV_MAXITER,
                                 M=spla.LinearOperator(J.shape, self.P.solve))
        if info != 0:
            self.refactor(J)
            dm = self.P.solve(r)
        return dm

    def step(self, ts: list[float], ms: list[np.ndarray], t_new: float) -> tuple[np.ndarray, bool]:
        """One BDF2 (backward Euler without two past levels or for order 1) step from (ts, ms) to t_new."""
        past = 2 if self.order == 2 else 1
        c, phi, w = (v[-1] for v in time_coefficients(self.sde, np.array(ts[-past:] + [t_new]), self.order))
        rhs = (1 - w) * ms[-1] + (w * ms[-2] if w else 0.0) - self.st.d * phi
        m = extrapolate(ts[-3:], ms[-3:], t_new)
        switches = self.st.switches(self.st.gradient(m), c, phi)
        last, fresh_at = math.inf, None
        for k in range(self.max_iter):
            if self.P is None:
                self.refactor(self.st.jacobian(m, c, phi, switches))
                last, fresh_at = math.inf, k
            dm = self.correction(m, self.st.residual(m, rhs, c, phi, switches), c, phi, switches)
            change = float(np.max(np.abs(dm)))
            m = m + dm
            self.counts["iterations"] += 1
            if not math.isfinite(change):
                break
            rate = change / last if last < math.inf else math.nan
            if change <= self.tol or (rate < 1 and change * rate / (1 - rate) <= self.tol):
                if k + 1 > REFRESH_AFTER and fresh_at is None:
                    self.P = None
                return m, True
            if rate > REFRESH_RATE:
                if fresh_at is not None and rate > GIVE_UP_RATE:
                    break
                self.P = None
            last = change
        self.P = None
        return m, False

    def advance(self, ts: list[float], ms: list[np.ndarray], t_new: float, depth: int = 0) -> np.ndarray:
        """log p at t_new from the past levels (ts, ms), by one step or, where Newton fails, two half-steps."""
        m, ok = self.step(ts, ms, t_new)
        if ok or depth == MAX_HALVINGS:
            self.counts["unconverged"] += not ok
            return m
        self.counts["halvings"] += 1
        mid = 0.5 * (ts[-1] + t_new)
        m_mid = self.advance(ts, ms, mid, depth + 1)
        return self.advance(ts[-2:] + [mid], ms[-2:] + [m_mid], t_new, depth + 1)


def evolve_logp(m0: np.ndarray, axes: list[np.ndarray], sde: SDE, t: np.ndarray, tol: float = 1e-6,
                max_picard: int = 10, solver: str = "lu", order: int = 2, progress: bool = True,
                stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Advance a log-density m0 (G, ..., G) given at t[0] through the increasing times t.

    Returns logp (N, G, ..., G) and score (N, G, ..., G, d). ``order`` 1 is backward Euler (docs/methods.md
    1.2), 2 is BDF2 (second order in time; the first step is backward Euler). Each step solves the
    scheme's nonlinear equations by Newton's method (``_Newton``: at most ``max_picard`` iterations
    per attempt, to ``tol`` nats) from a quadratic extrapolation of the last steps, from which the
    central/Godunov switches are fixed for that step.

    A factorisation costs about 30 iterations on a 181^2 grid, but its fill grows as n^(4/3) in 3-D
    (31^3: ~4 s, 41^3: ~20 s here): 3-D grids beyond ~25^3 are slow with either solver.

    ``stats``, if given, receives the counts of iterations, factorisations, step halvings and
    unconverged steps.
    """
    from threadpoolctl import threadpool_limits

    if solver not in SOLVERS:
        raise UserError(f"unknown FP solver '{solver}'; choose one of {', '.join(SOLVERS)}")
    if order not in (1, 2):
        raise UserError(f"FP time order must be 1 (backward Euler) or 2 (BDF2), got {order}")
    st = Stencil(axes)
    t = [float(v) for v in t]
    N, d = len(t), st.d
    logp = np.empty((N, st.n))
    logp[0] = m0.reshape(-1)
    newton = _Newton(st, sde, order, solver, tol, max_picard)
    steps = range(1, N)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="FP solve", leave=False, disable=None)  # no bar off a terminal
    with threadpool_limits(limits=1, user_api="blas"):
        for n in steps:
            logp[n] = newton.advance(t[max(0, n - 3):n], list(logp[max(0, n - 3):n]), t[n])
            if not np.isfinite(logp[n]).all():
                raise UserError(f"the FP solve diverged at t = {t[n]:.3g}; use more time steps, a finer grid or "
                                "a larger bandwidth")
    score = np.stack([st.gradient(row) for row in logp])
    counts = newton.counts
    if stats is not None:
        stats.update(counts, steps=N - 1)
    if counts["unconverged"]:
        warnings.warn(f"FP solve: {counts['unconverged']} of {N - 1} steps did not reach tol={tol} nats in "
                      f"{max_picard} Newton iterations, even halved {MAX_HALVINGS} times", RuntimeWarning,
                      stacklevel=2)
    return logp.reshape((N,) + st.shape), score.reshape((N,) + st.shape + (d,))


def _estimate_bytes(G: int, d: int, N: int) -> int:
    """Output arrays N x G^d x (d+1) doubles, plus the matrix, its factor and work vectors.

    SuperLU fill per unknown measured here: 47 on 181^2; 233, 436, 708 on 21^3, 31^3, 41^3."""
    n = G**d
    fill = 3 * max(1.0, math.log2(n)) if d <= 2 else 0.5 * n ** (2 / 3)
    return int(N * n * (d + 1) * 8 + (2 * d + 1) * n * 12 * 2 + fill * n * 12 + 16 * n * 8)


def solve_fp(data: Tensor | np.ndarray, sde: SDE, grid: int = 181, steps: int = 50, bandwidth: float | None = None,
             box: np.ndarray | None = None, tol: float = 1e-6, max_picard: int = 10, solver: str = "lu",
             order: int = 2, progress: bool = True, max_bytes: float = 4e9, stats: dict | None = None) -> FPSolution:
    """Solve the log-density FP equation from the Gaussian KDE of ``data`` (N, d), d <= 3.

    Times: ``steps`` equal steps from sde.eps to sde.T (the KDE is advanced to eps in closed form).
    ``bandwidth`` defaults to Scott's rule; ``box`` (d, 2) defaults to ``default_box``.
    """
    x = data.detach().cpu().double().numpy() if isinstance(data, Tensor) else np.asarray(data, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise UserError(f"FP solve needs data of shape (N, d), got {tuple(x.shape)}")
    n_pts, d = x.shape
    if d > MAX_DIM:
        raise UserError(f"the FP grid solver takes d <= {MAX_DIM} dimensions, got d = {d}; "
                        "method 'empirical' (the closed-form score) works in any dimension")
    if not np.isfinite(x).all():
        raise UserError("FP solve: the data contain NaN or infinite values")
    if grid < 3 or steps < 1:
        raise UserError(f"FP solve needs grid >= 3 and steps >= 1, got grid={grid}, steps={steps}")
    if solver not in SOLVERS:
        raise UserError(f"unknown FP solver '{solver}'; choose one of {', '.join(SOLVERS)}")
    if bandwidth is not None and not (bandwidth > 0 and math.isfinite(bandwidth)):
        raise UserError(f"the KDE bandwidth must be > 0, got {bandwidth}")
    need = _estimate_bytes(grid, d, steps + 1)
    if need > max_bytes:
        raise UserError(f"an FP grid of {grid}^{d} points x {steps + 1} times needs about {need / 1e9:.1f} GB "
                        f"(limit {max_bytes / 1e9:.1f} GB); use a smaller grid or fewer steps")
    h = scott_bandwidth(x) if bandwidth is None else float(bandwidth)
    t = np.linspace(sde.eps, sde.T, steps + 1)
    if box is None:
        box = default_box(x, sde, t, h)
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (d, 2) or not np.all(box[:, 1] > box[:, 0]):
        raise UserError(f"box must be (d, 2) = ({d}, 2) rows of lo < hi, got {box.tolist()}")
    axes = [np.linspace(lo, hi, grid) for lo, hi in box]
    alpha, sigma = marginals(sde, t)
    width, dx = math.sqrt(alpha[0] ** 2 * h**2 + sigma[0] ** 2), float(np.max(np.diff(box, axis=1))) / (grid - 1)
    if width < dx:
        warnings.warn(f"FP grid spacing {dx:.3g} exceeds the initial kernel width {width:.3g}: the "
                      "early-time score will be poor (a large sigma_T needs a wide box); use a finer grid or a "
                      "smaller box", UserWarning, stacklevel=2)
    mesh = np.stack([g.reshape(-1) for g in np.meshgrid(*axes, indexing="ij")], 1)
    m0 = log_kde(mesh, alpha[0] * x, math.sqrt(alpha[0] ** 2 * h**2 + sigma[0] ** 2)).reshape((grid,) * d)
    logp, score = evolve_logp(m0, axes, sde, t, tol=tol, max_picard=max_picard, solver=solver, order=order,
                              progress=progress, stats=stats)
    return FPSolution(axes=axes, t=t, alpha=alpha, sigma=sigma, bandwidth=h, logp=logp, score=score)


# --------------------------------------------------------------------------------------------------
# the published construction (docs/methods.md 1.3), defects included


def paper_matrix(m: np.ndarray, c: float, dx: float = 1.0) -> sp.csc_matrix:
    """The published system matrix for an (H, W) log-density image m and c = dt g^2 / 2.

    A 5-point matrix on the row-major flattened image (offsets +/-1, +/-W, so the +/-1 diagonals wrap
    across rows), advection b = c s with s the 1-D central difference of m.ravel(). Relative to the
    consistent rows  -(c/dx^2 + b/2dx)  (upper)  and  -(c/dx^2 - b/2dx)  (lower),  the Laplacian sign
    is flipped on the upper diagonals and the advection sign on the lower ones, so a row sums to
    1 + 4c/dx^2 - 2b/dx and a constant m decays towards 0 instead of staying put.
    """
    H, W = m.shape
    n = H * W
    b = c * np.gradient(m.ravel(), dx)
    upper = c / dx**2 - 0.5 * b / dx
    lower = -(c / dx**2 + 0.5 * b / dx)
    diags = [np.full(n, 1 + 4 * c / dx**2), upper[:-1], upper[:-W], lower[1:], lower[W:]]
    return sp.diags(diags, [0, 1, W, -1, -W], shape=(n, n), format="csc")


def paper_image_score(image: np.ndarray, sde: SDE, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The published per-image 'score' of a (C, H, W) image with H = W: returns (t (n_steps+1,),
    score (n_steps+1, C, H, W)) on t = linspace(eps, T, n_steps+1).

    Reproduces the published behaviour, not a score: per channel, the domain is the pixel grid
    (dx = 1), m0 is the log of a Gaussian KDE (scipy, Scott) fitted to the pixel pairs (I[i,j], I[j,i])
    and evaluated at those pairs, each step solves ``paper_matrix`` (lagged at the previous step, no
    Picard iteration, c = dt g(t_n)^2 / 2; the drift f is ignored as in the published VE code), and the
    'score' is the 1-D central difference of the flattened m.
    """
    from scipy.stats import gaussian_kde

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[1] != image.shape[2]:
        raise UserError(f"the paper construction needs a square (C, H, W) image, got shape {image.shape}")
    C, H, W = image.shape
    t = np.linspace(sde.eps, sde.T, n_steps + 1)
    g2 = sde.g2(torch.as_tensor(t)).numpy()
    out = np.empty((n_steps + 1, C, H, W))
    for ch in range(C):
        img = image[ch]
        pairs = np.stack([img.ravel(), img.T.ravel()])
        try:
            m = gaussian_kde(pairs).logpdf(pairs).reshape(H, W)
        except np.linalg.LinAlgError as err:
            raise UserError(f"the paper KDE of channel {ch} is singular (constant or symmetric image)") from err
        out[0, ch] = np.gradient(m.ravel()).reshape(H, W)
        for n in range(1, n_steps + 1):
            m = spla.spsolve(paper_matrix(m, 0.5 * (t[n] - t[n - 1]) * g2[n]), m.ravel()).reshape(H, W)
            out[n, ch] = np.gradient(m.ravel()).reshape(H, W)
    return t, out
