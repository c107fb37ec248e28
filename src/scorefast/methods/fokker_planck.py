"""The log-density Fokker-Planck equation on a tensor grid (score embedding, METHODS.md section 1).

With m = log p_t and the engine's linear drift f(x, t) = f(t) x (div f = d f(t)),

    m_t = -d f - f x . grad m + g^2/2 (Lap m + |grad m|^2),

and the score is grad m. The scheme (section 1.2) is implicit in time with the quadratic term
linearised by lagging one factor, iterated to a fixed point (Picard):

    (I - [c (Lap_h + s^(k-1) . D_h) - phi x . D_h]) m^(k) = rhs - d phi,    s^(k-1) = D_h m^(k-1).

order=1 is backward Euler (rhs = m^(n-1), c = int g^2/2 dt, phi = int f dt = log(alpha_n/alpha_(n-1))
over the step: exact step integrals of the coefficients, so that for f = 0 it is backward Euler in
the variance sigma_t^2). order=2 (the default) is BDF2: the same matrices with c, phi scaled by
2/3 dt, rhs = (4 m^(n-1) - m^(n-2)) / 3. Backward Euler's relative score error in the late,
self-similar phase is about dt g^2 / sigma_t^2 (5% at T for the VE g = 5^t with 50 steps); BDF2
brings it below 1% at the same cost (see ``_coefficients``, ``evolve_logp``).

Space: central differences (2d+1-point stencil). The advection velocity per axis is
b = c s - phi x; central advection keeps the M-matrix property (non-positive off-diagonals, a
non-negative inverse: no new extrema) while |b| dx <= 2c, i.e. the cell Peclet criterion

    |s - 2 f x / g^2| dx <= 2        (|s| dx <= 2 when f = 0),

and the nodes that break it use first-order upwind differences instead. Box edges use linear
extrapolation (a ghost node m_(-1) = 2 m_0 - m_1, i.e. d^2 m / dn^2 = 0 there), which turns every
difference at the edge into the one-sided (m_1 - m_0)/dx. The initial condition at t = eps is the
log of the data's Gaussian KDE diffused in closed form to eps (again a Gaussian KDE), computed with
log-sum-exp; m is stored, never p.

The linear systems are sparse and solved with SuperLU (``solver='lu'``) or with BiCGSTAB
preconditioned by a SuperLU factor (``solver='krylov'``). Both only refill the values of a fixed
sparsity pattern, reuse a factorisation for as long as the Anderson-accelerated iteration keeps
converging, and limit BLAS to one thread (its threads only spin on these vector sizes); see
``evolve_logp``. ``solve_fp`` is the entry point: data -> KDE -> grid -> ``FPSolution``.

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
from tqdm.auto import tqdm

from ..checkpoint import atomic_write
from ..errors import UserError
from ..sde import SDE

Tensor = torch.Tensor

MAX_DIM = 3
BOX_SIGMAS = 4.0
SOLVERS = ("lu", "krylov")
STALL = 0.9
REFRESH_AFTER = (3, 5, 5)
STALE_C = 3.0
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


def _marginals(sde: SDE, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tt = torch.as_tensor(t, dtype=torch.float64)
    return sde.alpha(tt).numpy(), sde.sigma(tt).numpy()


def default_box(data: np.ndarray, sde: SDE, t: np.ndarray, bandwidth: float,
                sigmas: float = BOX_SIGMAS) -> np.ndarray:
    """(d, 2) box holding alpha_t [data range] +/- ``sigmas`` kernel stds at every time of ``t``."""
    a, s = _marginals(sde, t)
    spread = sigmas * np.sqrt(a**2 * bandwidth**2 + s**2)
    lo, hi = data.min(0), data.max(0)
    return np.stack([np.min(a[:, None] * lo - spread[:, None], 0), np.max(a[:, None] * hi + spread[:, None], 0)], 1)


# --------------------------------------------------------------------------------------------------
# the sound scheme


def _coefficients(sde: SDE, t: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step n = 1..N-1: (c_n, phi_n, w_n) for  m^n - [c (Lap + s.D) - phi x.D] m^n = rhs_n - d phi.

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
    alpha, _ = _marginals(sde, t)
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


class _Stencil:
    """The fixed (2d+1)-point pattern of the grid operator in CSC form; only values change."""

    def __init__(self, axes: list[np.ndarray]):
        self.d = d = len(axes)
        self.G = G = len(axes[0])
        self.n = n = G**d
        self.h = [float(a[1] - a[0]) for a in axes]
        self.shape = (G,) * d
        idx = np.arange(n)
        multi = np.unravel_index(idx, self.shape)
        self.coords = [axes[k][multi[k]] for k in range(d)]
        self.first = [multi[k] == 0 for k in range(d)]
        self.last = [multi[k] == G - 1 for k in range(d)]
        rows, cols = [idx], [idx]
        self.plus, self.minus, self.nbr_plus, self.nbr_minus = [], [], [], []
        for k in range(d):
            stride = G ** (d - 1 - k)
            p, m = np.flatnonzero(~self.last[k]), np.flatnonzero(~self.first[k])
            self.plus.append(p)
            self.minus.append(m)
            self.nbr_plus.append(np.where(self.last[k], idx, idx + stride))
            self.nbr_minus.append(np.where(self.first[k], idx, idx - stride))
            rows += [p, m]
            cols += [p + stride, m - stride]
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        self.order = np.lexsort((rows, cols))
        self.indices = rows[self.order].astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))]).astype(np.int32)

    def gradient(self, m: np.ndarray) -> np.ndarray:
        """Central differences inside, one-sided at the box edges: (n, d)."""
        grads = np.gradient(m.reshape(self.shape), *self.h, edge_order=1)
        grads = grads if self.d > 1 else [grads]
        return np.stack([g.reshape(-1) for g in grads], axis=1)

    def upwind(self, s: np.ndarray, c: float, phi: float) -> list[np.ndarray]:
        """Per axis, the nodes where central advection would break the M-matrix: |c s - phi x| dx > 2c."""
        return [np.abs(c * s[:, k] - phi * self.coords[k]) * self.h[k] > 2 * c for k in range(self.d)]

    def coefficients(self, s: np.ndarray, c: float, phi: float, up: list[np.ndarray]):
        """Row coefficients of I - [c (Lap + s . D) - phi x . D]: the diagonal and, per axis, the +/-
        neighbours; central differences, upwind where ``up``, ghost-node edges (zero where no neighbour)."""
        diag = np.ones(self.n)
        plus, minus = [], []
        for k in range(self.d):
            h, u = self.h[k], up[k]
            b = c * s[:, k] - phi * self.coords[k]
            cen = c / h**2
            ap = np.where(u, -cen - np.maximum(b, 0) / h, -cen - 0.5 * b / h)
            am = np.where(u, -cen + np.minimum(b, 0) / h, -cen + 0.5 * b / h)
            diag += 2 * cen + np.where(u, np.abs(b) / h, 0.0)
            f, la = self.first[k], self.last[k]
            diag += 2 * np.where(f, am, 0.0) + 2 * np.where(la, ap, 0.0)
            plus.append(np.where(la, 0.0, ap - np.where(f, am, 0.0)))
            minus.append(np.where(f, 0.0, am - np.where(la, ap, 0.0)))
        return diag, plus, minus

    def apply(self, coef, m: np.ndarray) -> np.ndarray:
        """The operator times m, matrix-free."""
        diag, plus, minus = coef
        out = diag * m
        for k in range(self.d):
            out += plus[k] * m[self.nbr_plus[k]] + minus[k] * m[self.nbr_minus[k]]
        return out

    def matrix(self, coef) -> sp.csc_matrix:
        diag, plus, minus = coef
        vals = np.concatenate([diag] + [v for k in range(self.d) for v in (plus[k][self.plus[k]],
                                                                            minus[k][self.minus[k]])])
        return sp.csc_matrix((vals[self.order], self.indices, self.indptr), shape=(self.n, self.n))


def _factor(A: sp.csc_matrix) -> spla.SuperLU:
    return spla.splu(A, permc_spec="MMD_AT_PLUS_A")


def _extrapolate(ts: np.ndarray, ms: np.ndarray, t: float) -> np.ndarray:
    """Lagrange polynomial through (ts, ms) evaluated at t: the Picard predictor."""
    weights = [math.prod((t - tj) / (ti - tj) for j, tj in enumerate(ts) if j != i) for i, ti in enumerate(ts)]
    return np.tensordot(np.asarray(weights), ms, axes=1)


def _norm(v: np.ndarray) -> float:
    return math.sqrt(float(np.einsum("i,i->", v, v)))


class _Anderson:
    """Anderson acceleration (depth k) of a fixed-point iteration m <- m + g(m)."""

    def __init__(self, depth: int = 5):
        self.depth = depth
        self.reset()

    def reset(self) -> None:
        self.m, self.g = [], []

    def __call__(self, m: np.ndarray, g: np.ndarray) -> np.ndarray:
        self.m.append(m)
        self.g.append(g)
        if len(self.m) > self.depth + 1:
            self.m.pop(0)
            self.g.pop(0)
        if len(self.m) == 1:
            return m + g
        dg = np.diff(np.stack(self.g, 1), axis=1)
        dm = np.diff(np.stack(self.m, 1), axis=1)
        gamma = np.linalg.lstsq(dg, g, rcond=None)[0]
        return m + g - (dm + dg) @ gamma


def evolve_logp(m0: np.ndarray, axes: list[np.ndarray], sde: SDE, t: np.ndarray, tol: float = 1e-6,
                max_picard: int = 10, solver: str = "lu", order: int = 2, progress: bool = True,
                stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Advance a log-density m0 (G, ..., G) given at t[0] through the increasing times t.

    Returns logp (N, G, ..., G) and score (N, G, ..., G, d). ``order`` 1 is backward Euler (METHODS.md
    1.2), 2 is BDF2 (same linear systems, second order in time; the first step is backward Euler).
    Each step finds the Picard fixed point m = A(s(m))^-1 rhs, s(m) = D_h m, to
    ||m^(k) - m^(k-1)|| <= tol ||m^(k)|| in at most ``max_picard`` iterations, starting from a
    quadratic extrapolation of the last steps; the upwind set is fixed per step from that predictor.

    - 'lu': m <- m + P^-1 (rhs - A(s(m)) m), Anderson-accelerated (depth 5), with P a SuperLU factor
      of a recent A. With P the factor of the current A this is exactly the Picard step; a stale P
      changes the path, not the fixed point. P is refactored when an iteration stalls (change >
      ``STALL`` x the previous one; that update is discarded), after a step that needed more than
      ``REFRESH_AFTER[d-1]`` iterations, and when the diffusion coefficient c moved by more than a
      factor ``STALE_C`` since P was made, so a 181^2 x 50 solve factorises 2-8 times instead of
      once per iteration.
    - 'krylov': each Picard system A(s^(k-1)) m^(k) = rhs is solved by BiCGSTAB to 0.1 tol,
      preconditioned with such a P (refactored when BiCGSTAB fails within ``KRYLOV_MAXITER``), and
      the Picard iterates are Anderson-accelerated too: with large steps (e.g. 10 VP steps) plain
      Picard diverges, the lagged map not being a contraction where advection dominates.

    A factorisation costs about 25 iterations on a 181^2 grid, but its fill grows as n^(4/3) in 3-D
    (31^3: ~4 s, 41^3: ~20 s here): 3-D grids beyond ~25^3 are slow with either solver.

    ``stats``, if given, receives the counts of iterations, factorisations and unconverged steps.
    """
    from threadpoolctl import threadpool_limits

    if solver not in SOLVERS:
        raise UserError(f"unknown FP solver '{solver}'; choose one of {', '.join(SOLVERS)}")
    if order not in (1, 2):
        raise UserError(f"FP time order must be 1 (backward Euler) or 2 (BDF2), got {order}")
    st = _Stencil(axes)
    cs, phis, ws = _coefficients(sde, np.asarray(t, dtype=np.float64), order)
    N, d = len(t), st.d
    logp = np.empty((N, st.n))
    score = np.empty((N, st.n, d))
    logp[0] = m0.reshape(-1)
    score[0] = st.gradient(logp[0])
    P, c_P, unconverged, accel = None, 0.0, 0, _Anderson()
    counts = {"iterations": 0, "factorizations": 0}

    def factor(coef, c):
        counts["factorizations"] += 1
        return _factor(st.matrix(coef)), c

    with threadpool_limits(limits=1, user_api="blas"):
        for n in tqdm(range(1, N), desc="FP solve", disable=not progress, leave=False):
            c, phi, w = cs[n - 1], phis[n - 1], ws[n - 1]
            rhs = (1 - w) * logp[n - 1] + w * logp[n - 2] - d * phi if w else logp[n - 1] - d * phi
            m = _extrapolate(t[max(0, n - 3):n], logp[max(0, n - 3):n], t[n])
            up = st.upwind(st.gradient(m), c, phi)
            if P is not None and not (1 / STALE_C < c / c_P < STALE_C):
                P = None
            accel.reset()
            last = math.inf
            for k in range(1, max_picard + 1):  # noqa: B007 (k counts the iterations after the loop)
                coef = st.coefficients(st.gradient(m), c, phi, up)
                if P is None:
                    P, c_P = factor(coef, c)
                if solver == "lu":
                    m_new = accel(m, P.solve(rhs - st.apply(coef, m)))
                else:
                    picard, info = spla.bicgstab(st.matrix(coef), rhs, x0=m, rtol=0.1 * tol, maxiter=KRYLOV_MAXITER,
                                                 M=spla.LinearOperator((st.n, st.n), P.solve))
                    if info != 0:
                        P, c_P = factor(coef, c)
                        picard = P.solve(rhs)
                    m_new = accel(m, picard - m)
                change = _norm(m_new - m) / max(_norm(m_new), 1e-300)
                if change <= tol:
                    m = m_new
                    break
                if solver == "lu" and change > STALL * last:
                    P, c_P = factor(coef, c)
                    accel.reset()
                    last = math.inf
                    continue
                m, last = m_new, change
            else:
                unconverged += 1
            counts["iterations"] += k
            if solver == "lu" and k > REFRESH_AFTER[d - 1]:
                P, c_P = factor(st.coefficients(st.gradient(m), c, phi, up), c)
            logp[n] = m
            score[n] = st.gradient(m)
    if stats is not None:
        stats.update(counts, steps=N - 1, unconverged=unconverged)
    if unconverged:
        warnings.warn(f"FP solve: {unconverged} of {N - 1} steps did not reach tol={tol} in {max_picard} "
                      "Picard iterations", RuntimeWarning, stacklevel=2)
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
    alpha, sigma = _marginals(sde, t)
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
# the published construction (METHODS.md 1.3), defects included


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
