"""Data sets: built-in 2-D toys and small images, and user files, validated into one `Dataset` type.

Everything here reads local files only (the image sets ship with scikit-learn); nothing downloads
and nothing is written. Every problem with user input raises `UserError` with a one-line message
that names the file or spec and what is wrong.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scorefast.errors import UserError

BUILTIN_2D = ("moons", "8gaussians", "checkerboard", "swissroll", "pinwheel", "rings", "offcentre")
BUILTIN_TOY = BUILTIN_2D + ("gaussian2d",)
BUILTIN_IMAGES = ("digits", "digits32", "photos32")

GAUSSIAN2D_MEAN = (1.0, -0.5)
GAUSSIAN2D_COV = ((1.0, 0.6), (0.6, 0.8))

OFFCENTRE_MEANS = ((4.0, 3.0), (5.0, 1.5), (2.5, 2.0))
OFFCENTRE_STDS = (0.4, 0.3, 0.5)

DEFAULT_TOY_N = 10000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

_IDX_NAME = re.compile(r"-idx\d-ubyte(\.gz)?$")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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
# User files


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
    if n is not None and n < 1:
        raise UserError(f"data '{spec}': number of examples must be positive, got {n}")
    if spec in BUILTIN_TOY:
        g = torch.Generator().manual_seed(seed)
        return Dataset(sample_toy(spec, DEFAULT_TOY_N if n is None else n, g), spec, "points", None)
    if spec in BUILTIN_IMAGES:
        x, levels = _builtin_images(spec)
        return Dataset(x[:n].contiguous(), spec, "image", levels)
    path = Path(spec).expanduser()
    if not path.exists():
        looks_like_path = os.sep in spec or "/" in spec or path.suffix != ""
        if looks_like_path:
            raise UserError(f"data file '{spec}': does not exist")
        raise UserError(
            f"unknown data set '{spec}': not a built-in ({', '.join(list_builtin())}) and no such file"
        )
    x, kind, levels = _load_path(path, spec)
    x = x[:n].contiguous()
    return Dataset(x, path.name or spec, kind, levels)


def _load_path(path: Path, spec: str) -> tuple[torch.Tensor, str, int | None]:
    label = f"data file '{spec}'"
    if path.is_dir():
        return _load_dir(path, spec)
    name = path.name
    if name.startswith(("data_batch", "test_batch")):
        return _to_model_space(_load_cifar([path], spec), label, channels_last_ok=False)
    if _IDX_NAME.search(name):
        return _to_model_space(_load_idx(path, spec), label)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return _to_model_space(_load_numpy(path, spec), label)
    if suffix in IMAGE_SUFFIXES:
        return _to_model_space(_load_images([path], spec), label, channels_last_ok=False)
    if suffix == ".gz" and name.lower().endswith(".npy.gz"):
        raise UserError(f"{label}: gzip-compressed .npy is not supported; decompress it first")
    raise UserError(
        f"{label}: unknown format (expected .npy, .npz, an image folder, MNIST idx or CIFAR-10 batches)"
    )


def _load_dir(path: Path, spec: str) -> tuple[torch.Tensor, str, int | None]:
    label = f"data folder '{spec}'"
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    batches = [p for p in files if p.name.startswith("data_batch")] or [
        p for p in files if p.name.startswith("test_batch")
    ]
    if batches:
        return _to_model_space(_load_cifar(batches, spec), label, channels_last_ok=False)
    images = sorted(
        (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: str(p.relative_to(path)),
    )
    images = [p for p in images if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    if images:
        return _to_model_space(_load_images(images, spec), label, channels_last_ok=False)
    idx = [p for p in files if _IDX_NAME.search(p.name) and "images" in p.name]
    idx = [p for p in idx if p.name.startswith("train")] or idx
    if idx:
        return _to_model_space(_load_idx(idx[0], str(idx[0])), label)
    raise UserError(
        f"{label}: no images (png/jpg/jpeg/bmp), CIFAR-10 batches or MNIST idx image files found in it"
    )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def _load_numpy(path: Path, spec: str) -> np.ndarray:
    label = f"data file '{spec}'"
    magic = b"PK" if path.suffix.lower() == ".npz" else b"\x93NUMPY"
    try:
        with path.open("rb") as f:
            head = f.read(len(magic))
    except OSError as err:
        raise UserError(f"{label}: cannot be read ({_one_line(err)})") from None
    if head != magic:
        raise UserError(f"{label}: cannot be read as a {path.suffix.lower()} file (bad header), corrupt?")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise UserError(f"{label}: holds Python objects (object dtype), not numbers") from None
        raise UserError(
            f"{label}: cannot be read as a numpy file, truncated or corrupt? ({_one_line(err)})"
        ) from None
    except Exception as err:  # zipfile, EOF and OS errors from a damaged file
        raise UserError(
            f"{label}: cannot be read as a numpy file, truncated or corrupt? ({_one_line(err)})"
        ) from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        keys = list(loaded.files)
        if len(keys) == 1:
            key = keys[0]
        else:
            key = next((k for k in ("x", "data", "arr_0") if k in keys), None)
            if key is None:
                raise UserError(
                    f"{label}: holds {len(keys)} arrays ({', '.join(keys[:8])}), none named x, data or arr_0"
                )
        try:
            return loaded[key]
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise UserError(f"{label}: array '{key}' holds Python objects, not numbers") from None
            raise UserError(f"{label}: array '{key}' cannot be read ({_one_line(err)})") from None
        except Exception as err:
            raise UserError(
                f"{label}: array '{key}' cannot be read, truncated or corrupt? ({_one_line(err)})"
            ) from None


def _load_idx(path: Path, spec: str) -> np.ndarray:
    """Parse an MNIST idx file: magic 0 0 <type> <ndim>, ndim big-endian uint32 sizes, then the data."""
    label = f"data file '{spec}'"
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as err:
        raise UserError(f"{label}: cannot be read, truncated or corrupt? ({_one_line(err)})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{label}: not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"{label}: idx header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise UserError(
            f"{label}: {len(raw)} bytes do not match its idx header {dims} ({expected} bytes), truncated?"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a callable outside the allow-list."""


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays, dicts and lists and nothing else (pickle can run code)."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str):
        canonical = (
            module.replace("numpy.core.", "numpy._core.", 1) if module.startswith("numpy.core.") else module
        )
        if (canonical, name) not in self._ALLOWED:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(canonical, name)


