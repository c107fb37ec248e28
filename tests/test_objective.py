"""The objective against closed forms: with the exact score of Gaussian data, score regression is zero and
DSM sits exactly at its irreducible value; weightings and the sampling of t are as documented; and for every
target of the plain recipe the objective computes exactly (bitwise) the loss written out step by step."""

import math

import pytest
import torch

from scorefast.analytic import GaussianScore
from scorefast.config import Config
from scorefast.methods.targets import TARGETS
from scorefast.nets import ScoreParam, make_model
from scorefast.objective import FixedField, Objective, ScoreGoal
from scorefast.sde import append_dims, make_sde
from scorefast.time_sampling import UniformTimes
from scorefast.weightings import WEIGHTINGS

MEAN = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
COV = torch.tensor([[0.5, 0.2, 0.0], [0.2, 0.3, 0.05], [0.0, 0.05, 0.1]], dtype=torch.float64)


def _gaussian_data(n: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64, device=device)
    return MEAN.to(device) + z @ torch.linalg.cholesky(COV.to(device)).T


def regression(sde, score, model, **kwargs) -> Objective:
    """The objective regressing ``model`` onto the fixed score field ``score``."""
    return Objective(model, sde, ScoreGoal(FixedField(score)), **kwargs)


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
    per_example = Objective(ScoreParam(exact, sde), sde)(x0, tt, noise)
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
    loss = regression(sde, exact, ScoreParam(exact, sde), weighting=weighting)(_gaussian_data(256, seed=2,
                                                                                         device=device))
    assert loss.shape == (256,)
    assert float(loss.abs().max()) < 1e-20


def test_regression_is_positive_for_a_wrong_score(device):
    sde = make_sde("vp")
    exact = GaussianScore(sde, MEAN, COV).to(device)
    wrong = GaussianScore(sde, MEAN + 0.5, COV).to(device)
    loss = regression(sde, exact, ScoreParam(wrong, sde))(_gaussian_data(256, seed=3, device=device))
    assert float(loss.min()) > 0


def test_weightings_equal_their_formulas(device):
    """VP with beta 0.1..20: g^2 = beta, sigma^2 = 1 - exp(-int beta), written out independently."""
    sde = make_sde("vp")
    t = torch.linspace(0.01, 1.0, 11, dtype=torch.float64, device=device)
    beta = 0.1 + 19.9 * t
    var = 1 - torch.exp(-(0.1 * t + 9.95 * t**2))
    expected = {"epsilon": torch.ones_like(t), "likelihood": beta / var, "inv_g2": 1 / (2 * beta)}
    for name, w in expected.items():
        torch.testing.assert_close(WEIGHTINGS.create(name)(sde, t), w)


def test_loss_is_weight_times_epsilon_loss(device):
    torch.manual_seed(0)
    sde = make_sde("vp")
    model = make_model(sde, (2,)).double().to(device)
    x0 = torch.randn(64, 2, dtype=torch.float64, device=device)
    t = Objective(model, sde).times(64, device, dtype=torch.float64)
    z = torch.randn_like(x0)
    base = Objective(model, sde)(x0, t, z)
    manual = (z - model.net(sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * z, t)).pow(2).mean(1)
    torch.testing.assert_close(base, manual)
    for name in ("likelihood", "inv_g2"):
        weight = WEIGHTINGS.create(name)(sde, t)
        torch.testing.assert_close(Objective(model, sde, weighting=name)(x0, t, z), weight * base)


@pytest.mark.parametrize("stratified", [False, True])
def test_t_stays_in_range(stratified, device):
    torch.manual_seed(0)
    times = UniformTimes(0.1, 0.6, stratified)
    t = times(10_000, device)
    assert t.device == device
    assert float(t.min()) >= 0.1 and float(t.max()) <= 0.6
    assert float(t.mean()) == pytest.approx(0.35, abs=0.01)


def test_stratified_puts_one_time_in_each_bin(device):
    torch.manual_seed(0)
    n = 64
    t = UniformTimes(0.2, 0.8, stratified=True)(n, device, dtype=torch.float64)
    bins = torch.floor((t - 0.2) / 0.6 * n).long()
    assert torch.equal(bins.sort().values, torch.arange(n, device=device))


@pytest.mark.parametrize("t_min, t_max", [(0.5, 0.4), (0.0, 1.0)])
def test_bad_time_range_raises(t_min, t_max):
    with pytest.raises(ValueError, match="t_min"):
        UniformTimes(t_min, t_max)


def test_times_default_to_eps_to_T():
    sde = make_sde("ve", T=0.5, eps=1e-2)
    times = Objective(make_model(sde, (2,)), sde).times
    assert (times.t_min, times.t_max) == (1e-2, 0.5)


