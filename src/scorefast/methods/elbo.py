"""The continuous-time ELBO of a (possibly truncated) diffusion, the prior gap, and the choice of T.

:func:`elbo` is the ELBO (Huang et al. 2021; Song et al. 2021) split into a prior term, a score term
and a closed-form theta-free term; :func:`choose_T` picks T from validation ELBOs (the rule behind
``scorefast sweep-T``, which Franzese et al. 2023 do not give); :func:`prior_gap_bound` bounds
KL[p_T || N(0, prior_std^2 I)] (docs/methods.md 2) and :func:`prior_gap` measures KL[p_T || nu] for any prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..errors import UserError
from ..sde import SDE
from .densities import Prior

Tensor = torch.Tensor


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def kernel_from_eps(sde: SDE, t: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha_{t|eps}, sigma_{t|eps}) of the forward kernel started at time eps (float64):
    alpha_t / alpha_eps and sqrt(sigma_t^2 - alpha_{t|eps}^2 sigma_eps^2)."""
    te = torch.tensor(sde.eps, dtype=torch.float64, device=t.device)
    a = sde.alpha(t) / sde.alpha(te)
    var = sde.sigma(t) ** 2 - a * a * sde.sigma(te) ** 2
    return a, var.clamp_min(1e-300).sqrt()


@torch.no_grad()
def elbo(model: Callable[[Tensor, Tensor], Tensor], sde: SDE, x0: Tensor, prior: Prior | None = None,
         n_t: int = 128, stratified: bool = True, generator: torch.Generator | None = None, *,
         n_prior: int = 4) -> dict[str, Tensor]:
    """Per-example continuous-time ELBO (nats) of the reverse-SDE model on [eps, T] with prior nu.

    With the forward process started at x at time eps, x_t = a_t x + s_t z (a_t = alpha_t/alpha_eps,
    s_t^2 = sigma_t^2 - a_t^2 sigma_eps^2), and s = model(x_t, t) the score:

        log p_eps(x) >= E log nu(x_T)                                        'prior_term'
                        - 1/2 int_eps^T g^2/s_t^2 (E||s_t s + z||^2 - d) dt   'score_term'
                        + d int_eps^T f(t) dt = d log(alpha_T / alpha_eps)    'theta_free'

    The bound is on the model's density at eps evaluated at x itself, and it is tight (equality in
    expectation, for every x) for the exact score with nu = p_T. The theta-free term is the -2 d f
    part; the -d inside the score term is kept there, per noise draw as ||z||^2, which makes the
    integrand g^2 (||s||^2 + 2 s.z / s_t) free of chi-square noise.
    Monte Carlo: ``n_t`` times per example, t = eps + (T - eps) u^2 with u stratified in [0, 1)
    (the u^2 substitution keeps the variance finite near t = eps, where s_t -> 0), one z per time;
    ``n_prior`` noise draws for the prior term (also Monte Carlo for a Gaussian nu).
    ``model`` is any score callable (x, t) -> s; t is passed per example, shape (B,).
    """
    if n_t < 1 or n_prior < 1:
        raise UserError(f"elbo: n_t and n_prior must be positive, got {n_t}, {n_prior}")
    b, d = x0.shape[0], x0[0].numel()
    dev, dtype = x0.device, x0.dtype
    f64 = {"dtype": torch.float64, "device": dev}
    T = torch.tensor(sde.T, **f64)
    a_T, s_T = kernel_from_eps(sde, T)
    log_nu = prior.log_prob if prior is not None else sde.prior_logp
    prior_term = torch.zeros(b, **f64)
    for _ in range(n_prior):
        z = torch.randn(x0.shape, generator=generator, device=dev, dtype=dtype)
        prior_term += log_nu(a_T.to(dtype) * x0 + s_T.to(dtype) * z).double() / n_prior
    score_term = torch.zeros(b, **f64)
    for k in range(n_t):
        u = torch.rand(b, generator=generator, **f64).clamp_min(1e-6)
        if stratified:
            u = (k + u) / n_t
        t = sde.eps + (sde.T - sde.eps) * u * u
        weight = 2 * (sde.T - sde.eps) * u / n_t
        a, s = kernel_from_eps(sde, t)
        z = torch.randn(x0.shape, generator=generator, device=dev, dtype=dtype)
        shape = (b,) + (1,) * (x0.ndim - 1)
        xt = a.to(dtype).view(shape) * x0 + s.to(dtype).view(shape) * z
        score = _flat(model(xt, t.to(dtype))).double()
        integrand = sde.g2(t) * (score.pow(2).sum(1) + 2 * (score * _flat(z).double()).sum(1) / s)
        score_term -= 0.5 * weight * integrand
    t_eps = torch.tensor(sde.eps, **f64)
    theta_free = d * (torch.log(sde.alpha(T)) - torch.log(sde.alpha(t_eps))) * torch.ones(b, **f64)
    out = {"prior_term": prior_term, "score_term": score_term, "theta_free": theta_free}
    out["elbo"] = prior_term + score_term + theta_free
    return {k: v.to(dtype) for k, v in out.items()}


