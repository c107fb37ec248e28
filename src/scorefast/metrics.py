"""Sample-quality metrics that need no download: SWD, MMD, a digits Fréchet distance, SSIM.

All functions accept torch tensors or numpy arrays; examples are rows (N, ...) and are flattened
where a metric works on vectors.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

ArrayLike = torch.Tensor | np.ndarray

CLASSIFIER_FILE = "digits_classifier_v1.safetensors"
_CLASSIFIER_SEED = 0
_trainings = 0  # how many times this process trained the digits classifier (a cache miss each)


def _as_tensor(a: ArrayLike, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    t = a.detach() if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    return t.to(device="cpu", dtype=dtype)


def _flat(a: ArrayLike, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    t = _as_tensor(a, dtype)
    return t.reshape(t.shape[0], -1)


def sliced_wasserstein(
    x: ArrayLike, y: ArrayLike, n_projections: int = 500, seed: int = 0, p: int = 2
) -> float:
    """Sliced p-Wasserstein distance: (mean over unit directions theta of W_p^p(<theta,x>, <theta,y>))^(1/p).

    Examples are flattened to vectors. The directions are normalised Gaussian draws of
    np.random.RandomState(seed), the same as POT's `ot.sliced.get_random_projections(d, n, seed)`, so the
    same `seed` gives the same directions and values from different checkpoints are comparable (POT
    itself is not imported: it costs 1.5 s, more than a periodic evaluation).
    Each 1-D W_p^p is the integral over u in (0, 1) of ``|F^-1(u) - G^-1(u)|^p``, exact for the two empirical
    quantile functions, which are constant between the breakpoints i/n and j/m (the same value as
    `ot.sliced_wasserstein_distance`, 5-10x faster: one sort per side and one gather for all directions).
    For N(0, I) vs N(m, I) in d dims and p = 2 the population value is ``|m| / sqrt(d)``.
    """
    xs, ys = _flat(x).numpy(), _flat(y).numpy()
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"sliced_wasserstein: dimensions differ ({xs.shape[1]} vs {ys.shape[1]})")
    theta = np.random.RandomState(seed).randn(xs.shape[1], n_projections)
    theta /= np.sqrt(np.sum(theta**2, axis=0, keepdims=True))
    xp, yp = np.sort(xs @ theta, axis=0), np.sort(ys @ theta, axis=0)
    n, m = len(xp), len(yp)
    ends = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    width = np.diff(ends, prepend=0.0)
    mid = ends - width / 2
    ix, iy = np.minimum((mid * n).astype(int), n - 1), np.minimum((mid * m).astype(int), m - 1)
    return float(np.mean(width @ np.abs(xp[ix] - yp[iy]) ** p) ** (1.0 / p))


def mmd(x: ArrayLike, y: ArrayLike, bandwidths: tuple[float, ...] = (0.1, 0.5, 1, 2, 5)) -> float:
    """Unbiased MMD^2 with the kernel ``k(a, b) = sum_s exp(-|a - b|^2 / (2 s^2))`` over `bandwidths` s.

    Bandwidths are absolute (not rescaled to the data), so they suit data of roughly unit scale per
    coordinate such as the 2-D toys; for high-dimensional images pass bandwidths near sqrt(d). The
    unbiased estimate can be slightly negative when both samples come from the same distribution.
    Kernel sums are computed in blocks, so 10,000 x 10,000 samples need little memory.
    """
    xs, ys = _flat(x), _flat(y)
    if len(xs) < 2 or len(ys) < 2:
        raise ValueError("mmd: each sample needs at least 2 examples")
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"mmd: dimensions differ ({xs.shape[1]} vs {ys.shape[1]})")
    gammas = [1.0 / (2.0 * float(s) ** 2) for s in bandwidths]

    def kernel_sum(a: torch.Tensor, b: torch.Tensor, same: bool) -> float:
        total = 0.0
        b_sq = (b * b).sum(1)
        for start in range(0, len(a), 256):
            block = a[start : start + 256]
            d2 = ((block * block).sum(1)[:, None] + b_sq[None, :] - 2.0 * block @ b.T).clamp_min(0)
            if same:
                rows = torch.arange(len(block))
                d2[rows, rows + start] = float("inf")
            total += sum(float(torch.exp(-g * d2).sum()) for g in gammas)
        return total

    m, n = len(xs), len(ys)
    return (
        kernel_sum(xs, xs, True) / (m * (m - 1))
        + kernel_sum(ys, ys, True) / (n * (n - 1))
        - 2.0 * kernel_sum(xs, ys, False) / (m * n)
    )


def frechet_distance(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike) -> float:
    """Fréchet distance of two Gaussians: ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))``.

    The matrix square root is scipy's `sqrtm`; tiny imaginary parts from round-off are dropped. If
    it fails (non-finite, a large imaginary part, or a square that misses C1 C2, as happens with
    near-singular covariances) the trace comes from the symmetric form tr (C1^(1/2) C2 C1^(1/2))^(1/2),
    which has the same value and is computed with symmetric eigen-decompositions.
    """
    m1, m2 = _as_tensor(mu1).numpy().ravel(), _as_tensor(mu2).numpy().ravel()
    c1, c2 = np.atleast_2d(_as_tensor(cov1).numpy()), np.atleast_2d(_as_tensor(cov2).numpy())
    if m1.shape != m2.shape or c1.shape != c2.shape or c1.shape != (m1.size, m1.size):
        raise ValueError(
            f"frechet_distance: shapes do not match ({m1.shape}, {c1.shape}, {m2.shape}, {c2.shape})"
        )
    diff = m1 - m2
    product = c1 @ c2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(product)
    scale = max(1e-12, float(np.abs(product).max()))
    ok = np.all(np.isfinite(covmean)) and np.abs(np.imag(covmean)).max() <= 1e-6 * np.sqrt(scale)
    if ok:
        covmean = np.real(covmean)
        ok = np.abs(covmean @ covmean - product).max() <= 1e-6 * scale
    if ok:
        tr_covmean = float(np.trace(covmean))
    else:
        w1, v1 = np.linalg.eigh((c1 + c1.T) / 2)
        s1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
        inner = s1 @ c2 @ s1
        tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())
    value = float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_covmean)
    return max(value, 0.0)


# ---------------------------------------------------------------------------------------------------
# Digits Fréchet distance: a small CNN trained on the scikit-learn digits themselves


class DigitsClassifier(nn.Module):
    """Tiny CNN on 1x8x8 digits in [-1, 1]; `features` is the 64-d penultimate layer (Fréchet features)."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the 64-unit layer: unlike post-ReLU values it has no dead, constant units."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc1(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.features(x)))


