"""The one evaluator and the one time-to-target rule."""

from __future__ import annotations

import math

import pytest
import torch

from scorefast.analytic import GaussianScore
from scorefast.data import Dataset, load_data
from scorefast.errors import UserError
from scorefast.evaluate import Evaluator, sample_steps, time_to
from scorefast.evaluate import test_nll as held_out_nll  # a name pytest does not collect
from scorefast.sde import make_sde


def test_time_to_interpolates_between_snapshots():
    curve = [(1.0, 0.9), (2.0, 0.5), (4.0, 0.1)]
    assert time_to(curve, 0.3) == pytest.approx(3.0)  # 0.5 -> 0.1 between 2 s and 4 s
    assert time_to(curve, 0.5) == pytest.approx(2.0)  # exactly at a snapshot
    assert time_to(curve, 0.7) == pytest.approx(1.5)


def test_time_to_at_the_first_snapshot_and_never():
    curve = [(1.0, 0.2), (2.0, 0.1)]
    assert time_to(curve, 0.3) == 1.0  # nothing earlier is known
    assert time_to(curve, 0.05) is None
    assert time_to([], 1.0) is None


def test_time_to_for_higher_is_better_metrics():
    assert time_to([(1.0, 0.5), (3.0, 0.9)], 0.8, lower_is_better=False) == pytest.approx(2.5)
    assert time_to([(1.0, 0.5)], 0.8, lower_is_better=False) is None


def test_time_to_ignores_non_finite_values_and_takes_the_first_crossing():
    assert time_to([(1.0, math.nan), (2.0, 0.1)], 0.3) == 2.0
    assert time_to([(1.0, math.inf), (2.0, 0.5), (3.0, 0.1)], 0.3) == pytest.approx(2.5)
    assert time_to([(1.0, 0.9), (2.0, 0.2), (3.0, 0.8), (4.0, 0.1)], 0.3) == pytest.approx(1 + 6 / 7)


def test_evaluator_is_fixed_seed_and_scaled_to_T(device):
    sde = make_sde("vp", T=0.5)
    assert sample_steps(100, sde) == 50 and sample_steps(1, sde) == 1
    model = GaussianScore(sde, torch.zeros(2), torch.eye(2)).to(device)
    ev = Evaluator(n=300, steps=20)
    a, b = ev.samples(model, sde, (2,), device=device), ev.samples(model, sde, (2,), device=device)
    assert torch.equal(a, b) and a.shape == (300, 2) and a.device.type == "cpu"  # samples come back on CPU
    assert not torch.equal(a, Evaluator(n=300, steps=20, seed=1).samples(model, sde, (2,), device=device))
    ds = load_data("gaussian2d", n=500, seed=0)
    exact = GaussianScore(make_sde("vp"), torch.tensor([1.0, -0.5]), torch.tensor([[1.0, 0.6], [0.6, 0.8]]))
    out = ev(exact.to(device), make_sde("vp"), ds, device=device)
    assert out["metric_name"] == "swd" and out["metric"] < 0.15  # the exact score samples the data


def test_evaluator_of_a_run_takes_its_settings_and_the_overrides():
    from scorefast.config.sections import LogSection
    log = LogSection(eval_samples=64, eval_steps=30, sampler="heun", schedule="karras")
    own = Evaluator.of_run(log, metric="swd")
    assert (own.n, own.sampler, own.steps, own.schedule, own.scale_steps, own.metric) == \
        (64, "heun", 30, "karras", True, "swd")
    given = Evaluator.of_run(log, n=8, steps=7, seed=3)
    assert (given.n, given.steps, given.scale_steps, given.seed, given.schedule) == (8, 7, False, 3, "karras")
    assert Evaluator.of_run(log, sampler="ode").schedule is None  # another sampler: its own grid, not the run's
    assert Evaluator.of_run(log, sampler="heun").schedule == "karras"  # the run's sampler keeps the run's grid
    assert Evaluator.of_run(log, sampler="ode", schedule="logsnr").schedule == "logsnr"


@pytest.mark.parametrize("kw, needle", [({"n": 0}, "--n"), ({"steps": 0}, "--steps"), ({"sampler": "x"}, "sampler")])
def test_evaluator_refuses_bad_settings(kw, needle):
    with pytest.raises(UserError, match=needle):
        Evaluator(**kw)


def test_test_nll_is_seeded_on_every_device(device):
    """Hutchinson's probes are drawn on the device from a generator of the given seed: the same seed gives the
    same NLL whatever the global RNG did in between, another seed another estimate."""
    sde = make_sde("vp")
    mean, cov = torch.tensor([1.0, -0.5]), torch.tensor([[1.0, 0.6], [0.6, 0.8]])
    model = GaussianScore(sde, mean, cov).to(device)
    x = mean + torch.randn(50, 2, generator=torch.Generator().manual_seed(0)) @ torch.linalg.cholesky(cov).T
    ds = Dataset(x, "gaussian2d", "points")
    nll = lambda seed: held_out_nll(model, sde, ds, device=device, steps=10, hutchinson=1, seed=seed)["nll_nats"]  # noqa: E731
    first = nll(0)
    torch.randn(100, device=device)  # the global generators move on
    assert nll(0) == pytest.approx(first, rel=1e-9, abs=1e-9)
    assert nll(1) != pytest.approx(first, rel=1e-6, abs=1e-6)


def test_a_few_images_to_memorise_are_scored_by_their_best_match_ssim():
    """ssim_gap = 1 - mean best-match SSIM: 0 for exact copies of the images, near 1 for noise."""
    from scorefast.evaluate import metric_name, quality
    images = load_data("photos32", n=3, seed=0)
    assert metric_name(images) == "ssim_gap" and images.memorised
    assert metric_name(load_data("digits32", n=12, seed=0)) == "swd"  # enough to hold some out
    assert metric_name(Dataset(torch.zeros(3, 2), "pts", "points")) == "swd"  # points have no SSIM
    copies = images.x[[2, 0, 0, 1]]
    assert quality("ssim_gap", copies, images.x) == pytest.approx(0.0, abs=1e-5)
    noise = torch.randn(4, *images.shape, generator=torch.Generator().manual_seed(0))
    assert quality("ssim_gap", noise, images.x) > 0.9  # clamped to the pixel range, nothing like a photo
    scores = Evaluator(n=4).scores(copies, images)
    assert set(scores) == {"swd", "mmd", "ssim_gap"} and scores["ssim_gap"] == pytest.approx(0.0, abs=1e-5)