def test_times_follow_data_dtype(device):
    sde = make_sde("vp")
    model = make_model(sde, (2,)).double().to(device)
    assert Objective(model, sde)(torch.randn(8, 2, dtype=torch.float64, device=device)).dtype == torch.float64


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)], ids=["mlp", "unet"])
def test_per_example_shape(shape, device):
    torch.manual_seed(0)
    sde = make_sde("vp")
    model = make_model(sde, shape).to(device)
    out = Objective(model, sde, weighting="likelihood")(torch.randn(5, *shape, device=device))
    assert out.shape == (5,) and torch.isfinite(out).all()


def test_unknown_weighting_is_one_line():
    sde = make_sde("vp")
    with pytest.raises(ValueError, match="weighting") as err:
        Objective(make_model(sde, (2,)), sde, weighting="snr")
    assert "\n" not in str(err.value)


# -- every target of the plain recipe, against the loss written out step by step ----------------------------

SMALL = {"fp-regress": {"fp_grid": 33, "fp_steps": 8}, "empirical": {"reference_size": 16},
         "knn": {"neighbours": 5, "knn_tail": 3}, "fp-embed": {"fp_grid": 33, "fp_steps": 8},
         "fp-embed-off": {"fp_grid": 33, "fp_steps": 8}}
CASES = [("dsm", {}, (48, 2)), ("dsm", {}, (24, 1, 4, 4)), ("fp-regress", {}, (48, 2)),
         ("empirical", {}, (48, 2)), ("empirical", {"sigma_lo": 0.2}, (48, 2)), ("knn", {}, (48, 2)),
         ("knn", {"sigma_hi": 0.5, "knn_outside": 8}, (48, 2)), ("fp-embed", {}, (48, 2)),
         ("fp-embed", {"reference_size": 16}, (24, 1, 4, 4)), ("fp-embed", {"fp_variant": "paper"}, (6, 1, 8, 8)),
         ("fp-embed-off", {}, (48, 2))]


def by_hand(sde, goal, model, x0, times, weighting):
    """The per-example loss of one step written out: draw t (the embedding: bins and transport), draw z, perturb,
    regress eps_theta(x_t, t) onto z (DSM) or onto -sigma_t s*(x_t, t), weight; the same random draws in the
    same order as the objective."""
    if hasattr(goal, "bins"):  # the published embedding: stratified bins, forward Euler PF-ODE transport
        u = torch.rand(goal.bins)
        ts = times.t_min + (times.t_max - times.t_min) * (torch.arange(goal.bins) + u) / goal.bins
        which = torch.randperm(len(x0)) % goal.bins
        with torch.no_grad():
            score = goal.provider.for_batch(x0)
            x, start, t_prev = x0, x0.clone(), 0.0
            for k in range(int(which.max()) + 1):
                tk = ts[k].expand(len(x))
                x = x + (ts[k] - t_prev) * sde.ode_drift(x, tk, score(x, tk))
                t_prev = ts[k]
                start[which == k] = x[which == k]
        t = ts[which]
        z = torch.randn_like(x0)
        xt = start + append_dims(sde.sigma(t), x0.ndim) * z
        target = z
    else:
        t = times(len(x0), x0.device, x0.dtype)
        z = torch.randn_like(x0)
        xt = append_dims(sde.alpha(t), x0.ndim) * x0 + append_dims(sde.sigma(t), x0.ndim) * z
        with torch.no_grad():
            target = -append_dims(sde.sigma(t), x0.ndim) * goal.provider.for_batch(x0)(xt, t) \
                if hasattr(goal, "provider") else z
    return weighting(sde, t) * (target - model.eps(xt, t)).pow(2).flatten(1).mean(1)


def test_cases_cover_every_target():
    assert {name for name, _, _ in CASES} >= {n for n in TARGETS.names() if not n.startswith("test-")}


@pytest.mark.cpu_only
@pytest.mark.filterwarnings("ignore:FP solve:RuntimeWarning", "ignore:FP grid spacing:UserWarning")
@pytest.mark.parametrize("method, options, shape", CASES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_objective_is_the_loss_written_out_bitwise_under_the_plain_recipe(method, options, shape):
    paper = options.get("fp_variant") == "paper"
    cfg = Config(recipe="plain", method=method, sde="ve-power" if paper else "vp",
                 **{**SMALL.get(method, {}), **options})
    sde = cfg.sde.build()
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape[0], math.prod(shape[1:]), generator=g) * 0.5
         + torch.randint(0, 2, (shape[0], 1), generator=g) * 1.5).reshape(shape)
    times, weighting = cfg.time_sampler.bind(sde, sde.eps, sde.T), cfg.weighting.bind(1.0)
    assert (times.t_min, times.t_max, weighting.name) == (sde.eps, sde.T, "epsilon")
    model = make_model(sde, shape[1:], "eps", arch="mlp", width=16, depth=1)
    goal, _ = cfg.target.precompute(sde, x, progress=False)
    objective = cfg.objective.build(model, sde, goal, times, weighting)
    for seed in range(3):
        torch.manual_seed(seed)
        ours = objective(x[:24])
        torch.manual_seed(seed)
        assert torch.equal(ours, by_hand(sde, goal, model, x[:24], times, weighting))