def default_cache_dir() -> Path:
    """Where computed helpers are cached: $SCOREFAST_CACHE, else ~/.cache/scorefast."""
    return Path(os.environ.get("SCOREFAST_CACHE") or Path.home() / ".cache" / "scorefast")


def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) * (2.0 / 16.0) - 1.0).unsqueeze(1)
    return x, torch.from_numpy(d.target.astype(np.int64))


def _train_digits_classifier() -> tuple[DigitsClassifier, float]:
    """Train on a fixed 80 % of the digits (seeded, seconds on CPU); return model and held-out accuracy.

    Runs on one CPU thread: the same result on every machine, and for a network this small more
    threads only add contention (10x slower on a busy 2-core machine).
    """
    global _trainings
    _trainings += 1
    x, y = _digits_arrays()
    g = torch.Generator().manual_seed(_CLASSIFIER_SEED)
    perm = torch.randperm(len(x), generator=g)
    n_test = len(x) // 5
    test, train = perm[:n_test], perm[n_test:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_CLASSIFIER_SEED)
            model = DigitsClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        model.train()
        for _ in range(15):
            order = train[torch.randperm(len(train), generator=g)]
            for start in range(0, len(order), 64):
                idx = order[start : start + 64]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    finally:
        torch.set_num_threads(threads)
    return model, accuracy


