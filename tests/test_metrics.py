"""Sample-quality metrics against closed forms and brute-force references."""

import math
import os

import numpy as np
import ot
import pytest
import torch

from scorefast import metrics
from scorefast.data import load_data
from scorefast.metrics import (
    CLASSIFIER_FILE,
    best_match_ssim,
    digits_classifier,
    digits_frechet,
    frechet_distance,
    mmd,
    sliced_wasserstein,
    ssim,
)


def _normal(n, d, seed, device, shift=0.0):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64, device=device) + shift


# ------------------------------------------------------------------------------------------------
# Sliced Wasserstein


def test_swd_of_sample_with_itself_is_zero(device):
    x = _normal(1000, 3, 0, device)
    assert sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)


def test_swd_shifted_gaussians_match_closed_form(device):
    """N(0, I) vs N(m, I): each projection is W2 = |<theta, m>|, and E <theta, m>^2 = |m|^2 / d."""
    d = 5
    m = torch.tensor([3.0, -1.0, 2.0, 0.5, 1.0], dtype=torch.float64, device=device)
    value = sliced_wasserstein(_normal(4000, d, 0, device), _normal(4000, d, 1, device, m))
    assert value == pytest.approx(float(m.norm()) / math.sqrt(d), rel=0.1)


def test_swd_equals_pot_and_is_seeded(device):
    x, y = _normal(600, 4, 2, device), _normal(600, 4, 3, device, 0.3)
    for p in (1, 2):
        ref = ot.sliced_wasserstein_distance(x.cpu().numpy(), y.cpu().numpy(), n_projections=200, p=p, seed=7)
        assert sliced_wasserstein(x, y, n_projections=200, seed=7, p=p) == pytest.approx(float(ref), rel=1e-9)
    assert sliced_wasserstein(x, y, seed=1) == sliced_wasserstein(x, y, seed=1)
    assert sliced_wasserstein(x, y, seed=1) != sliced_wasserstein(x, y, seed=2)


def test_swd_unequal_sizes_numpy_and_images(device):
    x, y = _normal(500, 2, 4, device).cpu().numpy(), _normal(700, 2, 5, device, 2.0)  # numpy against a tensor
    for p in (1, 2):  # the exact quantile integral is POT's value for unequal sizes too
        ref = ot.sliced_wasserstein_distance(x, y.cpu().numpy(), n_projections=100, p=p, seed=3)
        assert sliced_wasserstein(x, y, n_projections=100, seed=3, p=p) == pytest.approx(float(ref), rel=1e-9)
    assert sliced_wasserstein(x, y) == pytest.approx(2.0 * math.sqrt(2) / math.sqrt(2), rel=0.15)
    imgs = torch.rand(20, 1, 4, 4, device=device)
    assert sliced_wasserstein(imgs, imgs.cpu().numpy()) == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------------------------------------
# MMD


def _mmd_brute(x, y, bandwidths):
    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * s**2)) for s in bandwidths)

    m, n = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return float(
        (kxx.sum() - kxx.diag().sum()) / (m * (m - 1))
        + (kyy.sum() - kyy.diag().sum()) / (n * (n - 1))
        - 2 * k(x, y).mean()
    )


def test_mmd_matches_brute_force_unbiased_estimate(device):
    x, y = _normal(300, 3, 0, device), _normal(257, 3, 1, device, 0.5)  # sizes straddle the block size
    bw = (0.5, 1.0, 3.0)
    assert mmd(x, y, bw) == pytest.approx(_mmd_brute(x.cpu(), y.cpu(), bw), rel=1e-9, abs=1e-12)


def test_mmd_same_vs_shifted(device):
    x, x2, y = _normal(1000, 2, 0, device), _normal(1000, 2, 1, device), _normal(1000, 2, 2, device, 1.0)
    same, shifted = mmd(x, x2), mmd(x, y)
    assert abs(same) < 0.01
    assert shifted > 0.2 and shifted > 20 * abs(same)


# ------------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_identical_is_zero():
    a = np.random.default_rng(0).normal(size=(6, 6))
    cov = a @ a.T + np.eye(6)
    mu = np.arange(6.0)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)


def test_frechet_shifted_identity_is_squared_distance(device):
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 4.0])
    assert frechet_distance(m1, np.eye(3), m2, np.eye(3)) == pytest.approx(float(((m1 - m2) ** 2).sum()))
    t1, t2, eye = torch.tensor(m1, device=device), torch.tensor(m2, device=device), torch.eye(3, device=device)
    assert frechet_distance(t1, eye, t2, eye) == pytest.approx(9.0)


def test_frechet_diagonal_and_singular_covariances():
    """For commuting covariances tr(C1 + C2 - 2 (C1 C2)^(1/2)) = sum (sqrt(a_i) - sqrt(b_i))^2."""
    a, b = np.array([1.0, 4.0, 0.0, 2.0]), np.array([9.0, 1.0, 3.0, 0.0])
    expected = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    rot = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))[0]
    c1, c2 = rot @ np.diag(a) @ rot.T, rot @ np.diag(b) @ rot.T
    assert frechet_distance(np.zeros(4), c1, np.zeros(4), c2) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Digits Fréchet distance


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("scorefast_cache")