def _load_cifar(files: list[Path], spec: str) -> np.ndarray:
    """CIFAR-10 python batches: dict with b'data' N x 3072 uint8, rows are R, G, B planes of 32x32."""
    arrays = []
    for path in files:
        label = f"data file '{spec}'" if len(files) == 1 else f"data file '{path}'"
        try:
            with path.open("rb") as f:
                batch = _SafeUnpickler(f, encoding="bytes").load()
        except _RefusedGlobal as err:
            raise UserError(
                f"{label}: refused, the pickle calls '{err}' (a CIFAR-10 batch holds only numpy arrays)"
            ) from None
        except Exception as err:
            raise UserError(
                f"{label}: cannot be read as a CIFAR-10 batch, truncated or corrupt? ({_one_line(err)})"
            ) from None
        data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
        if not isinstance(data, np.ndarray):
            raise UserError(f"{label}: not a CIFAR-10 batch (no 'data' array in a dict)")
        if data.dtype.kind not in "biu" or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(
                f"{label}: CIFAR-10 'data' must be N x 3072 integers, got {data.dtype} {tuple(data.shape)}"
            )
        arrays.append(data.reshape(-1, 3, 32, 32))
    return np.concatenate(arrays)


def _load_images(files: list[Path], spec: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    arrays, size, rgb = [], None, False
    for path in files:
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
                    raise UserError(
                        f"image file '{path}': mode {im.mode} (16-bit or float) is not supported, use 8-bit"
                    )
                gray = im.mode in ("1", "L", "LA")
                im = im.convert("L" if gray else "RGB")
                if size is None:
                    size = im.size
                elif im.size != size:
                    raise UserError(
                        f"image file '{path}': size {im.size[0]}x{im.size[1]} differs from the first image's "
                        f"{size[0]}x{size[1]} (all images in '{spec}' must be the same size)"
                    )
                rgb = rgb or not gray
                arrays.append(np.asarray(im))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            if isinstance(err, UserError):
                raise
            raise UserError(f"image file '{path}': cannot be read, corrupt? ({_one_line(err)})") from None
    if rgb:
        arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
        return np.stack(arrays).transpose(0, 3, 1, 2)
    return np.stack(arrays)[:, None]


def _to_model_space(
    a: np.ndarray, label: str, channels_last_ok: bool = True
) -> tuple[torch.Tensor, str, int | None]:
    """Validate an array and map it into model space: points unchanged, images to [-1, 1] N x C x H x W."""
    if a.dtype.kind not in "biuf":
        raise UserError(f"{label}: array of dtype {a.dtype} is not numeric (need integers or floats)")
    if a.ndim < 2 or a.ndim > 4:
        raise UserError(
            f"{label}: array of shape {tuple(a.shape)} has rank {a.ndim}; "
            "need N x d points, N x H x W or N x C x H x W images"
        )
    if a.shape[0] == 0:
        raise UserError(f"{label}: has zero rows (shape {tuple(a.shape)})")
    if a.size == 0:
        raise UserError(f"{label}: is empty (shape {tuple(a.shape)})")
    if a.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise UserError(f"{label}: contains {bad} NaN/inf values")
    if a.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), "points", None
    if a.ndim == 3:
        a = a[:, None]
    elif a.shape[1] not in (1, 3, 4):
        if not (channels_last_ok and a.shape[3] in (1, 3, 4)):
            raise UserError(
                f"{label}: 4-D array of shape {tuple(a.shape)} needs 1, 3 or 4 channels (N x C x H x W)"
            )
        a = a.transpose(0, 3, 1, 2)
    lo, hi = float(a.min()), float(a.max())
    if a.dtype.kind in "biu":
        if lo < 0 or hi > 255:
            raise UserError(f"{label}: integer image values span [{lo:g}, {hi:g}], expected 0..255")
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) / 127.5 - 1
        return x, "image", 256
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if lo >= 0 and hi <= 1:
        return x * 2 - 1, "image", None
    if lo >= -1 and hi <= 1:
        return x, "image", None
    raise UserError(
        f"{label}: float image values span [{lo:g}, {hi:g}]; expected [-1, 1] or [0, 1] (or uint8 0..255)"
    )
