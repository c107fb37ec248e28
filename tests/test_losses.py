"""Losses against closed forms: with the exact score of Gaussian data, score regression is zero and
DSM sits exactly at its irreducible value; weightings and the sampling of t are as documented."""

import math

import pytest
import torch

from scorefast.analytic import GaussianScore
from scorefast.losses import DSMLoss, ScoreRegressionLoss
from scorefast.nets import ScoreParam, make_model
from scorefast.sde import make_sde
from scorefast.weightings import WEIGHTINGS

MEAN = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
COV = torch.tensor([[0.5, 0.2, 0.0], [0.2, 0.3, 0.05], [0.0, 0.05, 0.1]], dtype=torch.float64)


def _gaussian_data(n: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64, device=device)
    return MEAN.to(device) + z @ torch.linalg.cholesky(COV.to(device)).T


@pytest.mark.parametrize("name, t", [("vp", 0.05), ("vp", 0.3), ("subvp", 0.2), ("ve", 0.5), ("ve-power", 0.1)])
def test_dsm_with_exact_score_is_irreducible_value(name, t, device):
    """E||sigma s*(x_t) + z||^2 / d = 1 - sigma^2 tr(Sigma_t^-1) / d (Stein's lemma), at a fixed t."""
    sde = make_sde(name)
    exact = GaussianScore(sde, MEAN, COV).to(device)
    n = 40_000
    x0 = _gaussian_data(n, seed=0, device=device)
    tt = torch.full((n,), t, dtype=torch.float64, device=device)
    noise = torch.randn(n, 3, generator=torch.Generator(device=device).manual_seed(1), dtype=torch.float64,
                        device=device)
    per_example = DSMLoss(sde)(ScoreParam(exact, sde), x0, tt, noise)
    _, cov_t = exact.marginal(torch.tensor(t, dtype=torch.float64, device=device))
    sigma = sde.sigma(torch.tensor(t, dtype=torch.float64, device=device))
    expected = float(1 - sigma**2 * torch.linalg.inv(cov_t).trace() / 3)
    assert 0.1 < expected < 0.9  # away from the trivial values 1 (sigma -> 0) and 0 (sigma -> inf)
    se = float(per_example.std()) / math.sqrt(n)
    assert float(per_example.mean()) == pytest.approx(expected, abs=5 * se)


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
@pytest.mark.parametrize("weighting", WEIGHTINGS.names())
def test_regression_on_exact_score_is_zero(name, weighting, device):
    sde = make_sde(name)
    exact = GaussianScore(sde, MEAN, COV).to(device)
    loss = ScoreRegressionLoss(sde, exact, weighting=weighting)(ScoreParam(exact, sde),
                                                                _gaussian_data(256, seed=2, device=device))
    assert loss.shape == (256,)
    assert float(loss.abs().max()) < 1e-20


def test_regression_is_positive_for_a_wrong_score(device):
    sde = make_sde("vp")
    exact = GaussianScore(sde, MEAN, COV).to(device)
    wrong = GaussianScore(sde, MEAN + 0.5, COV).to(device)
    loss = ScoreRegressionLoss(sde, exact)(ScoreParam(wrong, sde), _gaussian_data(256, seed=3, device=device))
    assert float(loss.min()) > 0


def test_weightings_equal_their_formulas(device):
    """VP with beta 0.1..20: g^2 = beta, sigma^2 = 1 - exp(-int beta), written out independently."""
    sde = make_sde("vp")
    t = torch.linspace(0.01, 1.0, 11, dtype=torch.float64, device=device)
    beta = 0.1 + 19.9 * t
    var = 1 - torch.exp(-(0.1 * t + 9.95 * t**2))
    expected = {"epsilon": torch.ones_like(t), "likelihood": beta / var, "inv_g2": 1 / (2 * beta)}
    for name, w in expected.items():
        torch.testing.assert_close(DSMLoss(sde, weighting=name).weight(t), w)


def test_loss_is_weight_times_epsilon_loss(device):
    torch.manual_seed(0)
    sde = make_sde("vp")
    model = make_model(sde, (2,)).double().to(device)
    x0 = torch.randn(64, 2, dtype=torch.float64, device=device)
    t = DSMLoss(sde).sample_t(64, device, dtype=torch.float64)
    z = torch.randn_like(x0)
    base = DSMLoss(sde)(model, x0, t, z)
    manual = (z - model.net(sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * z, t)).pow(2).mean(1)
    torch.testing.assert_close(base, manual)
    for name in ("likelihood", "inv_g2"):
        weight = WEIGHTINGS.create(name)(sde, t)
        torch.testing.assert_close(DSMLoss(sde, weighting=name)(model, x0, t, z), weight * base)


@pytest.mark.parametrize("stratified", [False, True])
def test_t_stays_in_range(stratified, device):
    torch.manual_seed(0)
    loss = DSMLoss(make_sde("vp", T=0.6), t_min=0.1, stratified=stratified)
    assert (loss.t_min, loss.t_max) == (0.1, 0.6)
    t = loss.sample_t(10_000, device)
    assert t.device == device
    assert float(t.min()) >= 0.1 and float(t.max()) <= 0.6
    assert float(t.mean()) == pytest.approx(0.35, abs=0.01)


def test_default_range_is_eps_to_T():
    sde = make_sde("ve", T=0.5, eps=1e-2)
    loss = DSMLoss(sde)
    assert (loss.t_min, loss.t_max) == (1e-2, 0.5)


def test_stratified_puts_one_time_in_each_bin(device):
    torch.manual_seed(0)
    n = 64
    loss = DSMLoss(make_sde("vp"), t_min=0.2, t_max=0.8, stratified=True)
    t = loss.sample_t(n, device, dtype=torch.float64)
    bins = torch.floor((t - 0.2) / 0.6 * n).long()
    assert torch.equal(bins.sort().values, torch.arange(n, device=device))


def test_times_follow_data_dtype(device):
    sde = make_sde("vp")
    model = make_model(sde, (2,)).double().to(device)
    assert DSMLoss(sde)(model, torch.randn(8, 2, dtype=torch.float64, device=device)).dtype == torch.float64


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)], ids=["mlp", "unet"])
def test_per_example_shape(shape, device):
    torch.manual_seed(0)
    sde = make_sde("vp")
    model = make_model(sde, shape).to(device)
    out = DSMLoss(sde, weighting="likelihood")(model, torch.randn(5, *shape, device=device))
    assert out.shape == (5,) and torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"weighting": "snr"}, "weighting"),
    ({"t_min": 0.5, "t_max": 0.4}, "t_min"),
    ({"t_min": 0.0}, "t_min"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSMLoss(make_sde("vp"), **kwargs)
