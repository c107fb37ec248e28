"""k-diffusion's few-step samplers and noise schedules for scorefast's SDEs.

Every SDE here has x_t = alpha_t x0 + sigma_t z, so y = x_t / alpha_t = x0 + s z with s = sigma_t / alpha_t:
in the variable y every family (VP, sub-VP, VE) is the VE process of Karras et al. (2022) with noise level
s, and a score model is a denoiser (Tweedie)

    D(y, s) = E[x0 | y] = y + s^2 grad_y log p(y) = y + s^2 alpha_t score(alpha_t y, t),  at t = t(s).

- :class:`Denoiser` is exactly a k-diffusion denoiser ``D(x, sigma)``, so k-diffusion code samples a
  scorefast model unchanged; :func:`sigma_to_t` inverts the SDE's ``noise_level``, s(t).
- :func:`sigma_schedule` (Karras rho = 7, log-SNR uniform) and :func:`schedule_times` are schedules as
  data, registered in ``choices.SCHEDULES`` as ``schedule(sde, steps, edges=None) -> ts``.
- :func:`sample_dpmpp_2m`, :func:`sample_heun`, :func:`sample_euler_ancestral` follow k-diffusion's
  convention ``sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``;
  they are registered in the engine's convention (sampling.py) in ``choices.SAMPLERS`` under 'dpmpp-2m',
  'heun', 'euler-a'.

Both use the grids of ``time_grids``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn
from tqdm.auto import trange

from .choices import SAMPLERS, SCHEDULES
from .errors import UserError
from .sde import SDE, VESDE, VPSDE, ScoreFn, SubVPSDE, append_dims
from .time_grids import pieces, time_grid

Tensor = torch.Tensor
NoiseSampler = Callable[[Tensor, Tensor], Tensor]


# -- the map between noise level s = sigma_t / alpha_t and time t -----------------------------------

def _vp_time(sde: VPSDE, B: Tensor) -> Tensor:
    """The t >= 0 with int_0^t beta = b0 t + (b1 - b0) t^2 / 2 = B, in a form without cancellation."""
    root = (sde.b0**2 + 2 * (sde.b1 - sde.b0) * B).sqrt()
    return 2 * B / (sde.b0 + root).clamp_min(torch.finfo(B.dtype).tiny)


def _ve_time(sde: VESDE, s: Tensor) -> Tensor:
    lb = math.log(sde.b)
    return torch.log1p(2 * lb * (s / sde.a) ** 2) / (2 * lb)


# Exact types only: a subclass may change sigma or alpha, and then gets the bisection.
# VP: s^2 = e^B - 1; sub-VP: s = (1 - e^-B) / e^(-B/2) = 2 sinh(B / 2); VE: s^2 = a^2 (b^2t - 1) / (2 ln b).
CLOSED_FORM_TIMES: dict[type, Callable[[SDE, Tensor], Tensor]] = {
    VPSDE: lambda sde, s: _vp_time(sde, torch.log1p(s * s)),
    SubVPSDE: lambda sde, s: _vp_time(sde, 2 * torch.asinh(s / 2)),
    VESDE: _ve_time,
}


def _bisect_time(sde: SDE, s: Tensor, iters: int = 64) -> Tensor:
    """Invert the increasing s(t) by bisection in float64 on [0, hi], hi doubled from T until it brackets s."""
    target = s.double()
    lo, hi = torch.zeros_like(target), torch.full_like(target, sde.T)
    for _ in range(64):
        short = sde.noise_level(hi) < target
        if not bool(short.any()):
            break
        hi = torch.where(short, 2 * hi, hi)
    else:
        raise UserError(f"noise level {float(target.max()):g} is beyond every time of {sde}")
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = sde.noise_level(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (0.5 * (lo + hi)).to(s.dtype)


def sigma_to_t(sde: SDE, sigma: Tensor) -> Tensor:
    """The time t with sigma_t / alpha_t = sigma: closed form for VP, sub-VP and VE, else bisection."""
    sigma = torch.as_tensor(sigma)
    inverse = CLOSED_FORM_TIMES.get(type(sde))
    return inverse(sde, sigma) if inverse is not None else _bisect_time(sde, sigma)


class Denoiser(nn.Module):
    """A score model as a k-diffusion denoiser: ``D(x, sigma) = x + sigma^2 alpha_t model(alpha_t x, t)``
    with t = t(sigma), ``x`` in the VE variable x_t / alpha_t and ``sigma`` of shape (B,) (or a scalar).

    ``sigma_min`` = s(eps) and ``sigma_max`` = s(T) bound the noise levels the model was trained on, e.g.
    ``get_sigmas_karras(n, den.sigma_min, den.sigma_max)``; the prior at T in this variable is
    N(0, prior_std^2 / alpha_T^2), about N(0, sigma_max^2). Other noise levels are mapped to times outside
    [eps, T], where the model extrapolates. ``t_range = (lo, hi)`` clamps t into [lo, hi] (the engine's
    adapters keep each piece of a piecewise model inside its interval against the round-off of
    t -> sigma -> t). A piecewise model is evaluated as the composite: its piece at t(sigma).
    """

    def __init__(self, model: ScoreFn, sde: SDE, t_range: tuple[float, float] | None = None):
        super().__init__()
        self.model, self.sde, self.t_range = model, sde, t_range

    def _level(self, t: float) -> float:
        return float(self.sde.noise_level(torch.tensor(t, dtype=torch.float64)))

    @property
    def sigma_min(self) -> float:
        return self._level(self.sde.eps)

    @property
    def sigma_max(self) -> float:
        return self._level(self.sde.T)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return sigma_to_t(self.sde, sigma)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return self.sde.noise_level(t)

    def forward(self, x: Tensor, sigma: Tensor | float, **extra) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        t = sigma_to_t(self.sde, sigma)
        if self.t_range is not None:
            t = t.clamp(*self.t_range)
        a = append_dims(self.sde.alpha(t), x.ndim)
        return x + append_dims(sigma, x.ndim) ** 2 * a * self.model(a * x, t, **extra)


# -- schedules ----------------------------------------------------------------------------------------

SIGMA_SCHEDULES = ("karras", "logsnr")


def _snap(grid: Tensor, points: Sequence[float]) -> Tensor:
    """Set the grid point nearest to each point to that point exactly (they differ by round-off only)."""
    grid = grid.clone()
    for p in points:
        grid[(grid - p).abs().argmin()] = p
    return grid


def sigma_schedule(sigma_min: float, sigma_max: float, steps: int, kind: str = "karras", rho: float = 7.0,
                   edges: Sequence[float] | None = None) -> Tensor:
    """Noise levels from sigma_max down to sigma_min in ``steps`` steps, then a final 0 (float64).

    'karras' is uniform in u = sigma^(1/rho) (Karras et al. 2022, eq. 5), 'logsnr' uniform in log sigma
    (= -log-SNR / 2). The layout is k-diffusion's: ``sigma_schedule(m, M, n - 1)`` equals
    ``get_sigmas_karras(n, m, M)``. Noise levels in ``edges`` strictly between sigma_min and sigma_max
    become knots: each interval between knots gets steps in proportion to its length in u (at least
    one, so the count can exceed ``steps`` by one per edge) and is uniform in u within, so every edge is a
    grid point exactly and no step crosses one.
    """

    if kind not in SIGMA_SCHEDULES:
        raise UserError(f"unknown noise schedule '{kind}'; choose one of {', '.join(SIGMA_SCHEDULES)}")
    if not rho > 0:
        raise UserError(f"the Karras schedule needs rho > 0, got {rho}")
    if not 0 < sigma_min < sigma_max:
        raise UserError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if kind == "karras":
        warp, unwarp = (lambda s: s ** (1 / rho)), (lambda u: u**rho)
    else:
        warp, unwarp = torch.log, torch.exp
    f64 = partial(torch.tensor, dtype=torch.float64)
    inner = [float(e) for e in edges or () if sigma_min < e < sigma_max]
    u = time_grid(float(warp(f64(sigma_max))), float(warp(f64(sigma_min))), steps,
                  [float(warp(f64(e))) for e in inner], dtype=torch.float64)
    sigmas = _snap(unwarp(u), [sigma_max, sigma_min, *inner])
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def schedule_times(sde: SDE, steps: int, edges: Sequence[float] | None = None, kind: str = "karras",
                   rho: float = 7.0, device=None, dtype: torch.dtype | None = None) -> Tensor:
    """The decreasing time grid from T to eps whose noise levels follow ``sigma_schedule`` from s(eps) to
    s(T), with every edge in (eps, T) a grid point exactly; built in float64, cast to ``dtype``."""
    f64 = partial(torch.tensor, dtype=torch.float64)
    inner = [float(e) for e in edges or () if sde.eps < e < sde.T]
    levels = [float(sde.noise_level(f64(t))) for t in (sde.eps, sde.T, *inner)]
    sigmas = sigma_schedule(levels[0], levels[1], steps, kind, rho, levels[2:])[:-1]
    ts = _snap(sigma_to_t(sde, sigmas), [sde.T, sde.eps, *inner])
    return ts.to(device=device, dtype=dtype or torch.get_default_dtype())


def uniform_times(sde: SDE, steps: int, edges: Sequence[float] | None = None, device=None,
                  dtype: torch.dtype | None = None) -> Tensor:
    """Today's grid: uniform in t from T to eps (sampling.time_grid)."""

    return time_grid(sde.T, sde.eps, steps, edges, device=device, dtype=dtype)