def digits_classifier(cache_dir: str | os.PathLike | None = None) -> tuple[DigitsClassifier, float]:
    """The digits feature network and its held-out accuracy, trained once and cached as safetensors.

    The cache lives in `cache_dir` (default: $SCOREFAST_CACHE or ~/.cache/scorefast) and is written
    atomically (temp file + rename), so concurrent runs never see half a file; an unreadable cache
    is retrained and replaced. Loading uses safetensors, which cannot execute code.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open, save_file

    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / CLASSIFIER_FILE
    model = DigitsClassifier()
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                accuracy = float((f.metadata() or {})["heldout_accuracy"])
            model.load_state_dict(load_file(str(path)))
            model.eval()
            return model, accuracy
        except (SafetensorError, OSError, KeyError, ValueError, RuntimeError):
            pass
    model, accuracy = _train_digits_classifier()
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".digits_classifier.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp, metadata={"heldout_accuracy": repr(accuracy), "seed": str(_CLASSIFIER_SEED)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return model, accuracy


def _digit_images(a: ArrayLike) -> torch.Tensor:
    """Digits as (N, 1, 8, 8) float32: (N, 64) and (N, 8, 8) are reshaped, other sizes area-resampled."""
    t = _as_tensor(a, torch.float32)
    if t.ndim == 2 and t.shape[1] == 64:
        t = t.reshape(-1, 1, 8, 8)
    elif t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(
            f"digits_frechet: expected (N, 1, H, W) grayscale digits, got shape {tuple(t.shape)}"
        )
    if t.shape[-2:] != (8, 8):
        t = F.interpolate(t, size=(8, 8), mode="area")
    return t


def digits_frechet(
    samples: ArrayLike, reference: ArrayLike | None = None, cache_dir: str | os.PathLike | None = None
) -> float:
    """Fréchet distance between Gaussian fits of classifier features of `samples` and `reference`.

    The digits analogue of FID with no download: features are the 64-d penultimate layer of a
    small CNN trained on the scikit-learn digits (see `digits_classifier`). `reference` defaults to
    all 1,797 digits. Inputs are digits in [-1, 1]; like FID it is biased upwards for small samples.
    """
    model, _ = digits_classifier(cache_dir)
    ref = _digits_arrays()[0] if reference is None else _digit_images(reference)
    xs = _digit_images(samples)
    if len(xs) < 2 or len(ref) < 2:
        raise ValueError("digits_frechet: need at least 2 samples and 2 reference digits")
    with torch.no_grad():
        fx = torch.cat([model.features(b) for b in xs.split(4096)]).double().numpy()
        fr = torch.cat([model.features(b) for b in ref.split(4096)]).double().numpy()
    return frechet_distance(fx.mean(0), np.cov(fx, rowvar=False), fr.mean(0), np.cov(fr, rowvar=False))


# ---------------------------------------------------------------------------------------------------
# SSIM for the memorisation protocol


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def _images(a: ArrayLike) -> torch.Tensor:
    t = _as_tensor(a)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise ValueError(f"ssim: expected (N, C, H, W) or (N, H, W) images, got shape {tuple(t.shape)}")
    return t


def _window_for(shape: torch.Size) -> torch.Tensor:
    size = min(11, shape[-2], shape[-1])
    size -= 1 - size % 2
    return _gaussian_window(size, 1.5)


def _local_filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted local average per channel, over 'valid' window positions only."""
    c = x.shape[1]
    return F.conv2d(x, window.expand(c, 1, *window.shape), groups=c)


def _ssim_mean(
    mu_a: torch.Tensor,
    var_a: torch.Tensor,
    mu_b: torch.Tensor,
    var_b: torch.Tensor,
    e_ab: torch.Tensor,
    data_range: float,
) -> torch.Tensor:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    cov = e_ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean(dim=(1, 2, 3))


def _moments(x: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = _local_filter(x, window)
    return mu, _local_filter(x * x, window) - mu**2


def ssim(a: ArrayLike, b: ArrayLike, data_range: float = 2.0) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004): Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03, mean over
    channels and 'valid' window positions. Images are (N, C, H, W) in [-1, 1] (so data_range 2); a batch
    of 1 broadcasts against N. Images smaller than 11 pixels use the largest odd window that fits.
    """
    x, y = _images(a), _images(b)
    x, y = torch.broadcast_tensors(x, y)
    window = _window_for(x.shape)
    e_xy = _local_filter(x * y, window)
    return _ssim_mean(*_moments(x, window), *_moments(y, window), e_xy, data_range).float()


def best_match_ssim(
    samples: ArrayLike, targets: ArrayLike, data_range: float = 2.0, return_index: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """For each sample the highest SSIM over all targets (the memorisation protocol: near 1 means a copy).

    With `return_index` also returns which target matched best.
    """
    x, t = _images(samples), _images(targets)
    if x.shape[1:] != t.shape[1:]:
        raise ValueError(
            f"best_match_ssim: sample shape {tuple(x.shape[1:])} != target shape {tuple(t.shape[1:])}"
        )
    window = _window_for(x.shape)
    mu_x, var_x = _moments(x, window)
    mu_t, var_t = _moments(t, window)
    scores = torch.empty(len(x), len(t), dtype=torch.float64)
    for j in range(len(t)):
        e_xt = _local_filter(x * t[j : j + 1], window)
        scores[:, j] = _ssim_mean(mu_x, var_x, mu_t[j : j + 1], var_t[j : j + 1], e_xt, data_range)
    best, index = scores.max(dim=1)
    return (best.float(), index) if return_index else best.float()
