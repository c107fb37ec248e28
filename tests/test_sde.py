"""The SDE families against their own definitions: the marginal (alpha_t, sigma_t) must solve the
moment ODEs of dx = f x dt + g dW, the presets must match docs/methods.md, and the prior must be the
Gaussian it claims to be."""

import math

import pytest
import torch

from scorefast.sde import SDE, VESDE, VPSDE, SubVPSDE, make_sde, sde_from_config

CASES = [
    ("vp", {}),
    ("subvp", {}),
    ("ve", {}),
    ("vp-psm", {}),
    ("ve-power", {}),
    ("ve-power", {"base": 2.0}),
    ("vp", {"T": 0.4}),
    ("subvp", {"T": 0.4}),
    ("ve", {"T": 0.4}),
    ("ve-power", {"T": 0.4}),
]


def _id(case):
    name, kw = case
    return name + "".join(f"-{k}{v}" for k, v in kw.items())


@pytest.fixture(params=CASES, ids=[_id(c) for c in CASES])
def sde(request) -> SDE:
    name, kw = request.param
    return make_sde(name, **kw)


def _times(sde: SDE, device: torch.device, n: int = 9) -> torch.Tensor:
    return torch.linspace(sde.eps, sde.T, n, dtype=torch.float64, device=device)


def test_variance_solves_moment_ode(sde, device):
    """d(sigma^2)/dt = 2 f sigma^2 + g^2 with sigma_0 = 0: the marginal std is the SDE's."""
    t, h = _times(sde, device), 1e-6
    dvar = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    rhs = 2 * sde.drift_coef(t) * sde.sigma(t) ** 2 + sde.g2(t)
    torch.testing.assert_close(dvar, rhs, rtol=1e-6, atol=1e-9)
    assert float(sde.sigma(torch.tensor(0.0, dtype=torch.float64, device=device))) == 0.0


def test_mean_scale_solves_moment_ode(sde, device):
    """d(alpha)/dt = f alpha with alpha_0 = 1."""
    t, h = _times(sde, device), 1e-6
    dalpha = (sde.alpha(t + h) - sde.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(dalpha, sde.drift_coef(t) * sde.alpha(t), rtol=1e-6, atol=1e-9)
    assert float(sde.alpha(torch.tensor(0.0, dtype=torch.float64, device=device))) == 1.0


def test_sde_broadcasts_per_example_time(sde, device):
    x = torch.randn(4, 1, 3, 3, dtype=torch.float64, device=device)
    t = torch.linspace(0.1, 0.3, 4, dtype=torch.float64, device=device)
    drift, g = sde.sde(x, t)
    assert drift.shape == x.shape and g.shape == (4, 1, 1, 1)
    torch.testing.assert_close(drift, sde.drift_coef(t)[:, None, None, None] * x)
    torch.testing.assert_close(g.flatten() ** 2, sde.g2(t))


def test_prior_logp_matches_torch_distributions(sde, device):
    z = torch.randn(5, 3, 4, dtype=torch.float64, device=device) * 2
    ref = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(z.cpu()).sum((1, 2))
    torch.testing.assert_close(sde.prior_logp(z).cpu(), ref)


def test_prior_sampling_has_prior_std(sde, device):
    g = torch.Generator(device=device).manual_seed(0)
    n = 200_000
    z = sde.prior_sampling((n,), generator=g, device=device).double()
    s = sde.prior_std()
    assert abs(float(z.mean())) < 5 * s / math.sqrt(n)
    assert abs(float(z.std()) / s - 1) < 5 / math.sqrt(2 * n)


def test_prior_std_is_sigma_at_T_for_ve_and_one_for_vp(sde, device):
    if isinstance(sde, VESDE):
        T = torch.tensor(sde.T, dtype=torch.float64, device=device)
        assert sde.prior_std() == pytest.approx(float(sde.sigma(T)))
    else:
        assert sde.prior_std() == 1.0


def test_perturb_moments_by_monte_carlo(sde, device):
    g = torch.Generator(device=device).manual_seed(1)
    n = 100_000
    x0 = torch.tensor([1.5, -2.0], dtype=torch.float64, device=device).expand(n, 2)
    t = torch.tensor(0.5 * sde.T, dtype=torch.float64, device=device)
    xt = sde.perturb(x0, t, torch.randn(n, 2, generator=g, dtype=torch.float64, device=device))
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    torch.testing.assert_close(xt.mean(0), a * x0[0], rtol=0, atol=5 * s / math.sqrt(n))
    torch.testing.assert_close(xt.std(0), torch.full((2,), s, dtype=torch.float64, device=device),
                               rtol=5 / math.sqrt(2 * n), atol=0)


def test_with_T_keeps_family_and_parameters(sde, device):
    other = sde.with_T(0.25)
    assert type(other) is type(sde) and other.T == 0.25
    assert {**sde.config(), "T": 0.25} == other.config()
    t = torch.tensor(0.2, dtype=torch.float64, device=device)
    assert float(other.sigma(t)) == float(sde.sigma(t))


def test_config_round_trip(sde):
    back = sde_from_config({"name": sde.name, **sde.config()})
    assert type(back) is type(sde) and back.config() == sde.config()


@pytest.mark.parametrize("base, expected", [(2.0, 1.47), (5.0, 2.73)])
def test_ve_power_noise_range_is_small(base, expected, device):
    """docs/methods.md: with g = s^t the largest noise std is only 1.47 (s = 2) or 2.73 (s = 5)."""
    sde = make_sde("ve-power", base=base)
    assert float(sde.sigma(torch.tensor(1.0, dtype=torch.float64, device=device))) == pytest.approx(expected, abs=5e-3)
    assert sde.prior_std() == pytest.approx(expected, abs=5e-3)


def test_ve_power_default_base_is_five():
    assert make_sde("ve-power").base == 5.0


def test_vp_psm_is_beta_2ct_with_c5(device):
    sde = make_sde("vp-psm")
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64, device=device)
    torch.testing.assert_close(sde.g2(t), 10 * t)
    torch.testing.assert_close(sde.alpha(t), torch.exp(-2.5 * t**2))