SCHEDULES.add("uniform", uniform_times)
SCHEDULES.add("karras", partial(schedule_times, kind="karras"))
SCHEDULES.add("logsnr", partial(schedule_times, kind="logsnr"))


# -- samplers in k-diffusion's convention -----------------------------------------------------------

def _noise(x: Tensor, noise_sampler: NoiseSampler | None, generator: torch.Generator | None) -> NoiseSampler:
    """k-diffusion's noise_sampler(sigma, sigma_next) if given, else N(0, I) like x from ``generator``
    (None: torch's global generator, drawn as k-diffusion's randn_like draws it)."""
    if noise_sampler is not None:
        return noise_sampler
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _report(callback, x, i, sigma, sigma_hat, denoised, x_next) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised, "x_next": x_next})


# The three samplers call ``callback`` once per step, after it, with k-diffusion's keys (x: the state the
# step started from, after any churn; i; sigma; sigma_hat; denoised) and x_next, the state it reached.

@torch.no_grad()
def sample_dpmpp_2m(model: Callable, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                    callback: Callable[[dict], None] | None = None, disable: bool | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): the exact solution of dx/ds = (x - D) / s for D linear in
    log s, from the last two denoised values. With r = s_next / s and h = log(s / s_next),
    x_next = r x + (1 - r) D', D' = D_i + (D_i - D_{i-1}) h / (2 h_prev) (D' = D_i on the first step and
    on the final step to s = 0, which returns D(x, s)). One network evaluation per step."""
    extra = extra_args or {}
    ones = x.new_ones(x.shape[0])
    old = h_prev = None
    for i in trange(len(sigmas) - 1, disable=disable, leave=False, desc="dpm++2m"):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = model(x, s * ones, **extra)
        if s_next == 0:
            x_next = den
        else:
            h = torch.log(s / s_next)
            d = den if old is None else den + (den - old) * (h / (2 * h_prev))
            r = s_next / s
            x_next = r * x + (1 - r) * d
            h_prev = h
        _report(callback, x, i, s, s, den, x_next)
        x, old = x_next, den
    return x


@torch.no_grad()
def sample_heun(model: Callable, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                callback: Callable[[dict], None] | None = None, disable: bool | None = None, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                noise_sampler: NoiseSampler | None = None, generator: torch.Generator | None = None) -> Tensor:
    """EDM's sampler (Karras et al. 2022, Algorithm 2). Churn: where s_tmin <= s_i <= s_tmax the noise
    level is raised to s_hat = (1 + gamma) s_i, gamma = min(s_churn / N, sqrt(2) - 1) with N = len(sigmas) - 1,
    by adding noise of std s_noise sqrt(s_hat^2 - s_i^2) (drawn only there); then a Heun step of
    dx/ds = (x - D(x, s)) / s from s_hat to s_next; onto s_next = 0 an Euler step, which is x = D(x, s_hat).
    Network evaluations: 2 per step, 1 for the step to 0."""
    extra = extra_args or {}
    ones = x.new_ones(x.shape[0])
    noise = _noise(x, noise_sampler, generator)
    n = len(sigmas) - 1
    churn = min(s_churn / n, 2**0.5 - 1)
    for i in trange(n, disable=disable, leave=False, desc="heun"):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = churn if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + noise(s, s_next) * s_noise * (s_hat**2 - s**2).sqrt()
        den = model(x, s_hat * ones, **extra)
        if s_next == 0:
            x_next = den
        else:
            d = (x - den) / s_hat
            x_euler = x + d * (s_next - s_hat)
            d_next = (x_euler - model(x_euler, s_next * ones, **extra)) / s_next
            x_next = x + 0.5 * (d + d_next) * (s_next - s_hat)
        _report(callback, x, i, s, s_hat, den, x_next)
        x = x_next
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Callable, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                           callback: Callable[[dict], None] | None = None, disable: bool | None = None,
                           eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                           generator: torch.Generator | None = None) -> Tensor:
    """Ancestral Euler: each step from s to s_next is an Euler step of the ODE down to s_down followed by
    fresh noise of std s_noise s_up, with s_up = min(s_next, eta s_next sqrt(s^2 - s_next^2) / s) and
    s_down = sqrt(s_next^2 - s_up^2), so s_down^2 + s_up^2 = s_next^2 (eta = 1: DDPM's posterior step,
    eta = 0: plain Euler). The step to 0 adds no noise and returns D. One network evaluation per step."""
    extra = extra_args or {}
    ones = x.new_ones(x.shape[0])
    noise = _noise(x, noise_sampler, generator)
    for i in trange(len(sigmas) - 1, disable=disable, leave=False, desc="euler-a"):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = model(x, s * ones, **extra)
        if s_next == 0:
            x_next = den
        else:
            s_up = torch.minimum(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2).sqrt())
            s_down = (s_next**2 - s_up**2).sqrt()
            x_next = x + (x - den) / s * (s_down - s) + noise(s, s_next) * s_noise * s_up
        _report(callback, x, i, s, s, den, x_next)
        x = x_next
    return x


# -- the same samplers in the engine's convention -------------------------------------------------------

def engine_sampler(ksampler: Callable[..., Tensor], stochastic: bool, default_schedule: str) -> Callable[..., Tensor]:
    """``ksampler`` as ``sampler(model, sde, x, ts, *, callback=None, progress=True, generator=None,
    denoise=True, **options)`` (sampling.py's convention), with the schedule ``sample`` uses by default.

    x_T is divided by alpha_T, ``ts`` becomes the noise levels s(ts), and the k-sampler runs on
    Denoiser(model, sde). With ``denoise`` (the default, as k-diffusion ends) the schedule ends with
    s(eps) and then 0: the last step evaluates the model at t = eps, never below, and returns
    D(x, s(eps)) = E[x0 | x_eps], the denoised mean, one more step (and evaluation) than ``ts`` has;
    without it the result is the sample x_eps = alpha_eps y. A piecewise model is run piece by piece on
    its part of the grid (``pieces``), each piece evaluated only inside its interval: DPM-Solver++(2M)
    restarts its two-step history at each edge, single-step samplers are unchanged. Churn (Heun's
    s_churn > 0) raises the noise level above the grid's: at the first step above s(T), where a model
    trained on [eps, T] extrapolates (keep s_tmax below s(T) to avoid it), and above a piece's top edge,
    so it is refused for piecewise models. Network evaluations for n = len(ts) - 1 steps: dpmpp-2m and
    euler-a n + 1, heun 2n + 1 (n, n and 2n without ``denoise``). ``callback`` receives
    {'i', 't', 'x', 'denoised'} after each step, x in the engine's variable; the final denoising step is
    i = n + 1 at t = 0."""

    @torch.no_grad()
    def run(model: ScoreFn, sde: SDE, x: Tensor, ts: Tensor, *, callback: Callable[[dict], None] | None = None,
            progress: bool = True, generator: torch.Generator | None = None, denoise: bool = True,
            **options) -> Tensor:

        piecewise = getattr(model, "edges", None) is not None
        if piecewise and options.get("s_churn", 0) > 0:
            raise UserError("s_churn > 0 would evaluate a piecewise model above its pieces' edges; use s_churn=0")
        if stochastic:
            options["generator"] = generator
        segs = pieces(model, ts)
        y = x / append_dims(sde.alpha(ts[0]), x.ndim)
        done = 0
        for k, (piece, sub) in enumerate(segs):
            final = denoise and k == len(segs) - 1
            times = torch.cat([sub, sub.new_zeros(1)]) if final else sub
            sigmas = sde.noise_level(sub)
            sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]) if final else sigmas

            def report(info: dict, times: Tensor = times, done: int = done) -> None:
                t = times[info["i"] + 1]
                x_next = info["x_next"] * (1 if t == 0 else append_dims(sde.alpha(t), x.ndim))
                callback({"i": done + info["i"] + 1, "t": t, "x": x_next, "denoised": info["denoised"]})

            den = Denoiser(piece, sde, (float(sub.min()), float(sub.max())) if piecewise else None)
            y = ksampler(den, y, sigmas, callback=None if callback is None else report,
                         disable=None if progress else True, **options)
            done += len(sigmas) - 1
        return y if denoise else y * append_dims(sde.alpha(ts[-1]), x.ndim)

    run.default_schedule = default_schedule
    run.__name__ = run.__qualname__ = f"engine_{ksampler.__name__}"
    run.__doc__ = f"{ksampler.__name__} in the engine's convention (see engine_sampler).\n\n{ksampler.__doc__}"
    return run


SAMPLERS.add("dpmpp-2m", engine_sampler(sample_dpmpp_2m, stochastic=False, default_schedule="logsnr"))
SAMPLERS.add("heun", engine_sampler(sample_heun, stochastic=True, default_schedule="karras"))
SAMPLERS.add("euler-a", engine_sampler(sample_euler_ancestral, stochastic=True, default_schedule="karras"))
