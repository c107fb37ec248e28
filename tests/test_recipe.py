"""The recipe's parts against closed forms: time samplers, weightings, EDM preconditioning, EMA profiles,
learning-rate schedules, the adaptive sampler, and the recipes themselves."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from scorefast.analytic import GaussianScore
from scorefast.checkpoint import load_checkpoint
from scorefast.cli import main
from scorefast.config import Config
from scorefast.config.recipes import DEFAULT_RECIPE
from scorefast.config.schedules import EMA_PROFILES, LR_SCHEDULES, learning_rate, power_gamma
from scorefast.errors import UserError
from scorefast.nets import DataParam, EDMParam, EpsilonParam, ScoreParam, make_model
from scorefast.objective import Objective
from scorefast.sde import make_sde
from scorefast.time_sampling import TIME_SAMPLERS, AdaptiveTimes
from scorefast.weightings import WEIGHTINGS

MEAN = torch.tensor([0.5, -1.0], dtype=torch.float64)
COV = torch.tensor([[0.6, 0.2], [0.2, 0.3]], dtype=torch.float64)


# -- time samplers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sde_name", ["vp", "vp-psm", "ve", "subvp"])
def test_likelihood_sampler_density_integrates_to_one_and_matches_a_histogram(sde_name):
    sde = make_sde(sde_name)
    sampler = TIME_SAMPLERS.create("likelihood").bind(sde, sde.eps, sde.T)
    grid = torch.logspace(math.log10(sde.eps), 0, 20001, dtype=torch.float64)
    density = sampler.pdf(grid)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=2e-3)
    exact = sde.g2(grid) / sde.sigma(grid) ** 2
    exact = exact / torch.trapezoid(exact, grid)
    mid = slice(100, -100)  # the tabulated density is piecewise constant on cells: compare away from the ends
    assert torch.allclose(density[mid], exact[mid], rtol=2e-2)
    torch.manual_seed(0)
    t = sampler(200_000, dtype=torch.float64)
    edges = torch.logspace(math.log10(sde.eps), 0, 21, dtype=torch.float64)
    counts = torch.histogram(t, edges).hist / len(t)
    probs = torch.stack([torch.trapezoid(exact[(grid >= a) & (grid <= b)], grid[(grid >= a) & (grid <= b)])
                         for a, b in zip(edges[:-1], edges[1:])])
    assert (counts - probs).abs().max() < 4 * math.sqrt(0.05 / 200_000) + 2e-3


def test_likelihood_sampler_is_uniform_in_log_snr_for_vp():
    """d log-SNR / dt = -g^2 / sigma^2 for VP: the importance density is uniform in log-SNR."""
    sde = make_sde("vp")
    torch.manual_seed(1)
    lam = sde.log_snr(TIME_SAMPLERS.create("likelihood").bind(sde, sde.eps, sde.T)(100_000, dtype=torch.float64))
    lo, hi = (float(v) for v in sde.log_snr(torch.tensor([1.0, sde.eps], dtype=torch.float64)))
    hist = torch.histogram(lam, torch.linspace(lo, hi, 11, dtype=torch.float64)).hist / len(lam)
    assert (hist - 0.1).abs().max() < 0.005


def test_lognormal_sampler_draws_ln_sigma_from_the_truncated_normal():
    sde = make_sde("vp")
    sampler = TIME_SAMPLERS.create("lognormal", p_mean=-1.2, p_std=1.2).bind(sde, sde.eps, sde.T)
    torch.manual_seed(2)
    ln_s = -0.5 * sde.log_snr(sampler(200_000, dtype=torch.float64))
    lo, hi = (-0.5 * float(v) for v in sde.log_snr(torch.tensor([sde.eps, 1.0], dtype=torch.float64)))
    normal = torch.distributions.Normal(-1.2, 1.2)
    for q in (-2.0, -1.2, 0.0, 1.0):
        expected = (normal.cdf(torch.tensor(q)) - normal.cdf(torch.tensor(lo))) / \
            (normal.cdf(torch.tensor(hi)) - normal.cdf(torch.tensor(lo)))
        assert float((ln_s <= q).double().mean()) == pytest.approx(float(expected), abs=4e-3)


def test_bins_sampler_puts_the_shares_in_the_bins_and_restricts_to_an_interval():
    sde = make_sde("vp-psm")
    plugin = TIME_SAMPLERS.create("bins", time_edges="0.02,0.1", time_shares="0.2,0.3,0.5")
    torch.manual_seed(3)
    t = plugin.bind(sde, sde.eps, sde.T)(100_000, dtype=torch.float64)
    shares = [float(((t >= a) & (t < b)).double().mean()) for a, b in ((0, 0.02), (0.02, 0.1), (0.1, 2))]
    assert shares == pytest.approx([0.2, 0.3, 0.5], abs=0.006)
    inner = plugin.bind(sde, 0.05, 0.5)(50_000, dtype=torch.float64)  # one interval of a partition
    assert float(inner.min()) >= 0.05 and float(inner.max()) <= 0.5
    # inside [0.05, 0.5]: bin 2 keeps 0.3 x (0.05 / 0.08) of its mass, bin 3 0.5 x (0.4 / 0.9)
    w = torch.tensor([0.3 * 0.05 / 0.08, 0.5 * 0.4 / 0.9])
    assert float((inner < 0.1).double().mean()) == pytest.approx(float(w[0] / w.sum()), abs=0.01)


def test_stratification_spreads_over_the_ranks_of_a_group():
    sampler = TIME_SAMPLERS.create("uniform", stratified=True).bind(make_sde("vp"), 0.0 + 1e-3, 1.0)
    torch.manual_seed(4)
    parts = [sampler.spread(r, 4).uniforms(8, dtype=torch.float64) for r in range(4)]
    u = torch.cat(parts).sort().values
    assert torch.equal((u * 32).floor(), torch.arange(32, dtype=torch.float64))  # one draw in each of 32 strata


def test_allocation_edges_give_each_network_an_equal_share_of_the_draws():
    cfg = Config(intervals=4, partition="allocation", time_sampler="likelihood", sde="vp-psm")
    sde = cfg.sde.build()
    edges = cfg.edges(sde)
    sampler = cfg.time_sampler.bind(sde, sde.eps, sde.T)
    torch.manual_seed(5)
    t = sampler(80_000, dtype=torch.float64)
    shares = torch.histogram(t, torch.tensor(edges, dtype=torch.float64)).hist / len(t)
    assert torch.allclose(shares, torch.full((4,), 0.25, dtype=torch.float64), atol=0.006)
    assert Config(intervals=2, recipe="plain").partition.partition == "logsnr"


# -- weightings and the likelihood bound -------------------------------------------------------------

def dsm_at_exact_score(sde, t: torch.Tensor) -> torch.Tensor:
    """E || sigma_t s*(x_t) + z ||^2 / d for N(MEAN, COV) data and its exact score: d - sigma^2 tr(Sigma_t^-1)."""
    a, s = sde.alpha(t), sde.sigma(t)
    cov_t = a[:, None, None] ** 2 * COV + s[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64)
    return (2 - s**2 * torch.linalg.inv(cov_t).diagonal(dim1=1, dim2=2).sum(1)) / 2


def test_both_likelihood_pairs_estimate_the_bound_without_bias():
    """(uniform t, likelihood weighting) and (likelihood sampler, epsilon weighting) both estimate
    int g^2 / sigma^2 E||sigma s + z||^2 / d dt; Monte Carlo against quadrature on Gaussian data."""
    sde = make_sde("vp")
    model = ScoreParam(GaussianScore(sde, MEAN, COV), sde)
    grid = torch.logspace(math.log10(sde.eps), 0, 40001, dtype=torch.float64)
    density = sde.g2(grid) / sde.sigma(grid) ** 2
    exact = float(torch.trapezoid(density * dsm_at_exact_score(sde, grid), grid))
    norm = float(torch.trapezoid(density, grid))
    torch.manual_seed(6)  # the data, the times and the noise all from the test's own seed
    x0 = torch.distributions.MultivariateNormal(MEAN, COV).sample((400_000,))
    uniform = Objective(model, sde, times=TIME_SAMPLERS.create("uniform", stratified=True).bind(sde, sde.eps, 1.0),
                        weighting="likelihood")
    a = (1 - sde.eps) * uniform(x0)
    importance = Objective(model, sde, times=TIME_SAMPLERS.create("likelihood", stratified=True).bind(sde, sde.eps,
                                                                                                      1.0))
    b = norm * importance(x0)
    for est in (a, b):
        assert float(est.mean()) == pytest.approx(exact, abs=4 * float(est.std()) / math.sqrt(len(est)) + 1e-3 * exact)
    assert float(b.std()) < float(a.std())  # the importance density removes most of the weight's variance


def test_min_snr_and_soft_min_snr_match_their_formula_in_every_parameterisation():
    """Hang et al.: x0-space weight min(SNR, gamma); on the epsilon loss min(SNR, gamma) / SNR; on the score loss
    sigma^2 min(SNR, gamma) / SNR. The epsilon-form loss scorefast computes must equal each target's own loss."""
    sde = make_sde("vp")
    torch.manual_seed(7)
    x0 = torch.randn(256, 2, dtype=torch.float64)
    t = torch.rand(256, dtype=torch.float64) * 0.99 + 0.01
    z = torch.randn_like(x0)
    xt = sde.perturb(x0, t, z)
    r = sde.snr(t)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    for name, x0_weight in (("min-snr", r.clamp(max=5.0)), ("soft-min-snr", r * 5 / (r + 5))):
        for param in (EpsilonParam, DataParam, ScoreParam):
            model = param(make_model(sde, (2,), width=16).net.double(), sde)
            ours = Objective(model, sde, weighting=name)(x0, t, z)
            out = model.net(xt, t)
            if param is EpsilonParam:
                native = (out - z).pow(2).mean(1) * x0_weight / r
            elif param is DataParam:
                native = (out - x0).pow(2).mean(1) * x0_weight
            else:
                native = (out + z / s).pow(2).mean(1) * s[:, 0] ** 2 * x0_weight / r
            torch.testing.assert_close(ours, native)
    w = WEIGHTINGS.create("edm").bind(0.7)(sde, t)
    torch.testing.assert_close(w, ((s[:, 0] / a[:, 0]) ** 2 + 0.49) / 0.49)