@pytest.mark.parametrize("T, a_T", [(0.2, 0.658), (0.4, 0.195), (0.6, 0.026), (1.0, 4.3e-5)])
def test_vp_signal_left_at_T(T, a_T, device):
    """docs/methods.md 2: a_T = exp(-int_0^T beta) = alpha_T^2 for beta 0.1..20."""
    alpha = make_sde("vp").alpha(torch.tensor(T, dtype=torch.float64, device=device))
    assert float(alpha**2) == pytest.approx(a_T, rel=2e-2)


def test_geometric_ve_kernel_is_sigma_squared_minus_smin_squared(device):
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    t = torch.linspace(0.0, 1.0, 7, dtype=torch.float64, device=device)
    geo = 0.01 * 5000.0**t
    torch.testing.assert_close(sde.sigma(t) ** 2, geo**2 - 0.01**2)


def test_subvp_std_is_below_vp_std(device):
    t = torch.linspace(0.01, 1.0, 20, dtype=torch.float64, device=device)
    assert (SubVPSDE().sigma(t) < VPSDE().sigma(t)).all()


def test_make_sde_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown --sde 'vpp'; choose one of vp, subvp, ve, vp-psm, ve-power"):
        make_sde("vpp")


@pytest.mark.parametrize("build", [
    lambda: VPSDE(T=1.0, eps=1.0),
    lambda: VPSDE(eps=0.0),
    lambda: VPSDE(beta_min=-1.0),
    lambda: VESDE(sigma_min=1.0, sigma_max=0.5),
    lambda: VESDE(base=1.0),
])
def test_invalid_parameters_raise(build):
    with pytest.raises(ValueError):
        build()


def test_snr_in_closed_form(device):
    """VP: alpha^2 = e^-B, sigma^2 = 1 - e^-B (B = int beta), so SNR = 1 / (e^B - 1), log-SNR = -log(e^B - 1),
    and the noise level sigma / alpha = sqrt(e^B - 1); geometric VE: alpha = 1, so SNR = 1 / sigma^2."""
    t = torch.linspace(0.01, 1.0, 9, dtype=torch.float64, device=device)
    vp = make_sde("vp")
    em1 = torch.expm1(0.1 * t + 9.95 * t**2)
    torch.testing.assert_close(vp.snr(t), 1 / em1)
    torch.testing.assert_close(vp.log_snr(t), -torch.log(em1))
    torch.testing.assert_close(vp.noise_level(t), em1.sqrt())
    ve = make_sde("ve")
    var = 0.01**2 * (5000 ** (2 * t) - 1)
    torch.testing.assert_close(ve.snr(t), 1 / var)
    torch.testing.assert_close(ve.noise_level(t), var.sqrt())


def test_log_snr_decreases_and_agrees_with_snr(sde, device):
    t = _times(sde, device)
    lam = sde.log_snr(t)
    assert (lam.diff() < 0).all()
    torch.testing.assert_close(lam, sde.snr(t).log())
    torch.testing.assert_close(sde.noise_level(t), (-lam / 2).exp())


@pytest.mark.parametrize("T, holds", [(1.0, True), (0.999, False), (0.4, False)])
def test_reference_prior_holds_at_T_only_for_the_full_diffusion(T, holds):
    for name in ("vp", "ve", "subvp"):
        assert make_sde(name, T=T).prior_holds_at_T is holds
