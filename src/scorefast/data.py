"""Data sets: built-in 2-D toys and small images, and user files, validated into one `Dataset` type.

Everything here reads local files only (the image sets ship with scikit-learn, user files are read
by `scorefast.datafiles`); nothing downloads and nothing is written. Every problem with user input
raises `UserError` with a one-line message that names the file or spec and what is wrong.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import display_path
from .datafiles import read_data_path
from .errors import UserError

BUILTIN_2D = ("moons", "8gaussians", "checkerboard", "swissroll", "pinwheel", "rings", "offcentre", "hashgrid",
              "sharpbroad")
BUILTIN_TOY = BUILTIN_2D + ("gaussian2d",)
BUILTIN_IMAGES = ("digits", "digits32", "photos32")
MEMORISATION_SIZE = 10  # fewer examples: no held-out split, samples are scored by their best match (SSIM)

GAUSSIAN2D_MEAN = (1.0, -0.5)
GAUSSIAN2D_COV = ((1.0, 0.6), (0.6, 0.8))

OFFCENTRE_MEANS = ((4.0, 3.0), (5.0, 1.5), (2.5, 2.0))
OFFCENTRE_STDS = (0.4, 0.3, 0.5)

DEFAULT_TOY_N = 10000


@dataclass
class Dataset:
    """Examples in model space, plus what a model and the metrics need to know about them.

    `x` is (N, *shape) float32: points as they are, images scaled to [-1, 1] (N, C, H, W).
    `levels` is the number K of discrete intensity levels of the source images (17 for the
    scikit-learn digits, 256 for 8-bit files), used for bits/dim dequantisation; None when continuous.
    """

    x: torch.Tensor
    name: str
    kind: str
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("points", "image"):
            raise ValueError(f"Dataset kind must be 'points' or 'image', not {self.kind!r}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-example shape, e.g. (2,) for 2-D points or (1, 8, 8) for digits."""
        return tuple(self.x.shape[1:])

    @property
    def dim(self) -> int:
        """Number of values per example (the product of `shape`)."""
        return math.prod(self.shape)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def memorised(self) -> bool:
        """Fewer than ``MEMORISATION_SIZE`` examples: a memorisation run, trained and evaluated on the same ones."""
        return len(self) < MEMORISATION_SIZE

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(train, test) after a shuffle fixed by `seed`: held-out metrics use the same examples every run."""
        if not 0.0 < test_fraction < 1.0:
            raise UserError(f"data '{self.name}': test fraction must be in (0, 1), got {test_fraction}")
        n = len(self)
        if n < 2:
            raise UserError(f"data '{self.name}': needs at least 2 examples to split, has {n}")
        n_test = min(n - 1, max(1, round(n * test_fraction)))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        test, train = perm[:n_test], perm[n_test:]
        return (
            Dataset(self.x[train], self.name, self.kind, self.levels),
            Dataset(self.x[test], self.name, self.kind, self.levels),
        )


def list_builtin() -> list[str]:
    """Names `load_data` accepts without a file."""
    return list(BUILTIN_TOY + BUILTIN_IMAGES)


# ---------------------------------------------------------------------------------------------------
# Built-in 2-D sets (FFJORD's toy data, plus an off-centre mixture and a closed-form Gaussian)


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fresh (n, 2) float32 samples of a built-in 2-D set on FFJORD's scales (checkerboard in [-4, 4]^2).

    Randomness comes from `generator` (or torch's global generator), so a seeded generator gives
    the same samples every time.
    """
    if name not in BUILTIN_TOY:
        raise UserError(f"unknown 2-D data set '{name}' (built-ins: {', '.join(BUILTIN_TOY)})")
    if n < 1:
        raise UserError(f"data '{name}': number of samples must be positive, got {n}")
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    x = _TOYS[name](n, rng, seed)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _moons(n: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    from sklearn.datasets import make_moons

    x = make_moons(n_samples=n, noise=0.1, random_state=seed)[0]
    return x * 2 + np.array([-1.0, -0.2])


def _swissroll(n: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    from sklearn.datasets import make_swiss_roll

    return make_swiss_roll(n_samples=n, noise=1.0, random_state=seed)[0][:, [0, 2]] / 5.0


def _eight_gaussians(n: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    s = 1.0 / np.sqrt(2.0)
    centres = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    x = rng.standard_normal((n, 2)) * 0.5 + centres[rng.integers(0, 8, n)]
    return x / 1.414


def _checkerboard(n: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2


def _pinwheel(n: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    radial_std, tangential_std, classes, rate = 0.3, 0.1, 5, 0.25
    rads = np.linspace(0, 2 * np.pi, classes, endpoint=False)
    features = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = rads[rng.integers(0, classes, n)] + rate * np.exp(features[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    return 2 * np.stack(
        [features[:, 0] * c + features[:, 1] * s, -features[:, 0] * s + features[:, 1] * c], 1
    )


def _rings(n: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    radius = np.array([1.0, 0.75, 0.5, 0.25])[rng.integers(0, 4, n)]
    angle = rng.random(n) * 2 * np.pi
    x = np.stack([np.cos(angle), np.sin(angle)], 1) * radius[:, None] * 3.0
    return x + rng.normal(scale=0.08, size=x.shape)


def _offcentre(n: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    k = rng.integers(0, len(OFFCENTRE_MEANS), n)
    return np.array(OFFCENTRE_MEANS)[k] + rng.standard_normal((n, 2)) * np.array(OFFCENTRE_STDS)[k, None]


def _hashgrid(n: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    """The parallel-score-matching paper's 2-D density-estimation set (Haxholli & Lorenzi 2023): four thin
    uniform bars (0.1 x 2.5) drawing a '#', and five Gaussians of variance 0.02 at its corners and centre;
    the nine parts equally likely. Sharp edges and broad, flat mass together."""
    k = rng.integers(0, 9, n)
    u = rng.uniform(size=(n, 2))
    bar_x = np.where(k % 2 == 0, 0.45, -0.45)  # bars 0, 1: vertical at x = +-0.45; bars 2, 3: horizontal
    out = np.empty((n, 2))
    vertical = k < 2
    out[vertical] = np.stack([bar_x[vertical] - 0.05 + 0.1 * u[vertical, 0], -1.25 + 2.5 * u[vertical, 1]], 1)
    horizontal = (k >= 2) & (k < 4)
    out[horizontal] = np.stack([-1.25 + 2.5 * u[horizontal, 0], bar_x[horizontal] - 0.05 + 0.1 * u[horizontal, 1]], 1)
    centres = np.array([[-1.25, -1.25], [-1.25, 1.25], [1.25, -1.25], [1.25, 1.25], [0.0, 0.0]])
    blobs = k >= 4
    out[blobs] = centres[k[blobs] - 4] + math.sqrt(0.02) * rng.standard_normal((int(blobs.sum()), 2))
    return out


def _sharpbroad(n: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    """The paper's other 2-D set: a broad Gaussian (variance 0.015) at the centre, 8 sharper ones (0.003) on a
    circle of radius 0.45 and 16 very sharp ones (0.001) on radius 0.7, in proportions 45 : 80 : 48."""
    part = rng.choice(3, size=n, p=np.array([45.0, 80.0, 48.0]) / 173.0)
    angle = np.where(part == 1, np.pi * rng.integers(0, 8, n) / 4, np.pi * rng.integers(0, 16, n) / 8)
    radius = np.choose(part, [0.0, 0.45, 0.7])
    std = np.sqrt(np.choose(part, [0.015, 0.003, 0.001]))
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1) + std[:, None] * rng.standard_normal((n, 2))


def _gaussian2d(n: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    chol = np.linalg.cholesky(np.array(GAUSSIAN2D_COV))
    return np.array(GAUSSIAN2D_MEAN) + rng.standard_normal((n, 2)) @ chol.T


_TOYS = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "pinwheel": _pinwheel,
    "rings": _rings,
    "offcentre": _offcentre,
    "hashgrid": _hashgrid,
    "sharpbroad": _sharpbroad,
    "gaussian2d": _gaussian2d,
}


# ---------------------------------------------------------------------------------------------------
# Built-in images (shipped with scikit-learn)


def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    q = torch.from_numpy(load_digits().images.astype(np.float32))
    return (2 * q / 16 - 1).unsqueeze(1)


def _photos32() -> torch.Tensor:
    """Eight 32x32 grayscale crops: the centre square of each photo first, then left, right, zoomed."""
    from sklearn.datasets import load_sample_images

    grays = []
    for img in load_sample_images().images:
        rgb = torch.from_numpy(img.astype(np.float32))
        grays.append(rgb @ torch.tensor([0.299, 0.587, 0.114]) / 127.5 - 1)
    crops = []
    for which in ("centre", "left", "right", "zoom"):
        for g in grays:
            h, w = g.shape
            side = min(h, w)
            if which == "zoom":
                side //= 2
            top = (h - side) // 2
            left = {"left": 0, "right": w - side}.get(which, (w - side) // 2)
            crop = g[top : top + side, left : left + side][None, None]
            crops.append(F.interpolate(crop, size=(32, 32), mode="area")[0])
    return torch.stack(crops).clamp(-1, 1)


def _builtin_images(name: str) -> tuple[torch.Tensor, int | None]:
    if name == "digits":
        return _digits(), 17
    if name == "digits32":
        return F.interpolate(_digits(), size=(32, 32), mode="bilinear", align_corners=False), None
    return _photos32(), None


# ---------------------------------------------------------------------------------------------------
# Any data set by name or path


def load_data(spec: str, n: int | None = None, seed: int = 0) -> Dataset:
    """Load a built-in set by name or a user file/folder by path, validated and in model space.

    Toy sets return `n` fresh points (default 10,000) drawn with `seed`; image sets and files keep
    their first `n` examples (all of them when `n` is None or larger than the set).
    Files: .npy/.npz arrays (N x d points, N x H x W or N x C x H x W images, C in 1, 3, 4; also
    N x H x W x C), a folder of png/jpg/bmp images, MNIST idx files (optionally .gz), CIFAR-10
    python batches (a data_batch_*/test_batch file or the cifar-10-batches-py folder).
    Image values: integers 0..255 map to [-1, 1] with levels=256; float images in [0, 1] are mapped
    to [-1, 1], other float images must already lie in [-1, 1]. Points are kept as they are.
    """
    spec = str(spec)
    if not spec.strip():
        raise UserError("data: empty name; give a built-in set or a file or folder")
    if n is not None and n < 1:
        raise UserError(f"data '{display_path(spec)}': number of examples must be positive, got {n}")
    if spec in BUILTIN_TOY:
        g = torch.Generator().manual_seed(seed)
        return Dataset(sample_toy(spec, DEFAULT_TOY_N if n is None else n, g), spec, "points", None)
    if spec in BUILTIN_IMAGES:
        x, levels = _builtin_images(spec)
        return Dataset(x[:n].contiguous(), spec, "image", levels)
    path = Path(spec).expanduser()
    if not os.path.lexists(path):
        looks_like_path = os.sep in spec or "/" in spec or path.suffix != ""
        if looks_like_path:
            raise UserError(f"data file '{display_path(spec)}': does not exist")
        raise UserError(
            f"unknown data set '{display_path(spec)}': not a built-in ({', '.join(list_builtin())}) and no such file"
        )
    x, kind, levels = read_data_path(path, spec)
    x = x[:n].contiguous()
    return Dataset(x, path.name or spec, kind, levels)