class ExactF(torch.nn.Module):
    """The raw network F* = (D* - c_skip y) / c_out that makes EDM's preconditioning exact on Gaussian data."""

    def __init__(self, sde, exact, sd: float):
        super().__init__()
        self.sde, self.exact, self.sd = sde, exact, sd

    def forward(self, inp, c_noise):
        s = (4 * c_noise).exp()[:, None]
        norm = (s * s + self.sd**2).sqrt()
        y = inp * norm
        lo, hi = torch.full_like(s[:, 0], self.sde.eps), torch.full_like(s[:, 0], 1.0)
        for _ in range(80):  # t from the noise level s, by bisection
            mid = 0.5 * (lo + hi)
            up = self.sde.sigma(mid) / self.sde.alpha(mid) < s[:, 0]
            lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
        t = 0.5 * (lo + hi)
        a = self.sde.alpha(t)[:, None]
        denoised = y + s * s * a * self.exact(a * y, t)
        return (denoised - self.sd**2 / norm**2 * y) / (s * self.sd / norm)


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
def test_edm_preconditioning_gives_the_exact_score_when_the_raw_network_is_exact(name):
    sde = make_sde(name)
    exact = GaussianScore(sde, MEAN, COV)
    model = EDMParam(ExactF(sde, exact, 0.8), sde, sigma_data=0.8)
    torch.manual_seed(8)
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    x = torch.randn(64, 2, dtype=torch.float64) * 2
    torch.testing.assert_close(model(x, t), exact(x, t), rtol=1e-6, atol=1e-6)


