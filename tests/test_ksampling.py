"""k-diffusion samplers and schedules against closed forms and against k-diffusion itself.

In the VE variable y = x / alpha_t, N(mu, Sigma) data has p(y; s) = N(mu, Sigma + s^2 I) and the denoiser
D(y, s) = mu + Sigma (Sigma + s^2 I)^-1 (y - mu) is affine with fixed point mu. Every deterministic sampler
step is then an affine map fixing mu: from prior samples with *exactly* the moments of p_T, the output mean
is mu to round-off and the covariance differs from the target only by discretisation error. The target
is that of the final denoising step, E[x0 | x_eps]: Cov = Sigma (Sigma + s_eps^2 I)^-1 Sigma.
"""

import math

import pytest
import torch

from scorefast.analytic import GaussianScore, MixtureScore
from scorefast.choices import SAMPLERS
from scorefast.errors import UserError
from scorefast.ksampling import (
    SCHEDULES,
    Denoiser,
    sample_dpmpp_2m,
    sample_euler_ancestral,
    sample_heun,
    schedule_times,
    sigma_schedule,
    sigma_to_t,
)
from scorefast.methods.piecewise import PiecewiseModel
from scorefast.sde import VPSDE, make_sde
from scorefast.time_grids import pieces

F64 = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=F64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)
FAMILIES = ["vp", "subvp", "ve", "vp-psm", "ve-power"]


def level(sde, t: float) -> float:
    return float(sde.noise_level(torch.tensor(t, dtype=F64)))


def with_moments(mean: torch.Tensor, cov: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n points whose empirical mean and (1/n) covariance are exactly mean and cov (on mean's device)."""
    device = mean.device
    z = torch.randn(n, mean.numel(), generator=torch.Generator(device=device).manual_seed(seed), dtype=F64,
                    device=device)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / n)).T
    return mean + z @ torch.linalg.cholesky(cov).T


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = x.mean(0)
    return m, (x - m).T @ (x - m) / x.shape[0]


def gaussian(name: str, device: torch.device):
    sde = make_sde(name)
    return sde, GaussianScore(sde, MEAN, COV).to(device)


def denoised_cov(sde, device: torch.device) -> torch.Tensor:
    """Covariance of E[x0 | x_eps] for N(MEAN, COV) data: Sigma (Sigma + s_eps^2 I)^-1 Sigma."""
    s2 = level(sde, sde.eps) ** 2
    cov = COV.to(device)
    return cov @ torch.linalg.solve(cov + s2 * torch.eye(2, dtype=F64, device=device), cov)