def prior_gap_bound(sde: SDE, x0: Tensor) -> float:
    """Upper bound on KL[p_T || N(0, s^2 I)] (s = prior_std) by convexity of the KL:
    E_x0 KL[N(alpha_T x0, sigma_T^2 I) || N(0, s^2 I)]
    = 1/2 [d (r - 1 - log r) + alpha_T^2 E||x0||^2 / s^2],  r = sigma_T^2 / s^2.
    For VP (s = 1, sigma_T^2 = 1 - a_T, a_T = exp(-int_0^T beta)) this is docs/methods.md's
    1/2 [d (-a_T - log(1 - a_T)) + a_T E||x0||^2]."""
    x = _flat(x0).double()
    T = torch.tensor(sde.T, dtype=torch.float64)
    a2, s2 = float(sde.alpha(T)) ** 2, float(sde.sigma(T)) ** 2
    p2 = sde.prior_std() ** 2
    r = s2 / p2
    d = x.shape[1]
    return 0.5 * (d * (r - 1 - math.log(r)) + a2 * float(x.pow(2).sum(1).mean()) / p2)


@torch.no_grad()
def prior_gap(sde: SDE, x0: Tensor, prior: Prior, n: int = 4096, generator: torch.Generator | None = None,
              batch_size: int = 512) -> dict[str, float]:
    """Monte-Carlo KL[p_T || nu] for p_T the forward marginal at ``sde.T`` of the empirical distribution of ``x0``
    (a mixture of N(alpha_T x0_i, sigma_T^2 I), so log p_T is exact by a log-sum-exp over the points), from ``n``
    draws x ~ p_T: E[log p_T(x) - log nu(x)]. By data processing it bounds the prior's share of the error of the
    samples' law; the moment-matched Gaussian minimises it over all Gaussians. Returns nats in all and per
    dimension, with the standard error of the mean."""
    if n < 2 or batch_size < 1:
        raise UserError(f"prior_gap: n must be >= 2 and batch_size >= 1, got {n} and {batch_size}")
    points = _flat(x0).double()
    t = torch.tensor(sde.T, dtype=torch.float64)
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    centres = a * points
    d = points.shape[1]
    pick = torch.randint(0, points.shape[0], (n,), generator=generator)
    x = centres[pick] + s * torch.randn((n, d), generator=generator, dtype=torch.float64)
    parts = []
    for xb in x.split(batch_size):
        d2 = torch.cdist(xb, centres).pow(2)
        log_pt = torch.logsumexp(-d2 / (2 * s * s), 1) - math.log(points.shape[0]) - \
            0.5 * d * math.log(2 * math.pi * s * s)
        parts.append(log_pt - prior.log_prob(xb.float()).double())  # the priors hold float32 parameters
    gap = torch.cat(parts)
    sem = float(gap.std() / math.sqrt(n))
    return {"kl": float(gap.mean()), "kl_per_dim": float(gap.mean()) / d, "sem": sem, "n": n, "dim": d, "T": sde.T}


def choose_T(candidates: Sequence[float], val_elbo: dict[float, float]) -> float:
    """The candidate T with the highest validation ELBO; ties go to the smaller (cheaper) T."""
    if not candidates:
        raise UserError("choose_T: no candidate end times given")
    missing = [T for T in candidates if T not in val_elbo]
    if missing:
        raise UserError(f"choose_T: no validation ELBO for T = {', '.join(map(str, missing))}")
    finite = [T for T in candidates if math.isfinite(val_elbo[T])]
    if not finite:
        raise UserError("choose_T: every validation ELBO is non-finite")
    return min(finite, key=lambda T: (-val_elbo[T], T))




__all__ = ["choose_T", "elbo", "kernel_from_eps", "prior_gap", "prior_gap_bound"]