# -- EMA profiles and learning-rate schedules ---------------------------------------------------------

def test_ema_profiles_and_learning_rate_schedules_at_given_steps():
    fixed = EMA_PROFILES.create("fixed", ema=0.99)
    assert [fixed.decay(n) for n in (1, 10, 10_000)] == pytest.approx([2 / 11, 11 / 20, 0.99])
    gamma = power_gamma(0.05)
    assert math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) == pytest.approx(0.05, rel=1e-9)
    power = EMA_PROFILES.create("power", ema_std=0.05)
    assert power.decay(1) == 0 and power.decay(100) == pytest.approx((1 - 1 / 100) ** (gamma + 1))
    # the power average is a fixed fraction of the run: its decay at 10x the step is 10x closer to 1
    assert (1 - power.decay(10_000)) == pytest.approx((1 - power.decay(1000)) / 10, rel=0.01)
    warm = EMA_PROFILES.create("warmup", ema_power=0.75, ema_max=0.999)
    assert warm.decay(15) == pytest.approx(1 - 16**-0.75) and warm.decay(10**8) == 0.999
    rate = learning_rate(1e-3, 100, LR_SCHEDULES.create("rsqrt", lr_ref_steps=1000), None)
    assert [rate(n) for n in (50, 100, 1000, 4000)] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])
    rate = learning_rate(1e-3, 0, LR_SCHEDULES.create("cosine", lr_min_ratio=0.1), 1000)
    assert [rate(n) for n in (0, 500, 1000)] == pytest.approx([1e-3, 5.5e-4, 1e-4])
    with pytest.raises(UserError, match="needs the run's length"):
        learning_rate(1e-3, 0, LR_SCHEDULES.create("cosine"), None)