def run_moments(name: str, sampler: str, steps: int, device: torch.device, n: int = 2000, schedule: str = "karras",
                seed: int = 1, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Errors of the output mean and covariance against E[x0 | x_eps]'s, from exact-moment x_T."""
    sde, score = gaussian(name, device)
    x = with_moments(*score.marginal(torch.tensor(sde.T, dtype=F64)), n)
    ts = SCHEDULES[schedule](sde, steps, device=device, dtype=F64)
    out = SAMPLERS[sampler](score, sde, x, ts, progress=False,
                             generator=torch.Generator(device=device).manual_seed(seed), **options)
    m, c = moments(out)
    return m - MEAN.to(device), c - denoised_cov(sde, device)


def mc_tolerance(n: int, bias: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """4 standard errors of the sample mean and covariance of N(MEAN, COV), plus a bias allowance."""
    cov = COV.to(device)
    d = cov.diagonal()
    return 4 * (d / n).sqrt() + bias, 4 * ((d[:, None] * d[None, :] + cov**2) / n).sqrt() + bias


# -- the map s <-> t and the denoiser --------------------------------------------------------------------

class BisectedVP(VPSDE):
    """VP under another type: sigma_to_t falls back to bisection, which must agree with the closed form."""


@pytest.mark.parametrize("name", FAMILIES)
def test_sigma_to_t_inverts_the_noise_level(name, device):
    sde = make_sde(name)
    t = torch.cat([torch.linspace(sde.eps, sde.T, 50, dtype=F64, device=device),
                   torch.tensor([1.5 * sde.T], dtype=F64, device=device)])
    torch.testing.assert_close(sigma_to_t(sde, sde.noise_level(t)), t, rtol=1e-12, atol=0)
    t32 = t.float()
    torch.testing.assert_close(sigma_to_t(sde, sde.noise_level(t32)), t32, rtol=2e-5, atol=0)


def test_bisection_matches_closed_form(device):
    sde, twin = make_sde("vp"), BisectedVP()
    s = torch.logspace(-3, 3, 40, dtype=F64, device=device)
    torch.testing.assert_close(sigma_to_t(twin, s), sigma_to_t(sde, s), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_denoiser_is_the_gaussian_posterior_mean(name, device):
    """E[x0 | x_t] = mu + Sigma alpha (alpha^2 Sigma + sigma^2 I)^-1 (x_t - alpha mu) for N(mu, Sigma) data."""
    sde, score = gaussian(name, device)
    den = Denoiser(score, sde)
    mean, cov, eye = MEAN.to(device), COV.to(device), torch.eye(2, dtype=F64, device=device)
    for t in (sde.eps, 0.1, 0.5, sde.T):
        tt = torch.tensor(t, dtype=F64, device=device)
        a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
        xt = with_moments(*score.marginal(tt), 64)
        want = mean + (xt - a * mean) @ torch.linalg.solve(a * a * cov + s * s * eye, a * cov)
        torch.testing.assert_close(den(xt / a, torch.full((64,), s / a, dtype=F64, device=device)), want, rtol=1e-10,
                                   atol=1e-10)
    assert den.sigma_min == level(sde, sde.eps) and den.sigma_max == level(sde, sde.T)


# -- schedules ---------------------------------------------------------------------------------------------

def test_karras_schedule_is_the_formula():
    lo, hi, n = 0.01, 80.0, 12
    i = torch.arange(n, dtype=F64)
    want = (hi ** (1 / 7) + i / (n - 1) * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    got = sigma_schedule(lo, hi, n - 1)
    assert len(got) == n + 1 and got[-1] == 0 and got[0] == hi and got[-2] == lo
    torch.testing.assert_close(got[:-1], want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_schedule_times_map_to_the_noise_schedule(name, device):
    sde = make_sde(name)
    for kind in ("karras", "logsnr"):
        ts = schedule_times(sde, 15, kind=kind, device=device, dtype=F64)
        assert ts.device == device and ts[0] == sde.T and ts[-1] == sde.eps and len(ts) == 16
        want = sigma_schedule(level(sde, sde.eps), level(sde, sde.T), 15, kind)[:-1]  # a CPU float64 schedule
        torch.testing.assert_close(sde.noise_level(ts).cpu(), want, rtol=1e-12, atol=0)
    lam = sde.log_snr(schedule_times(sde, 15, kind="logsnr", device=device, dtype=F64)).diff()
    torch.testing.assert_close(lam, lam.mean().expand(15), rtol=1e-9, atol=0)


@pytest.mark.parametrize("kind", ["uniform", "karras", "logsnr"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_schedules_put_edges_exactly_on_the_grid(kind, dtype, device):
    sde = make_sde("vp")
    edges = [sde.eps, 0.02, 0.1, 0.3, sde.T]
    ts = SCHEDULES[kind](sde, 30, edges, device=device, dtype=dtype)
    assert ts.dtype == dtype and ts.device == device and (ts.diff() < 0).all()
    exactly = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
    assert ts[0] == exactly(sde.T) and ts[-1] == exactly(sde.eps)
    for e in edges[1:-1]:
        assert (ts == exactly(e)).sum() == 1
    assert abs(len(ts) - 1 - 30) <= 3
    model = PiecewiseModel([GaussianScore(sde, MEAN, COV)] * 4, edges).to(device)
    assert len(pieces(model, ts)) == 4  # aligned: no step crosses an edge


def test_karras_schedule_with_edges_is_uniform_in_u_within_each_piece():
    edges = [0.3, 2.0]
    s = sigma_schedule(0.01, 80.0, 20, edges=edges)[:-1]
    u = s ** (1 / 7)
    cuts = [0] + [int((s == e).nonzero()) for e in sorted(edges, reverse=True)] + [len(s) - 1]
    for a, b in zip(cuts[:-1], cuts[1:]):
        du = u[a:b + 1].diff()
        torch.testing.assert_close(du, du.mean().expand(b - a), rtol=1e-9, atol=0)


def test_bad_schedules_are_user_errors():
    with pytest.raises(UserError, match="noise schedule"):
        sigma_schedule(0.01, 80.0, 10, kind="cosine")
    with pytest.raises(UserError, match="rho"):
        sigma_schedule(0.01, 80.0, 10, rho=0)


# -- the samplers on Gaussian data ------------------------------------------------------------------------

# 20 steps (plus the denoising step): measured covariance errors VP / VE 0.076 / 0.061 (DPM++(2M)),
# 0.070 / 0.054 (Heun); 10 -> 20 -> 40 steps divides them by 3.3-4.7 (second order).
@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("sampler", ["dpmpp-2m", "heun"])
def test_deterministic_samplers_reproduce_data_moments_at_second_order(name, sampler, device):
    errs = []
    for steps in (10, 20, 40):
        dm, dc = run_moments(name, sampler, steps, device)
        assert float(dm.abs().max()) < 1e-10  # affine steps that fix mu keep the mean exactly
        errs.append(float(dc.abs().max()))
    assert errs[1] < 0.1, errs
    assert errs[0] / errs[1] > 3 and errs[1] / errs[2] > 3, errs


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_samplers_without_denoising_step_reproduce_p_eps(name, device):
    """denoise=False stops at x_eps: a sample of p_eps = N(alpha mu, alpha^2 Sigma + sigma^2 I)."""
    sde, score = gaussian(name, device)
    x = with_moments(*score.marginal(torch.tensor(sde.T, dtype=F64)), 2000)
    out = SAMPLERS["dpmpp-2m"](score, sde, x, SCHEDULES["logsnr"](sde, 40, device=device, dtype=F64), progress=False,
                                denoise=False)
    m, c = moments(out)
    tm, tc = score.marginal(torch.tensor(sde.eps, dtype=F64))
    torch.testing.assert_close(m, tm, rtol=0, atol=1e-10)
    torch.testing.assert_close(c, tc, rtol=0, atol=0.012)  # measured 7e-3 (VP), 8.5e-3 (VE)


# Measured with n = 100,000: Euler-a bias 0.059 (200 steps) and 0.19 (50 steps); Heun with churn 0.034.
@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("sampler, steps, options, bias", [("euler-a", 200, {}, 0.08),
                                                          ("heun", 40, {"s_churn": 5.0}, 0.05)],
                         ids=["euler-a", "heun-churn"])
def test_stochastic_samplers_reproduce_data_moments(name, sampler, steps, options, bias, device):
    n = 20000
    dm, dc = run_moments(name, sampler, steps, device, n=n, **options)
    tol_m, tol_c = mc_tolerance(n, bias, device)
    assert (dm.abs() <= tol_m).all(), dm
    assert (dc.abs() <= tol_c).all(), dc


def test_euler_ancestral_converges_with_steps(device):
    errs = [float(run_moments("vp", "euler-a", steps, device, n=20000)[1].abs().max()) for steps in (50, 200)]
    assert errs[0] > 2 * errs[1], errs


def test_generator_reproduces_and_global_rng_is_the_default(device):
    sde, score = gaussian("vp", device)
    den = Denoiser(score, sde)
    sigmas = sigma_schedule(den.sigma_min, den.sigma_max, 10).to(device)
    x = torch.randn(100, 2, dtype=F64, device=device) * den.sigma_max
    for sampler, opts in ((sample_euler_ancestral, {}), (sample_heun, {"s_churn": 3.0})):
        a = sampler(den, x, sigmas, disable=True, generator=torch.Generator(device=device).manual_seed(7), **opts)
        torch.manual_seed(7)
        b = sampler(den, x, sigmas, disable=True, **opts)
        c = sampler(den, x, sigmas, disable=True, generator=torch.Generator(device=device).manual_seed(8), **opts)
        assert torch.equal(a, b) and not torch.allclose(a, c)


# -- the engine adapters -----------------------------------------------------------------------------------

class Logged(torch.nn.Module):
    """A score model that records the range of times it is evaluated at."""

    def __init__(self, score):
        super().__init__()
        self.score, self.calls = score, []

    def forward(self, x, t):
        self.calls.append((float(t.min()), float(t.max())))
        return self.score(x, t)


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "heun", "euler-a"])
def test_piecewise_models_are_run_piece_by_piece(sampler, device):
    sde, score = gaussian("vp", device)
    edges = [sde.eps, 0.05, 0.3, sde.T]
    logged = [Logged(score) for _ in edges[1:]]
    model = PiecewiseModel(logged, edges)
    ts = SCHEDULES["karras"](sde, 40, edges, device=device, dtype=F64)
    x = with_moments(*score.marginal(torch.tensor(sde.T, dtype=F64)), 500)
    run = lambda m: SAMPLERS[sampler](m, sde, x, ts, progress=False,  # noqa: E731
                                       generator=torch.Generator(device=device).manual_seed(2))
    split, whole = run(model), run(score)
    for k, piece in enumerate(logged):
        assert piece.calls and all(edges[k] <= lo and hi <= edges[k + 1] for lo, hi in piece.calls), k
    if sampler == "dpmpp-2m":
        # restarts its two-step history at each edge: another run, here more accurate than the unsplit one
        # (covariance errors measured 0.0062 vs 0.0148)
        assert float((moments(split)[1] - denoised_cov(sde, device)).abs().max()) < 0.012
    else:  # single-step samplers are the same run, up to the round-off of t -> sigma -> t
        torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-10)


def test_churn_is_refused_for_piecewise_models(device):
    sde, score = gaussian("vp", device)
    model = PiecewiseModel([score, score], [sde.eps, 0.3, sde.T])
    with pytest.raises(UserError, match="s_churn"):
        SAMPLERS["heun"](model, sde, torch.zeros(4, 2, device=device), SCHEDULES["karras"](sde, 10, model.edges,
                                                                                           device=device),
                          s_churn=1.0, progress=False)


@pytest.mark.parametrize("sampler, nfe", [("dpmpp-2m", 13), ("heun", 25), ("euler-a", 13)])
def test_callback_after_each_step_and_network_evaluations(sampler, nfe, device):
    sde, score = gaussian("ve", device)
    model = Logged(score)
    ts = SCHEDULES["karras"](sde, 12, device=device, dtype=F64)
    seen = []
    x = torch.randn(10, 2, dtype=F64, device=device) * level(sde, sde.T)
    out = SAMPLERS[sampler](model, sde, x, ts, callback=seen.append, progress=False)
    assert [e["i"] for e in seen] == list(range(1, 14))
    assert [float(e["t"]) for e in seen] == ts[1:].tolist() + [0.0]
    assert torch.equal(seen[-1]["x"], out) and torch.equal(seen[-1]["denoised"], out)
    assert len(model.calls) == nfe
    assert min(lo for lo, _ in model.calls) == pytest.approx(sde.eps, rel=1e-12)  # never below eps


# -- agreement with k-diffusion's own samplers ------------------------------------------------------------

@pytest.fixture(scope="module")
def kdiff(k_diffusion):
    """k-diffusion's own sampling module (the shared loader in conftest)."""
    return k_diffusion.sampling


def mixture_denoiser(name: str, device: torch.device) -> Denoiser:
    """A non-linear denoiser: a diffused 5-point Gaussian KDE."""
    sde = make_sde(name)
    g = torch.Generator(device=device).manual_seed(0)
    centres = torch.randn(5, 2, generator=g, dtype=F64, device=device) * 1.5
    return Denoiser(MixtureScore(sde, centres, 0.2), sde)


CASES = [(sample_dpmpp_2m, "sample_dpmpp_2m", {}), (sample_heun, "sample_heun", {}),
         (sample_heun, "sample_heun", {"s_churn": 3.0, "s_noise": 1.007}),  # gamma = 3 / 16, not clamped
         (sample_euler_ancestral, "sample_euler_ancestral", {}),
         (sample_euler_ancestral, "sample_euler_ancestral", {"eta": 0.5, "s_noise": 0.9})]


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
@pytest.mark.parametrize("ours, theirs, options", CASES, ids=["dpmpp-2m", "heun", "heun-churn", "euler-a",
                                                              "euler-a-eta"])
def test_samplers_agree_with_k_diffusion(kdiff, name, ours, theirs, options, device):
    """Same denoiser, same sigmas, same global-RNG noise (churn on every step, so both draw at every step)."""
    den = mixture_denoiser(name, device)
    sigmas = sigma_schedule(den.sigma_min, den.sigma_max, 15).to(device)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(64, 2, generator=g, dtype=F64, device=device) * den.sigma_max
    torch.manual_seed(3)
    want = getattr(kdiff, theirs)(den, x, sigmas, disable=True, **options)
    torch.manual_seed(3)
    got = ours(den, x, sigmas, disable=True, **options)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_heun_with_partial_churn_agrees_with_k_diffusion(kdiff, device):
    """k-diffusion draws churn noise at every step, ours only where gamma > 0: replay its draws by step."""
    den = mixture_denoiser("vp", device)
    sigmas = sigma_schedule(den.sigma_min, den.sigma_max, 15).to(device)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(64, 2, generator=g, dtype=F64, device=device) * den.sigma_max
    options = {"s_churn": 5.0, "s_tmin": 0.05, "s_tmax": 10.0}
    torch.manual_seed(4)
    want = kdiff.sample_heun(den, x, sigmas, disable=True, **options)
    torch.manual_seed(4)
    draws = {float(s): torch.randn_like(x) for s in sigmas[:-1]}
    got = sample_heun(den, x, sigmas, disable=True, noise_sampler=lambda s, s_next: draws[float(s)], **options)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, sample_heun(den, x, sigmas, disable=True), rtol=0, atol=1e-3)  # churn acted


def test_schedules_agree_with_k_diffusion(kdiff):
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # k-diffusion builds its ramp in the default dtype
    try:
        want_k = kdiff.get_sigmas_karras(16, 0.002, 80.0)
        want_e = kdiff.get_sigmas_exponential(16, 0.002, 80.0)
    finally:
        torch.set_default_dtype(old)
    torch.testing.assert_close(sigma_schedule(0.002, 80.0, 15), want_k, rtol=1e-12, atol=0)
    torch.testing.assert_close(sigma_schedule(0.002, 80.0, 15, kind="logsnr"), want_e, rtol=1e-12, atol=0)
    assert math.isclose(float(want_k[0]), 80.0) and float(want_k[-1]) == 0
