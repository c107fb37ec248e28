"""Exact likelihood through the probability-flow ODE, and bits/dim for discrete images.

log p_eps(x) = log p_T(x_T) + int_eps^T div_x F(x_t, t) dt,  F = f(t) x - g(t)^2/2 s(x, t),
integrated forward from eps to T together with the running divergence. div F = d f(t) - g^2/2 div s;
div s is exact (d autograd passes, for d up to ~64) or Hutchinson's estimate with Rademacher probes
held fixed along the path (images). ``prior_logp`` replaces the SDE's reference prior (a fitted
auxiliary prior at a truncated T).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .ksampling import SCHEDULES
from .sampling import integrate
from .sde import SDE, ScoreFn
from .time_grids import time_grid

Tensor = torch.Tensor


def divergence(fn: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(fn(x), div fn(x)) per example; exact if ``probes`` is None, else the Hutchinson mean over
    probes (shape ``(P, *x.shape)``)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        if probes is None:
            flat = out.flatten(1)
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            d = flat.shape[1]
            for i in range(d):
                g = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < d - 1)[0]
                div = div + g.flatten(1)[:, i]
        else:
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for j, v in enumerate(probes):
                g = torch.autograd.grad(out, x, v, retain_graph=j < len(probes) - 1)[0]
                div = div + (g * v).flatten(1).sum(1)
            div = div / len(probes)
    return out.detach(), div.detach()


def log_likelihood(model: ScoreFn, sde: SDE, x: Tensor, *, steps: int = 100, method: str = "rk4",
                   rtol: float = 1e-5, atol: float = 1e-5, hutchinson: int = 0,
                   prior_logp: Callable[[Tensor], Tensor] | None = None,
                   generator: torch.Generator | None = None, progress: bool = False,
                   return_endpoint: bool = False, schedule: str = "uniform"):
    """log p_eps(x) in nats per example, by the PF-ODE from sde.eps to sde.T.

    ``hutchinson`` = 0 means the exact divergence; P > 0 uses P Rademacher probes. ``schedule`` is the
    fixed grid (``ksampling.SCHEDULES``: uniform in t, or logsnr / karras in the noise level, which put
    their steps where the flow is stiff, near eps). With ``return_endpoint`` also returns x_T.
    """
    d = x[0].numel()
    probes = None
    if hutchinson > 0:
        probes = torch.randint(0, 2, (hutchinson, *x.shape), generator=generator, device=x.device).to(x.dtype) * 2 - 1

    def make_fn(piece):
        def fn(t, y):
            xt = y[0]
            tv = t.to(xt.dtype).expand(xt.shape[0])
            s, div_s = divergence(lambda z: piece(z, tv), xt, probes)
            drift = sde.ode_drift(xt, tv, s)
            return drift, d * sde.drift_coef(t).to(xt.dtype).expand(xt.shape[0]) - 0.5 * sde.g2(t) * div_s
        return fn

    if schedule == "uniform":
        ts = time_grid(sde.eps, sde.T, steps, getattr(model, "edges", None), device=x.device, dtype=x.dtype)
    else:
        ts = SCHEDULES[schedule](sde, steps, getattr(model, "edges", None), device=x.device, dtype=x.dtype).flip(0)
    zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    xT, delta = integrate(make_fn, model, (x, zero), ts, method, rtol, atol, progress=progress)
    logp = (prior_logp or sde.prior_logp)(xT) + delta
    return (logp, xT) if return_endpoint else logp


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation of K-level data stored as x = 2 q / (K - 1) - 1 in [-1, 1]:
    returns 2 (q + u) / K - 1 with u ~ U[0, 1)."""
    q = torch.round((x + 1) * (levels - 1) / 2)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return 2 * (q + u) / levels - 1


def bits_per_dim(logp: Tensor, dim: int, levels: int) -> Tensor:
    """bpd of dequantised K-level data in [-1, 1]: -log p / (d ln 2) + log2(K / 2)."""
    return -logp / (dim * math.log(2)) + math.log2(levels / 2)