# -- the adaptive sampler ---------------------------------------------------------------------------

def test_adaptive_sampler_converges_to_the_bins_where_the_bound_falls():
    """A synthetic bound that falls by r_k per draw in bin k: the shares converge to
    (1 - floor) r / sum r + floor / K."""
    sde = make_sde("vp")
    sampler = AdaptiveTimes(sde, sde.eps, sde.T, bins=8, floor=0.2)
    rate = torch.tensor([0.0, 0.0, 1.0, 3.0, 2.0, 0.0, 0.0, 2.0], dtype=torch.float64) * 1e-4
    bound = torch.ones(8, dtype=torch.float64)
    sampler.update(bound)
    assert torch.allclose(sampler.weights, torch.full((8,), 1 / 8, dtype=torch.float64))
    torch.manual_seed(9)
    for _ in range(60):
        t = sampler(4096, dtype=torch.float64)
        draws = torch.bincount(sampler.bin_of(t), minlength=8).double()
        bound = bound - rate * draws
        sampler.update(bound)
    expected = 0.8 * rate / rate.sum() + 0.2 / 8
    assert torch.allclose(sampler.weights, expected, atol=1e-3)
    lam = sde.log_snr(sampler.edges)
    assert torch.allclose(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(8), rtol=1e-3)  # bins equal in log-SNR


TINY = ["--data", "moons", "--n-data", "800", "--batch-size", "64", "--width", "16", "--eval-every", "100",
        "--eval-samples", "50", "--eval-steps", "5", "--quiet", "--ckpt-every", "50"]


@pytest.mark.cpu_only
@pytest.mark.slow
def test_a_resumed_run_continues_the_adaptive_sampler_exactly(tmp_path):
    args = ["--time-sampler", "adaptive", "--adapt-every", "20", "--adapt-bins", "6", "--adapt-probe", "64", *TINY]
    assert main(["train", "--out", str(tmp_path / "a"), "--steps", "200", *args]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--steps", "110", *args]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--steps", "200", "--quiet"]) == 0
    a, b = (load_checkpoint(tmp_path / n / "checkpoints" / "net-0.pt") for n in ("a", "b"))
    assert not torch.allclose(a["times"]["weights"], torch.full((6,), 1 / 6, dtype=torch.float64))  # it moved
    for key in ("weights", "gain", "counts", "previous"):
        assert torch.equal(a["times"][key], b["times"][key]), key
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


