"""Samplers with one calling convention, and the time grids and ODE integration they share.

Every sampler is ``sampler(model, sde, x, ts, *, callback=None, progress=True, **options) -> x``:
``model(x, t)`` returns the score, ``x`` holds prior samples at ts[0], and ``ts`` is the decreasing
time grid (a tensor: the schedule is data, decoupled from the solver). ``callback`` receives
``{'i', 't', 'x'}`` after each step.

The probability-flow ODE ('ode'), Euler-Maruyama ('em') and predictor-corrector ('pc') are here; the
few-step samplers of k-diffusion (dpmpp-2m, heun, euler-a) and the noise-level schedules are in
``ksampling``. Every integration is split at the edges of a piecewise model (``time_grids.pieces``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchdiffeq import odeint
from tqdm.auto import tqdm

from . import ksampling  # noqa: F401  (registers dpmpp-2m, heun and euler-a)
from .choices import SAMPLERS, SCHEDULES
from .errors import UserError
from .sde import SDE, ScoreFn
from .time_grids import pieces

Tensor = torch.Tensor
State = tuple[Tensor, ...]

FIXED_METHODS = ("euler", "heun", "rk4")
CHUNK = 4096  # samples integrated at once by ``sample``
ADAPTIVE_METHODS = ("dopri5", "bosh3", "adaptive_heun", "dopri8")


def _step(fn: Callable[[Tensor, State], State], t0: Tensor, t1: Tensor, y: State, method: str) -> State:
    h = t1 - t0
    add = lambda y, k, c: tuple(a + c * b for a, b in zip(y, k))  # noqa: E731
    k1 = fn(t0, y)
    if method == "euler":
        return add(y, k1, h)
    if method == "heun":
        k2 = fn(t1, add(y, k1, h))
        return tuple(a + 0.5 * h * (b + c) for a, b, c in zip(y, k1, k2))
    if method == "rk4":
        tm = t0 + 0.5 * h
        k2 = fn(tm, add(y, k1, 0.5 * h))
        k3 = fn(tm, add(y, k2, 0.5 * h))
        k4 = fn(t1, add(y, k3, h))
        return tuple(a + h / 6 * (b1 + 2 * b2 + 2 * b3 + b4) for a, b1, b2, b3, b4 in zip(y, k1, k2, k3, k4))
    raise ValueError(f"unknown fixed-grid method '{method}'; choose one of {FIXED_METHODS}")


def _adaptive(fn: Callable[[Tensor, State], State], y: State, t0: Tensor, t1: Tensor, method: str,
              rtol: float, atol: float) -> State:
    """One adaptive solve from t0 to t1 that evaluates ``fn`` only inside [t0, t1].

    torchdiffeq would otherwise step past t1 and interpolate back, and its initial-step probe may
    land beyond t1: ``step_t`` makes the last step end exactly at t1, and clamping t keeps the probe
    inside (it only sets the first step size, not the solution).
    """
    lo, hi = torch.minimum(t0, t1), torch.maximum(t0, t1)
    ts = torch.stack([t0, t1])
    sol = odeint(lambda t, v: fn(t.clamp(lo, hi), v), y, ts, method=method, rtol=rtol, atol=atol,
                 options={"step_t": ts[1:]})
    return tuple(v[-1] for v in sol)


def integrate(make_fn: Callable[[ScoreFn], Callable[[Tensor, State], State]], model: ScoreFn, y: State,
              ts: Tensor, method: str = "rk4", rtol: float = 1e-5, atol: float = 1e-5,
              callback: Callable[[dict], None] | None = None, progress: bool = False) -> State:
    """Integrate dy/dt = make_fn(piece)(t, y) along ts, piece by piece.

    Fixed methods step on the grid itself; adaptive methods (torchdiffeq) are restarted at every
    piece boundary and never step across one.
    """
    segs = pieces(model, ts)
    n_steps = sum(len(s) - 1 for _, s in segs)
    bar = tqdm(total=n_steps, disable=None if progress else True, desc=f"ode:{method}", leave=False)
    i = 0
    for piece, sub in segs:
        fn = make_fn(piece)
        if method in FIXED_METHODS:
            for t0, t1 in zip(sub[:-1], sub[1:]):
                y = _step(fn, t0, t1, y, method)
                i += 1
                bar.update()
                if callback is not None:
                    callback({"i": i, "t": t1, "x": y[0]})
        elif method in ADAPTIVE_METHODS:
            y = _adaptive(fn, y, sub[0], sub[-1], method, rtol, atol)
            i += len(sub) - 1
            bar.update(len(sub) - 1)
            if callback is not None:
                callback({"i": i, "t": sub[-1], "x": y[0]})
        else:
            raise ValueError(f"unknown ODE method '{method}'; choose one of {FIXED_METHODS + ADAPTIVE_METHODS}")
    bar.close()
    return y


def _tvec(t: Tensor, x: Tensor) -> Tensor:
    return t.to(x.dtype).expand(x.shape[0])


@torch.no_grad()
def sample_ode(model: ScoreFn, sde: SDE, x: Tensor, ts: Tensor, *, callback=None, progress: bool = True,
               method: str = "rk4", rtol: float = 1e-5, atol: float = 1e-5, generator=None) -> Tensor:
    """Probability-flow ODE dx/dt = f - g^2/2 s, fixed-grid (euler, heun, rk4) or adaptive (dopri5...)."""
    def make_fn(piece):
        return lambda t, y: (sde.ode_drift(y[0], t, piece(y[0], _tvec(t, y[0]))),)
    return integrate(make_fn, model, (x,), ts, method, rtol, atol, callback, progress)[0]


@torch.no_grad()
def sample_em(model: ScoreFn, sde: SDE, x: Tensor, ts: Tensor, *, callback=None, progress: bool = True,
              generator: torch.Generator | None = None, corrector_steps: int = 0, snr: float = 0.16) -> Tensor:
    """Euler-Maruyama on the reverse SDE dx = [f - g^2 s] dt + g dW; with ``corrector_steps`` > 0,
    each step is preceded by Langevin corrector steps (predictor-corrector). The corrector's step size
    ``2 (snr |z| / |s|)^2`` uses batch-mean norms, as score_sde does: a per-example step would be huge where
    the score is small and would not leave p_t invariant. The last step adds no noise (it returns the mean)."""
    segs = pieces(model, ts)
    n = sum(len(s) - 1 for _, s in segs)
    bar = tqdm(total=n, disable=None if progress else True, desc="sde", leave=False)
    i = 0
    for piece, sub in segs:
        for t0, t1 in zip(sub[:-1], sub[1:]):
            tv = _tvec(t0, x)
            for _ in range(corrector_steps):
                s = piece(x, tv)
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean().clamp_min(1e-12)
                step = 2 * (snr * ratio) ** 2
                x = x + step * s + (2 * step).sqrt() * z
            f, g = sde.sde(x, tv)
            dt = t1 - t0
            mean = x + (f - g**2 * piece(x, tv)) * dt
            i += 1
            if i == n:
                x = mean
            else:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = mean + g * (-dt).sqrt() * z
            bar.update()
            if callback is not None:
                callback({"i": i, "t": t1, "x": x})
    bar.close()
    return x


def sample_pc(model: ScoreFn, sde: SDE, x: Tensor, ts: Tensor, *, callback=None, progress: bool = True,
              generator: torch.Generator | None = None, corrector_steps: int = 1, snr: float = 0.16) -> Tensor:
    """Predictor-corrector (Song et al. 2021): Langevin corrector + Euler-Maruyama predictor."""
    return sample_em(model, sde, x, ts, callback=callback, progress=progress, generator=generator,
                     corrector_steps=corrector_steps, snr=snr)


SAMPLERS.add("ode", sample_ode)
SAMPLERS.add("em", sample_em)
SAMPLERS.add("pc", sample_pc)


def sample(model: ScoreFn, sde: SDE, n: int, shape: tuple[int, ...], *, sampler: str = "ode", steps: int = 100,
           schedule: str | None = None, prior=None, generator: torch.Generator | None = None, device=None,
           progress: bool = True, chunk: int = CHUNK, **options) -> Tensor:
    """Draw n samples: x_T from ``prior`` (an object with ``sample(n, generator)``) or the SDE's
    reference prior, then the chosen sampler from sde.T to sde.eps on the ``schedule``'s grid (uniform in
    t; karras or logsnr in the noise level; default: the sampler's own), aligned to any edges.

    The samples are integrated ``chunk`` at a time (all x_T are drawn first), so memory stays bounded
    for any n; a result depends on the seed and, for n above ``chunk``, on the chunk size."""
    run = SAMPLERS.get(sampler)
    grid = SCHEDULES.get(schedule or getattr(run, "default_schedule", "uniform"))
    if steps < 1:
        raise UserError(f"sampler steps must be >= 1, got {steps}")
    if prior is not None:
        x = prior.sample(n, generator=generator).reshape(n, *shape).to(device)
    else:
        x = sde.prior_sampling((n, *shape), generator=generator, device=device)
    ts = grid(sde, steps, getattr(model, "edges", None), device=x.device, dtype=x.dtype)
    return torch.cat([run(model, sde, part, ts, progress=progress, generator=generator, **options)
                      for part in x.split(max(1, chunk))])