def test_digits_classifier_is_accurate_and_cached(cache_dir):
    trained_before = metrics._trainings
    model, accuracy = digits_classifier(cache_dir)
    assert accuracy > 0.95
    path = cache_dir / CLASSIFIER_FILE
    assert path.is_file() and not [p for p in os.listdir(cache_dir) if p.endswith(".tmp")]
    assert metrics._trainings == trained_before + 1
    mtime = path.stat().st_mtime_ns
    model2, accuracy2 = digits_classifier(cache_dir)
    assert metrics._trainings == trained_before + 1 and path.stat().st_mtime_ns == mtime
    assert accuracy2 == accuracy
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with open(path, "rb") as f:
        assert b"pickle" not in f.read(64)  # a safetensors JSON header, not a pickle


def test_digits_frechet_real_vs_noise(cache_dir, device):
    digits = load_data("digits")
    train, test = digits.split(0.3, seed=1)
    digits_classifier(cache_dir)  # trains once if this test runs alone
    trained_before = metrics._trainings
    real = digits_frechet(test.x.to(device), train.x.to(device), cache_dir=cache_dir)
    g = torch.Generator(device=device).manual_seed(0)
    noise = torch.randn(len(test), 1, 8, 8, generator=g, device=device).clamp(-1, 1)
    fake = digits_frechet(noise, train.x, cache_dir=cache_dir)
    assert real < 0.05 * fake
    assert metrics._trainings == trained_before  # every call reused the cache
    assert digits_frechet(test.x.numpy().reshape(-1, 64), cache_dir=cache_dir) < 0.05 * fake


def test_unreadable_cache_is_retrained(tmp_path, monkeypatch):
    calls = []

    def fake_train():
        calls.append(1)
        return metrics.DigitsClassifier(), 0.5

    monkeypatch.setattr(metrics, "_train_digits_classifier", fake_train)
    (tmp_path / CLASSIFIER_FILE).write_bytes(b"garbage")
    _, accuracy = digits_classifier(tmp_path)
    assert calls == [1] and accuracy == 0.5
    _, accuracy = digits_classifier(tmp_path)
    assert calls == [1] and accuracy == 0.5


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "_train_digits_classifier", lambda: (metrics.DigitsClassifier(), 0.25))
    monkeypatch.setenv("SCOREFAST_CACHE", str(tmp_path / "env_cache"))
    _, accuracy = digits_classifier()
    assert accuracy == 0.25 and (tmp_path / "env_cache" / CLASSIFIER_FILE).is_file()


# ------------------------------------------------------------------------------------------------
# SSIM


def test_ssim_of_image_with_itself_is_one_and_drops_with_noise(device):
    x = load_data("photos32").x.to(device)
    assert torch.allclose(ssim(x, x), torch.ones(len(x)), atol=1e-6)  # metrics come back on CPU
    g = torch.Generator(device=device).manual_seed(0)
    values = [float(ssim(x, x + s * torch.randn(x.shape, generator=g, device=device)).mean()) for s in (0.05, 0.2, 0.8)]
    assert values[0] < 1.0
    assert values[0] > values[1] > values[2]


def test_ssim_matches_hand_computation_on_one_window(device):
    """An 11x11 image has one valid window position: SSIM is the Wang et al. formula with Gaussian weights."""
    g = torch.Generator(device=device).manual_seed(1)
    a = torch.rand(1, 1, 11, 11, generator=g, dtype=torch.float64, device=device) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g, dtype=torch.float64, device=device)).clamp(-1, 1)
    r = torch.arange(11, dtype=torch.float64, device=device) - 5
    w = torch.exp(-(r**2) / (2 * 1.5**2))
    w = (w[:, None] * w[None, :]) / (w.sum() ** 2)
    mx, my = (w * a).sum(), (w * b).sum()
    vx, vy = (w * (a - mx) ** 2).sum(), (w * (b - my) ** 2).sum()
    cxy = (w * (a - mx) * (b - my)).sum()
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    expected = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert float(ssim(a, b)) == pytest.approx(float(expected), rel=1e-5)


def test_ssim_small_images_and_numpy():
    d = load_data("digits", n=4).x.numpy()
    assert np.allclose(ssim(d, d).numpy(), 1.0, atol=1e-6)
    assert ssim(d[:, 0], d[:, 0]).shape == (4,)


def test_best_match_ssim_picks_the_right_target(device):
    targets = load_data("photos32").x.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    order = torch.tensor([5, 0, 7, 2, 2, 6], device=device)
    samples = targets[order] + 0.1 * torch.randn(len(order), 1, 32, 32, generator=g, device=device)
    best, index = best_match_ssim(samples, targets, return_index=True)
    assert torch.equal(index, order.cpu())  # metrics come back on CPU
    assert torch.allclose(best, ssim(samples, targets[order]), atol=1e-6)
    assert torch.allclose(best_match_ssim(targets, targets), torch.ones(len(targets)), atol=1e-6)
    noise = torch.rand(3, 1, 32, 32, generator=g, device=device) * 2 - 1
    assert best_match_ssim(noise, targets).max() < 0.3