# -- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--time-sampler", "magic"], "unknown --time-sampler 'magic'"),
    (["--weighting", "cosine"], "unknown --weighting 'cosine'"),
    (["--weighting", "min-snr", "--snr-gamma", "0"], "--snr-gamma must be > 0"),
    (["--weighting", "soft-min-snr", "--snr-gamma", "-1"], "--snr-gamma must be > 0"),
    (["--sigma-data", "0"], "--sigma-data must be > 0"),
    (["--lr-schedule", "cosine", "--time-budget", "10"], "needs the run's length"),
    (["--lr-schedule", "cosine", "--lr-min-ratio", "-0.5", "--steps", "5"], "--lr-min-ratio"),
    (["--lr-schedule", "rsqrt", "--lr-ref-steps", "0", "--steps", "5"], "--lr-ref-steps"),
    (["--ema-profile", "power", "--ema-std", "0.5", "--steps", "5"], "--ema-std"),
    (["--ema-profile", "power", "--ema", "0.99", "--steps", "5"], "--ema is an option of ema_profile fixed"),
    (["--time-sampler", "lognormal", "--p-std", "0", "--steps", "5"], "--p-std"),
    (["--time-sampler", "bins", "--time-shares", "1,1,1", "--steps", "5"], "--time-shares needs 2 shares"),
    (["--snr-gamma", "3", "--steps", "5"], "--snr-gamma is an option of weighting min-snr, soft-min-snr"),
    (["--recipe", "fastest", "--steps", "5"], "unknown --recipe 'fastest'"),
    (["--precision", "fp8", "--steps", "5"], "--precision"),
    (["--adam-beta2", "1", "--steps", "5"], "--adam-beta2 must be < 1, got 1.0"),
])
def test_recipe_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, needle):
    out = tmp_path / "never"
    assert main(["train", "--data", "moons", "--out", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_compile_without_a_compiler_is_one_clear_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("with CUDA, torch.compile does not need a host compiler for the check")
    env = {**os.environ, "PATH": str(tmp_path)}  # no g++ on the path
    r = subprocess.run([sys.executable, "-m", "scorefast.cli", "train", "--data", "moons", "--out",
                        str(tmp_path / "never"), "--compile", "--steps", "5"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "needs a C++ compiler" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_the_recipe_is_recorded_and_plain_is_scorefast_0_1():
    cfg = Config(recipe="plain")
    assert (cfg.time_sampler.name, cfg.weighting.name, cfg.ema_profile.name, cfg.lr_schedule.name) == \
        ("uniform", "epsilon", "fixed", "constant")
    assert cfg.ema_profile.ema == 0.999 and not cfg.time_sampler.stratified
    assert json.loads(json.dumps(cfg.to_dict()))["recipe"] == {"name": "plain"}


def test_data_of_another_kind_than_the_configuration_was_resolved_for_is_refused(tmp_path):
    """The configuration is resolved once: data that turns out to be of another kind (a file replaced after the
    configuration was made) is one line, nothing written, never a silent change of the recipe's defaults."""
    import numpy as np

    from scorefast.training.recipe import train
    data = tmp_path / "images.npy"
    np.save(data, np.zeros((20, 1, 8, 8), np.uint8))
    cfg = Config(data=str(data), out=str(tmp_path / "never"), steps=2, batch_size=8)
    assert cfg.data_kind == "image"
    np.save(data, np.zeros((20, 2), np.float32))
    with pytest.raises(UserError, match="holds points data, but the configuration was resolved for image data"):
        train(cfg, progress=False)
    assert not (tmp_path / "never").exists()


# -- the recipes on images --------------------------------------------------------------------------

def test_edm_recipe_resolves_to_edms_published_settings():
    """EDM (Karras et al. 2022, CIFAR-10): preconditioning with sigma_data 0.5, ln sigma ~ N(-1.2, 1.2^2), the EDM
    weighting, Adam lr 1e-3 with betas (0.9, 0.999) and no clipping, dropout 0.13, Heun's sampler in 35 network
    evaluations, and an EMA whose half-life is 5 % of the images seen: decay 0.5^(1 / (0.05 n)) at step n, which
    is the power EMA with gamma + 1 = 20 ln 2."""
    image = Config(recipe="edm", data_kind="image")
    flags = image.flags()
    assert (flags["param"], flags["time_sampler"], flags["weighting"], flags["ema_profile"], flags["sampler"]) == \
        ("edm", "lognormal", "edm", "power", "heun")
    assert (flags["p_mean"], flags["p_std"], flags["sigma_data"], flags["dropout"]) == (-1.2, 1.2, 0.5, 0.13)
    assert (flags["lr"], flags["warmup"], flags["adam_beta2"], flags["grad_clip"], flags["lr_schedule"]) == \
        (1e-3, 100, 0.999, 0.0, "constant")
    assert 2 * flags["eval_steps"] + 1 == 35  # heun: two evaluations a step and one for the last
    assert power_gamma(flags["ema_std"]) + 1 == pytest.approx(20 * math.log(2), rel=0.005)
    for n in (100, 2000):
        assert 1 - image.ema_profile.decay(n) == pytest.approx(1 - 0.5 ** (1 / (0.05 * n)), rel=0.01)
    points = Config(recipe="edm", data_kind="points")
    assert points.net.dropout is None and points.data.sigma_data is None  # EDM's 0.5 is for pixels in [-1, 1]
    assert Config(recipe="edm", lr=2e-3, data_kind="image").optim.lr == 2e-3  # a flag given wins


def test_the_default_recipe_sets_its_image_flags_on_images_only():
    image, points = Config(data_kind="image").flags(), Config(data_kind="points").flags()
    plain = Config(recipe="plain", data_kind="points").flags()
    assert {k: image[k] for k in ("param", "time_sampler", "weighting", "batch_size", "lr", "warmup", "lr_schedule",
                                  "lr_ref_steps", "ema_profile", "ema_std")} == \
        {"param": "edm", "time_sampler": "lognormal", "weighting": "edm", "batch_size": 256, "lr": 2e-3, "warmup": 100,
         "lr_schedule": "rsqrt", "lr_ref_steps": 400, "ema_profile": "power", "ema_std": 0.10}
    # points keep their own recipe (adaptive times, lr 4e-3 with warm-up 200 and 1/sqrt decay) and plain's rest
    assert (points["time_sampler"], points["lr"], points["warmup"], points["lr_ref_steps"]) == \
        ("adaptive", 4e-3, 200, 500)
    for flag in ("param", "weighting", "batch_size", "ema_profile"):
        assert points[flag] == plain[flag], flag


@pytest.mark.slow
def test_digits_trains_with_the_default_recipe(tmp_path):
    out = tmp_path / "digits"
    assert main(["train", "--data", "digits", "--out", str(out), "--steps", "12", "--width", "8", "--n-data", "300",
                 "--batch-size", "64", "--eval-samples", "16", "--eval-steps", "4", "--quiet", "--threads", "1"]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["recipe"] == {"name": DEFAULT_RECIPE}
    # what trained is the recipe's published image settings (the flags given aside), not plain's eps / uniform /
    # epsilon / fixed EMA at its own learning rate: literals, so that a resolution that drops them fails here
    assert (saved["net"]["param"], saved["time_sampler"]["name"], saved["weighting"]["name"],
            saved["ema_profile"]["name"], saved["optim"]["lr"]) == ("edm", "lognormal", "edm", "power", 2e-3)
    assert load_checkpoint(out / "checkpoints" / "net-0.pt")["step"] == 12
