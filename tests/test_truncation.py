"""Shorter diffusion times: priors at T, the ELBO and its parts, the prior-gap bound and the choice of T.

Gaussian data N(mu, cov) has an exact score, exact marginals and an exact log p_eps, so every ELBO part
has a closed form (a one-dimensional time integral, done here by Gauss-Legendre quadrature):
with x_t = a_t x + s_t z the forward kernel from eps, C_t = alpha_t^2 cov + sigma_t^2 I, P_t = C_t^-1,
r_t = a_t x - alpha_t mu and the exact score s = -P_t (x_t - alpha_t mu),
    E_z[ ||s||^2 + 2 s.z / s_t ] = r^T P^2 r + s_t^2 tr P^2 - 2 tr P,
    E_z log N(x_T; m_T, C_T) = log N(a_T x; m_T, C_T) - s_T^2 tr(C_T^-1) / 2.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from scorefast.analytic import GaussianScore
from scorefast.errors import UserError
from scorefast.likelihood import log_likelihood
from scorefast.methods.densities import FlowPrior, GaussianPrior, StandardPrior, forward_moments
from scorefast.methods.elbo import choose_T, elbo, kernel_from_eps, prior_gap, prior_gap_bound
from scorefast.methods.priors import PRIORS
from scorefast.sampling import sample
from scorefast.sde import SDE, VESDE, VPSDE, SubVPSDE

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
POINTS = torch.tensor([[0.0, 0.0], [1.0, -0.5], [3.0, 1.0], [-2.0, 2.0]], dtype=torch.float64)
FAMILIES = [VPSDE(T=1.0), VPSDE(T=0.3), SubVPSDE(T=0.5), VESDE(T=1.0), VESDE(T=0.4), VESDE(base=5.0, T=1.0)]

OFFCENTRE_MEANS = torch.tensor([[4.0, 3.0], [5.0, 1.5], [2.5, 2.0]])
OFFCENTRE_STDS = torch.tensor([0.4, 0.3, 0.5])


def make_prior(name: str, dim: int, sde: SDE, **options):
    """The density of the registered prior plug-in ``name`` (options are the plug-in's fields)."""
    return PRIORS.create(name, **options).build(dim, sde)


def _t(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def _gaussian(mean: torch.Tensor, cov: torch.Tensor) -> torch.distributions.MultivariateNormal:
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)


def exact_parts(sde: SDE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Closed-form ELBO parts for N(MU, COV) data, the exact score and nu = p_T; plus log p_eps(x)."""
    d = x.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    T = _t(sde.T)
    a_T, s_T = kernel_from_eps(sde, T)
    C_T = sde.alpha(T) ** 2 * COV + sde.sigma(T) ** 2 * eye
    prior = _gaussian(sde.alpha(T) * MU, C_T).log_prob(a_T * x) - 0.5 * s_T**2 * torch.linalg.inv(C_T).trace()
    nodes, weights = np.polynomial.legendre.leggauss(400)
    u, w = torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    t = sde.eps + (sde.T - sde.eps) * u**2
    jac = 2 * (sde.T - sde.eps) * u
    a, s = kernel_from_eps(sde, t)
    P = torch.linalg.inv(sde.alpha(t)[:, None, None] ** 2 * COV + sde.sigma(t)[:, None, None] ** 2 * eye)
    r = a[:, None, None] * x - sde.alpha(t)[:, None, None] * MU
    Pr = torch.einsum("nij,nbj->nbi", P, r)
    tr_P = P.diagonal(dim1=1, dim2=2).sum(1)
    tr_P2 = (P @ P).diagonal(dim1=1, dim2=2).sum(1)
    h = sde.g2(t)[:, None] * (Pr.pow(2).sum(-1) + (s**2 * tr_P2 - 2 * tr_P)[:, None])
    score = -0.5 * ((w * jac)[:, None] * h).sum(0)
    theta = d * (torch.log(sde.alpha(T)) - torch.log(sde.alpha(_t(sde.eps)))) * torch.ones(x.shape[0], dtype=x.dtype)
    te = _t(sde.eps)
    log_p_eps = _gaussian(sde.alpha(te) * MU, sde.alpha(te) ** 2 * COV + sde.sigma(te) ** 2 * eye).log_prob(x)
    return {"prior_term": prior, "score_term": score, "theta_free": theta, "log_p_eps": log_p_eps}


def gaussian_sample(mean: torch.Tensor, cov: torch.Tensor, n: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, mean.numel(), generator=g, dtype=torch.float64, device=device)
    return mean.to(device) + z @ torch.linalg.cholesky(cov.to(device)).T


def exact_model(sde: SDE, device: torch.device) -> tuple[GaussianScore, GaussianPrior]:
    """The exact score and p_T itself as the prior, both on ``device`` (the prior from the score's moments)."""
    model = GaussianScore(sde, MU.float(), COV.float()).to(device)
    return model, GaussianPrior.from_moments(*model.marginal(_t(sde.T)))


def offcentre(n: int, generator: torch.Generator) -> torch.Tensor:
    device = generator.device
    k = torch.randint(0, 3, (n,), generator=generator, device=device)
    z = torch.randn(n, 2, generator=generator, device=device)
    return OFFCENTRE_MEANS.to(device)[k] + OFFCENTRE_STDS.to(device)[k, None] * z


def offcentre_logp_T(sde: SDE, x: torch.Tensor) -> torch.Tensor:
    """Exact log p_T of the off-centre mixture: sum_k 1/3 N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I) (on CPU)."""
    x = x.cpu()
    T = torch.tensor(sde.T)
    a, s = sde.alpha(T), sde.sigma(T)
    var = a * a * OFFCENTRE_STDS**2 + s * s
    comp = -0.5 * (x[:, None, :] - a * OFFCENTRE_MEANS).pow(2).sum(-1) / var - torch.log(2 * math.pi * var)
    return torch.logsumexp(comp - math.log(3), 1)


# ---------------------------------------------------------------------------------------------------
# the ELBO


@pytest.mark.parametrize("sde", FAMILIES, ids=repr)
def test_elbo_decomposition_is_exact_for_the_true_model(sde):
    """Derivation check (no Monte Carlo): with the exact score and nu = p_T the three closed-form parts
    add up to log p_eps(x) for every x, for VP, sub-VP and VE; so theta_free = d log(alpha_T/alpha_eps)."""
    parts = exact_parts(sde, POINTS)
    total = parts["prior_term"] + parts["score_term"] + parts["theta_free"]
    torch.testing.assert_close(total, parts["log_p_eps"], rtol=0, atol=1e-8)


@pytest.mark.parametrize("sde", FAMILIES, ids=repr)
def test_theta_free_closed_forms(sde, device):
    """d int f dt = d log(alpha_T / alpha_eps) (this module's grouping), and docs/methods.md's grouping
    d/2 int (g^2/sigma^2 + 2 f) dt = d/2 log(sigma_T^2 / sigma_eps^2), both by quadrature."""
    nodes, weights = np.polynomial.legendre.leggauss(200)
    lo, hi = math.log(sde.eps), math.log(sde.T)
    t = torch.from_numpy(np.exp(lo + (hi - lo) * (nodes + 1) / 2))
    w = torch.from_numpy(weights) * (hi - lo) / 2 * t
    f = sde.drift_coef(t)
    quad_f = float((w * f).sum())
    quad_methods = float((w * (sde.g2(t) / sde.sigma(t) ** 2 + 2 * f)).sum())
    T, te = _t(sde.T), _t(sde.eps)
    assert quad_f == pytest.approx(float(torch.log(sde.alpha(T) / sde.alpha(te))), abs=1e-9)
    assert quad_methods == pytest.approx(float(torch.log(sde.sigma(T) ** 2 / sde.sigma(te) ** 2)), rel=1e-6)
    out = elbo(lambda x, t: torch.zeros_like(x), sde, POINTS.to(device), None, n_t=1)
    torch.testing.assert_close(out["theta_free"], torch.full((4,), 2 * quad_f, dtype=torch.float64, device=device))


@pytest.mark.parametrize("sde", [VPSDE(T=1.0), VPSDE(T=0.3), VESDE(T=0.4)], ids=repr)
def test_elbo_monte_carlo_matches_closed_forms(sde, device):
    """Each Monte Carlo part agrees with its closed form within 5 standard errors, and the ELBO of the
    exact model is unbiased for log p_eps(x) (the bound is tight)."""
    model, prior = exact_model(sde, device)
    reps = 400
    x = POINTS.float().to(device).repeat_interleave(reps, 0)
    out = elbo(model, sde, x, prior, n_t=64, generator=torch.Generator(device=device).manual_seed(0))
    exact = exact_parts(sde, POINTS)
    exact["elbo"] = exact["log_p_eps"]
    for key in ("prior_term", "score_term", "elbo"):
        v = out[key].double().view(4, reps).cpu()
        se = v.std(1) / math.sqrt(reps)
        assert ((v.mean(1) - exact[key]).abs() < 5 * se + 1e-3).all(), key
    assert out["elbo"].shape == (4 * reps,)


def test_elbo_gap_with_the_standard_prior_is_the_prior_kl(device):
    """For x ~ p_eps the forward kernel from eps gives x_T ~ p_T, so with the exact score the mean gap
    log p_eps - ELBO equals KL[p_T || N(0, I)] when nu = N(0, I), and ~0 when nu = p_T."""
    sde = VPSDE(T=0.2)
    model, exact_prior = exact_model(sde, device)
    te, T = _t(sde.eps), _t(sde.T)
    eye = torch.eye(2, dtype=torch.float64)
    p_eps = _gaussian(sde.alpha(te) * MU, sde.alpha(te) ** 2 * COV + sde.sigma(te) ** 2 * eye)
    x = gaussian_sample(p_eps.mean, p_eps.covariance_matrix, 4000, seed=11, device=device).float()
    gen = torch.Generator(device=device).manual_seed(1)
    exact_logp = p_eps.log_prob(x.double().cpu())
    standard = StandardPrior(2).to(device)
    gap_std = (exact_logp - elbo(model, sde, x, standard, n_t=32, generator=gen)["elbo"].cpu()).mean()
    gap_exact = (exact_logp - elbo(model, sde, x, exact_prior, n_t=32, generator=gen)["elbo"].cpu()).mean()
    p_T = _gaussian(sde.alpha(T) * MU, sde.alpha(T) ** 2 * COV + sde.sigma(T) ** 2 * eye)
    kl = torch.distributions.kl_divergence(p_T, _gaussian(torch.zeros(2, dtype=torch.float64), eye))
    assert float(gap_std) == pytest.approx(float(kl), abs=0.06)
    assert abs(float(gap_exact)) < 0.06
    assert float(kl) > 0.5
    assert float(gap_std) <= prior_gap_bound(sde, x.double() / sde.alpha(te)) + 0.06


def test_elbo_is_below_log_p_eps_for_a_wrong_score(device):
    """A mis-specified score (that of N(mu, 4 cov)) lowers the mean ELBO below E log p_eps."""
    sde = VPSDE(T=1.0)
    x = gaussian_sample(MU, COV, 2000, seed=12, device=device).float()
    te = _t(sde.eps)
    eye = torch.eye(2, dtype=torch.float64)
    p_eps = _gaussian(sde.alpha(te) * MU, sde.alpha(te) ** 2 * COV + sde.sigma(te) ** 2 * eye)
    wrong = GaussianScore(sde, MU.float(), 4 * COV.float()).to(device)
    out = elbo(wrong, sde, x, None, n_t=32, generator=torch.Generator(device=device).manual_seed(2))
    assert float(out["elbo"].mean()) < float(p_eps.log_prob(x.double().cpu()).mean()) - 0.2


def test_elbo_agrees_with_the_pf_ode_likelihood_for_the_exact_model(device):
    """With the exact score and nu = p_T, the mean ELBO equals the engine's PF-ODE log p_eps(x)."""
    sde = VPSDE(T=0.5)
    model, prior = exact_model(sde, device)
    x = POINTS.float().to(device)
    ode = log_likelihood(model, sde, x, steps=60, prior_logp=prior.log_prob)
    parts = exact_parts(sde, POINTS)
    torch.testing.assert_close(ode.double().cpu(), parts["log_p_eps"], rtol=0, atol=2e-3)
    reps = 300
    out = elbo(model, sde, x.repeat_interleave(reps, 0), prior, n_t=64,
               generator=torch.Generator(device=device).manual_seed(3))
    v = out["elbo"].double().view(4, reps)
    assert ((v.mean(1) - ode.double()).abs() < 5 * v.std(1) / math.sqrt(reps) + 2e-3).all()


def test_elbo_takes_image_shaped_data_and_rejects_bad_counts(device):
    sde = VPSDE(T=0.5)
    x = torch.randn(3, 1, 2, 2, device=device)
    out = elbo(lambda y, t: -y, sde, x, StandardPrior(4).to(device), n_t=4)
    assert set(out) == {"prior_term", "score_term", "theta_free", "elbo"}
    assert all(v.shape == (3,) and torch.isfinite(v).all() for v in out.values())
    with pytest.raises(UserError, match="n_t"):
        elbo(lambda y, t: -y, sde, x, None, n_t=0)


# ---------------------------------------------------------------------------------------------------
# the prior gap and the choice of T


def test_prior_gap_bound_reproduces_methods_a_T(device):
    """a_T = exp(-int_0^T beta) = 0.658, 0.195, 0.026, 4.3e-5 at T = 0.2, 0.4, 0.6, 1.0 (docs/methods.md),
    read back from the bound: it is 1/2 d (-a - log(1 - a)) + a E||x0||^2 / 2."""
    x_zero = torch.zeros(10, 3, device=device)
    x_unit = torch.ones(10, 3, device=device)  # E||x0||^2 = 3
    for T, a_ref in [(0.2, 0.658), (0.4, 0.195), (0.6, 0.026), (1.0, 4.3e-5)]:
        sde = VPSDE(T=T)
        a = 2 * (prior_gap_bound(sde, x_unit) - prior_gap_bound(sde, x_zero)) / 3
        assert a == pytest.approx(a_ref, rel=0.01)
        assert prior_gap_bound(sde, x_zero) == pytest.approx(1.5 * (-a - math.log(1 - a)), rel=1e-6)


def test_prior_gap_bound_is_an_upper_bound_on_the_kl(device):
    for sde in (VPSDE(T=0.4), SubVPSDE(T=0.6), VESDE(T=0.5)):
        x0 = gaussian_sample(MU, COV, 20000, seed=13, device=device)
        T = _t(sde.T)
        eye = torch.eye(2, dtype=torch.float64)
        p_T = _gaussian(sde.alpha(T) * MU, sde.alpha(T) ** 2 * COV + sde.sigma(T) ** 2 * eye)
        ref = _gaussian(torch.zeros(2, dtype=torch.float64), sde.prior_std() ** 2 * eye)
        assert float(torch.distributions.kl_divergence(p_T, ref)) <= prior_gap_bound(sde, x0) + 1e-6


def test_prior_gap_of_one_point_is_the_closed_form_kl():
    """One data point makes p_T the Gaussian N(alpha_T x0, sigma_T^2 I): against N(0, s^2 I) the Monte-Carlo KL is
    the closed form (prior_gap_bound is exact there), and the moment-matched prior is p_T itself (0 on every draw)."""
    x0 = torch.tensor([[1.5, -0.5, 2.0]], dtype=torch.float64)
    for sde in (VPSDE(T=0.3), VESDE(T=0.5)):
        gap = prior_gap(sde, x0, StandardPrior(3, std=sde.prior_std()), n=20000,
                        generator=torch.Generator().manual_seed(0))
        assert gap["kl"] == pytest.approx(prior_gap_bound(sde, x0), abs=4 * gap["sem"] + 1e-3)
        assert gap["kl_per_dim"] == pytest.approx(gap["kl"] / 3)
        matched = GaussianPrior.from_moments(*[m.float() for m in forward_moments(x0, sde)])
        exact = prior_gap(sde, x0, matched, n=1000, generator=torch.Generator().manual_seed(1))
        assert abs(exact["kl"]) < 1e-3 and exact["sem"] < 1e-4


def test_prior_gap_of_a_mixture_lies_between_zero_and_the_bound_and_the_matched_gaussian_is_closer():
    """Two separated points (a bimodal p_T): 0 < KL[p_T || moment-matched] < KL[p_T || standard] <= the convexity
    bound; by a margin far beyond the Monte-Carlo error."""
    x0 = torch.tensor([[3.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    sde = VPSDE(T=0.2)
    g = torch.Generator().manual_seed(2)
    standard = prior_gap(sde, x0, StandardPrior(2), n=20000, generator=g)
    matched = prior_gap(sde, x0, GaussianPrior.from_moments(*[m.float() for m in forward_moments(x0, sde)]),
                        n=20000, generator=g)
    assert 10 * matched["sem"] < matched["kl"] < standard["kl"] - 10 * standard["sem"]
    assert standard["kl"] <= prior_gap_bound(sde, x0) + 4 * standard["sem"]
    with pytest.raises(UserError, match="n must be"):
        prior_gap(sde, x0, StandardPrior(2), n=1)


def test_choose_T():
    assert choose_T([1.0, 0.4, 0.6], {1.0: -1.52, 0.6: -1.49, 0.4: -1.50}) == 0.6
    assert choose_T([1.0, 0.6, 0.4], {1.0: -1.5, 0.6: -1.5, 0.4: -1.6}) == 0.6
    assert choose_T([0.5], {0.5: -3.0}) == 0.5
    assert choose_T([1.0, 0.5], {1.0: -2.0, 0.5: float("nan")}) == 1.0
    with pytest.raises(UserError, match="0.3"):
        choose_T([0.3, 1.0], {1.0: -2.0})
    with pytest.raises(UserError):
        choose_T([], {})


# ---------------------------------------------------------------------------------------------------
# priors


def test_moment_matched_prior_of_one_example_is_its_exact_law_at_T():
    """Memorisation: for one example x0, p_T = N(alpha_T x0, sigma_T^2 I) exactly, and the fit gives it."""
    from scorefast.sde import make_sde
    sde = make_sde("ve-power")
    x0 = torch.linspace(-1, 1, 12).reshape(1, 12)
    prior = GaussianPrior(12)
    prior.fit(x0, sde, progress=False)
    a, s = (float(f(torch.tensor(sde.T, dtype=torch.float64))) for f in (sde.alpha, sde.sigma))
    torch.testing.assert_close(prior.mean, (a * x0[0]).to(prior.mean), rtol=0, atol=1e-6)
    torch.testing.assert_close(prior.tril, s * torch.eye(12, dtype=prior.tril.dtype), rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match="no data points to fit on"):
        prior.fit(x0[:0], sde, progress=False)


@pytest.mark.parametrize("T", [0.1, 0.5, 1.0])
def test_moment_matched_prior_is_exact_on_gaussian_data(T, device):
    """On Gaussian data p_T is Gaussian: the moment-matched prior's term equals E log p_T(x_T)."""
    sde = VPSDE(T=T)
    x0 = gaussian_sample(MU, COV, 100000, seed=4, device=device).float()
    prior = GaussianPrior(2).to(device)
    info = prior.fit(x0, sde, progress=False)
    assert info["steps"] == 0 and info["seconds"] < 5
    model, exact_prior = exact_model(sde, device)
    torch.testing.assert_close(prior.mean, exact_prior.mean, rtol=0, atol=0.02)
    torch.testing.assert_close(prior.tril, exact_prior.tril, rtol=0, atol=0.02)
    x = POINTS.float().to(device)
    ours, exact = (elbo(model, sde, x, p, n_t=1, n_prior=64,
                        generator=torch.Generator(device=device).manual_seed(5))["prior_term"]
                   for p in (prior, exact_prior))
    torch.testing.assert_close(ours, exact, rtol=3e-3, atol=0.02)
    if T < 0.5:  # on data, N(0, I) is far from p_T at small T
        gen = torch.Generator(device=device).manual_seed(5)
        ours = elbo(model, sde, x0[:2000], prior, n_t=1, generator=gen)["prior_term"].mean()
        std = elbo(model, sde, x0[:2000], StandardPrior(2).to(device), n_t=1, generator=gen)["prior_term"].mean()
        assert std < ours - 0.5
    small = x0[:40]  # below 50 points nothing is held out: the moments are those of the whole set
    prior.fit(small, sde, progress=False)
    mean, cov = forward_moments(small, sde)
    torch.testing.assert_close(mean, (sde.alpha(_t(T)) * small.double().mean(0)))
    torch.testing.assert_close(prior.mean, mean.float())
    torch.testing.assert_close(prior.tril @ prior.tril.T, cov.float(), rtol=1e-5, atol=1e-6)


def test_truncated_sampling_from_the_exact_p_T_reproduces_the_data(device):
    """x_T ~ p_T (exact), then the PF-ODE from T = 0.3 with the exact score: samples have the moments
    of p_eps; starting from N(0, I) instead they do not."""
    sde = VPSDE(T=0.3)
    model, prior = exact_model(sde, device)
    n = 4000
    te = _t(sde.eps)
    mean_ref = (sde.alpha(te) * MU).float()
    cov_ref = (sde.alpha(te) ** 2 * COV + sde.sigma(te) ** 2 * torch.eye(2, dtype=torch.float64)).float()
    x = sample(model, sde, n, (2,), sampler="ode", steps=40, prior=prior, device=device,
               generator=torch.Generator(device=device).manual_seed(6), progress=False).cpu()
    assert (x.mean(0) - mean_ref).abs().max() < 4 * math.sqrt(float(cov_ref.diagonal().max()) / n)
    torch.testing.assert_close(torch.cov(x.T), cov_ref, rtol=0, atol=0.08)
    x_std = sample(model, sde, n, (2,), sampler="ode", steps=40, prior=StandardPrior(2).to(device), device=device,
                   generator=torch.Generator(device=device).manual_seed(6), progress=False).cpu()
    assert (x_std.mean(0) - mean_ref).abs().max() > 0.3


@pytest.mark.slow
def test_gmm_and_flow_fit_the_offcentre_mixture_at_T_025(device):
    """Held-out NLL at T = 0.25 (nats, paired on the same 20,000 fresh forward samples of new data):
    the GMM and the flow are within 0.01 of the exact p_T, clearly better than the moment-matched
    Gaussian, and far better than N(0, I)."""
    sde = VPSDE(T=0.25)
    gen = torch.Generator(device=device).manual_seed(7)
    x0 = offcentre(4000, gen)
    T = torch.tensor(sde.T)
    points = offcentre(20000, gen)
    x_test = sde.alpha(T) * points + sde.sigma(T) * torch.randn(20000, 2, generator=gen, device=device)
    exact = -float(offcentre_logp_T(sde, x_test).mean())
    nll, info = {}, {}
    for name in ("standard", "gaussian", "gmm", "flow"):
        prior = make_prior(name, 2, sde).to(device)
        info[name] = prior.fit(x0, sde, progress=False)
        with torch.no_grad():
            nll[name] = -float(prior.log_prob(x_test).mean())
    assert nll["standard"] > exact + 3
    assert nll["gaussian"] > exact + 0.015
    for name in ("gmm", "flow"):
        assert nll[name] < exact + 0.01, (name, nll, exact)
        assert abs(info[name]["val_nll"] - nll[name]) < 0.1
        assert info[name]["seconds"] < 30


@pytest.mark.parametrize("name", ["standard", "gaussian", "gmm", "flow"])
def test_prior_checkpoint_round_trip_and_sampling(name, device):
    """Every prior rebuilds from config() plus a weights_only state dict, gives (n, d) samples, and
    its samples carry the data's forward mean."""
    sde = VPSDE(T=0.3)
    gen = torch.Generator(device=device).manual_seed(8)
    x0 = offcentre(600, gen)
    prior = make_prior(name, 2, sde).to(device)
    info = prior.fit(x0, sde, steps=40, progress=False)
    assert set(info) == {"seconds", "steps", "val_nll"} and math.isfinite(info["val_nll"])
    buf = io.BytesIO()
    torch.save(prior.state_dict(), buf)
    buf.seek(0)
    clone = make_prior(name, 2, sde).to(device)
    clone.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(7, 2, device=device)
    torch.testing.assert_close(clone.log_prob(x), prior.log_prob(x))
    xs = clone.sample(3000, generator=torch.Generator(device=device).manual_seed(9))
    assert xs.shape == (3000, 2) and xs.device == device and torch.isfinite(clone.log_prob(xs)).all()
    torch.testing.assert_close(clone.sample(5, torch.Generator(device=device).manual_seed(1)),
                               clone.sample(5, torch.Generator(device=device).manual_seed(1)))
    if name != "standard":
        target = forward_moments(x0, sde)[0].float()
        assert (xs.mean(0) - target).abs().max() < 0.1


def test_flow_starts_at_the_moment_matched_gaussian_and_handles_d1(device):
    sde = VPSDE(T=0.3)
    x0 = torch.randn(300, 1, generator=torch.Generator(device=device).manual_seed(14), device=device) * 0.3 + 2
    gauss = GaussianPrior(1).to(device)
    gauss.fit(x0, sde, progress=False)
    flow = FlowPrior(1).to(device)
    flow.fit(x0, sde, steps=1, lr=1e-12, progress=False)
    x = torch.linspace(-2, 4, 9, device=device)[:, None]
    assert flow.log_prob(x).shape == (9,) and flow.sample(4).shape == (4, 1)
    torch.testing.assert_close(flow.log_prob(x), gauss.log_prob(x), rtol=0, atol=1e-4)
    assert FlowPrior(2).kind == "nsf" and FlowPrior(64).kind == "maf"


# ---------------------------------------------------------------------------------------------------
# bad input


def test_bad_prior_input_raises_user_errors(monkeypatch, device):
    sde = VPSDE(T=0.3)
    with pytest.raises(UserError, match="standard, gaussian, gmm, flow"):
        make_prior("nomral", 2, sde)
    with pytest.raises(UserError, match="prior 'gmm' has no option"):
        make_prior("gmm", 2, sde, components=3)
    with pytest.raises(UserError, match="kind"):
        FlowPrior(2, kind="realnvp")
    prior = make_prior("gaussian", 2, sde).to(device)
    with pytest.raises(UserError, match="dimension 2"):
        prior.fit(torch.randn(100, 3, device=device), sde, progress=False)
    with pytest.raises(UserError, match="non-finite"):
        prior.fit(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]], device=device), sde, progress=False)
    with pytest.raises(UserError, match="steps"):
        make_prior("flow", 2, sde).to(device).fit(torch.randn(100, 2, device=device), sde, steps=0, progress=False)


def test_flow_fit_reports_the_step_of_a_non_finite_log_prob(monkeypatch, device):
    flow = FlowPrior(2).to(device)
    original = FlowPrior.log_prob
    calls = {"n": 0}

    def flaky(self, x):
        out = original(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= 3:
                out = out + float("nan")
        return out

    monkeypatch.setattr(FlowPrior, "log_prob", flaky)
    with pytest.raises(UserError, match="step 3 "):
        flow.fit(torch.randn(200, 2, device=device), VPSDE(T=0.3), progress=False)


def test_flow_fit_is_scale_free(device):
    """The flow models the whitened residual, so data at scale 1e30 fit like data at scale 1."""
    x0 = torch.randn(400, 2, generator=torch.Generator(device=device).manual_seed(10), device=device)
    sde = VPSDE(T=0.3)
    unit = FlowPrior(2).to(device).fit(x0, sde, steps=20, progress=False)["val_nll"]
    huge = FlowPrior(2).to(device).fit(x0 * 1e30, sde, steps=20, progress=False)["val_nll"]
    assert huge == pytest.approx(unit + 2 * math.log(1e30 * float(sde.alpha(torch.tensor(0.3)))), rel=1e-3)
