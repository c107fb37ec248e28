"""User data files read into model space (8-bit images as uint8 levels): .npy/.npz arrays, image folders, MNIST
idx, CIFAR-10 batches.

Files are assumed hostile. Only regular files are opened (a FIFO or device could block forever);
every size a header declares is checked against the file and this machine's memory before anything
is allocated; nothing is unpickled except, for CIFAR-10, numpy arrays through an allow-list (the
.npy/.npz reader parses the format itself and never unpickles); values float32 training cannot
hold are refused. Every problem is one `UserError` line naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .checkpoint import display_path, error_reason, open_regular
from .dataformats import CIFAR_BATCHES, IDX_NAME, IMAGE_SUFFIXES, idx_header, kind_of_rank, npy_header, npz_member
from .errors import UserError

MAX_IMAGE_PIXELS = 4096 * 4096  # per image file, read from its header before decoding (memory stays bounded)

MAX_ABS_VALUE = 1e10
"""Largest magnitude accepted in a data file. Training squares values, sums them over dimensions and
the batch and divides by noise variances down to ~1e-4: with |x| <= 1e10 those stay below ~1e30,
far inside float32's 3.4e38, while |x| ~ 1e19 already overflows x^2. No real data set needs more
(standardise it); larger values are almost always a unit mistake or a corrupt file."""

MMAP_FRACTION = 0.25  # a uint8 .npy larger than this fraction of physical memory is memory-mapped, not read


def read_data_path(path: Path, spec: str) -> tuple[torch.Tensor, str, int | None]:
    """(x, kind, levels) of the file or folder ``path`` (given by the user as ``spec``), in model space."""
    label = f"data file '{display_path(spec)}'"
    if path.is_dir():
        return _load_dir(path, spec)
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"{label}: is empty (0 bytes)")
    name = path.name
    if name.startswith(CIFAR_BATCHES):
        return _to_model_space(_load_cifar([path]), label, channels_last_ok=False)
    if IDX_NAME.search(name):
        return _to_model_space(_load_idx(path, label), label)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return _to_model_space(_load_numpy(path, label), label)
    if suffix in IMAGE_SUFFIXES:
        return _to_model_space(_load_images([path], spec), label, channels_last_ok=False)
    if suffix == ".gz" and name.lower().endswith(".npy.gz"):
        raise UserError(f"{label}: gzip-compressed .npy is not supported; decompress it first")
    raise UserError(
        f"{label}: unknown format (expected .npy, .npz, an image folder, MNIST idx or CIFAR-10 batches)"
    )


def _entries(folder: str, label: str) -> list[os.DirEntry]:
    """Non-hidden entries of a folder, sorted by name; nothing is opened or followed."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        raise UserError(f"{label}: cannot list '{display_path(folder)}' ({error_reason(err)})") from None


def _find_images(root: Path, label: str) -> tuple[list[Path], int]:
    """Image-suffixed entries below ``root`` sorted by relative path, and the number of subfolders.

    Symbolic links to folders are not followed (no loops); entries are returned whatever their type,
    so a FIFO or broken link named like an image is refused when read instead of silently skipped.
    """
    images, folders, todo = [], 0, [str(root)]
    while todo:
        for e in _entries(todo.pop(), label):
            if e.is_dir(follow_symlinks=False):
                todo.append(e.path)
                folders += 1
            elif Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
                images.append(Path(e.path))
    return sorted(images, key=lambda p: str(p.relative_to(root))), folders


def _load_dir(path: Path, spec: str) -> tuple[torch.Tensor, str, int | None]:
    label = f"data folder '{display_path(spec)}'"
    top = _entries(str(path), label)
    files = [Path(e.path) for e in top if not e.is_dir(follow_symlinks=False)]
    batches = [p for p in files if p.name.startswith(CIFAR_BATCHES[0])] or [
        p for p in files if p.name.startswith(CIFAR_BATCHES[1])
    ]
    if batches:
        return _to_model_space(_load_cifar(batches), label, channels_last_ok=False)
    images, folders = _find_images(path, label)
    if images:
        return _to_model_space(_load_images(images, spec), label, channels_last_ok=False)
    idx = [p for p in files if IDX_NAME.search(p.name) and "images" in p.name]
    idx = [p for p in idx if p.name.startswith("train")] or idx
    if idx:
        return _to_model_space(_load_idx(idx[0], f"data file '{display_path(idx[0])}'"), label)
    where = f" (nor in its {folders} subfolders)" if folders else ""
    raise UserError(
        f"{label}: no images (png/jpg/jpeg/bmp), CIFAR-10 batches or MNIST idx image files found in it{where}"
    )


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where sysconf cannot tell, as on Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(nbytes: int, label: str) -> None:
    """Refuse a declared size larger than this machine's physical memory, before allocating it (without
    sysconf the allocation itself fails cleanly)."""
    memory = physical_memory()
    if memory is not None and nbytes > memory:
        raise UserError(f"{label}: would need {nbytes / 2**30:.3g} GiB to load, more than this machine's "
                        f"{memory / 2**30:.3g} GiB of memory (a header that lies about its size?)")


def _read_exactly(f: BinaryIO, n: int) -> bytearray:
    """Up to ``n`` bytes from ``f`` into a writable buffer (shorter only at end of file)."""
    buf, got = bytearray(n), 0
    with memoryview(buf) as view:
        while got < n:
            k = f.readinto(view[got:])
            if not k:
                break
            got += k
    del buf[got:]
    return buf


def _read_npy(f: BinaryIO, size: int, label: str, path: Path | None = None) -> np.ndarray:
    """One .npy array from ``f`` (``size`` bytes long), parsed without pickle and size-checked first.

    A uint8 array in C order larger than ``MMAP_FRACTION`` of this machine's memory is memory-mapped from
    ``path`` (read-only) instead: pages are read when a batch touches them."""
    shape, fortran_order, dtype = npy_header(f, label)
    if dtype.hasobject:
        raise UserError(f"{label}: holds Python objects (object dtype), not numbers; they are not unpickled")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    available, memory = size - f.tell(), physical_memory()
    mapped = path is not None and dtype == np.uint8 and not fortran_order and nbytes > MMAP_FRACTION * (memory or 1e30)
    if mapped and nbytes <= available:
        return np.memmap(path, dtype=np.uint8, mode="r", offset=f.tell(), shape=shape)
    if not mapped:
        _check_memory(nbytes + 4 * count, label)
    data = _read_exactly(f, nbytes) if nbytes <= available else b""
    if len(data) < nbytes:
        raise UserError(f"{label}: truncated, its header declares {shape} {dtype} ({nbytes} bytes) "
                        f"but {max(available, 0)} bytes follow")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran_order else "C")


def _load_numpy(path: Path, label: str) -> np.ndarray:
    npz = path.suffix.lower() == ".npz"
    with open_regular(path, label) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            if not npz:
                return _read_npy(f, size, label, path)
            if f.read(2) != b"PK":
                raise UserError(f"{label}: cannot be read as a .npz file (bad header), corrupt?")
            with zipfile.ZipFile(f) as archive:
                return _read_npz_member(archive, label)
        except UserError:
            raise
        except Exception as err:  # zipfile, zlib, header parsing and OS errors from a damaged file
            raise UserError(
                f"{label}: cannot be read as a numpy file, truncated or corrupt? ({error_reason(err)})"
            ) from None


def _read_npz_member(archive: zipfile.ZipFile, label: str) -> np.ndarray:
    """The array named x, data or arr_0 (or the only one) of an .npz archive."""
    info, member_label = npz_member(archive, label)
    _check_memory(info.file_size, label)
    with archive.open(info) as member:
        return _read_npy(member, info.file_size, member_label)


def _load_idx(path: Path, label: str) -> np.ndarray:
    """Parse an MNIST idx file: magic 0 0 <type> <ndim>, ndim big-endian uint32 sizes, then the data.

    The declared size is checked against the file (or, gzipped, against memory) before reading, and
    no more than it declares is ever decompressed.
    """
    gz = path.name.endswith(".gz")
    with open_regular(path, label) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
            code, ndim = idx_header(stream, label)
            raw_dims = stream.read(4 * ndim)
            if ndim == 0 or len(raw_dims) < 4 * ndim:
                raise UserError(f"{label}: idx header is truncated")
            dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
            dtype = np.dtype(code)
            nbytes = math.prod(dims) * dtype.itemsize
            header = 4 + 4 * ndim
            if not gz and size != header + nbytes:
                raise UserError(f"{label}: {size} bytes do not match its idx header {dims} "
                                f"({header + nbytes} bytes), truncated?")
            _check_memory(nbytes + 4 * math.prod(dims), label)
            data = _read_exactly(stream, nbytes)
            if len(data) < nbytes or (gz and stream.read(1)):
                raise UserError(f"{label}: its decompressed size does not match its idx header {dims} "
                                f"({header + nbytes} bytes), truncated?")
        except UserError:
            raise
        except Exception as err:  # gzip, zlib and EOF errors from a damaged stream
            raise UserError(f"{label}: cannot be read, truncated or corrupt? ({error_reason(err)})") from None
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a callable outside the allow-list, or for an allowed one with arguments that
    numpy's own pickles never pass."""


class _NdarrayName:
    """Stands for ``numpy.ndarray`` in a pickle: it may be named (as _reconstruct's first argument) but not
    called, since ``ndarray((n,))`` would allocate n bytes the file does not hold."""

    def __call__(self, *args: object) -> None:
        raise _Refused("the pickle calls numpy.ndarray, which allocates memory the file does not hold")


_NDARRAY = _NdarrayName()


def _empty_array(cls: object, shape: tuple, dtype: object) -> np.ndarray:
    """numpy's ndarray.__reduce__ constructor, which always asks for an empty array (its data comes
    with BUILD); a non-empty one would allocate memory the file does not pay for."""
    if cls is not _NDARRAY or not isinstance(shape, tuple) or math.prod(shape) != 0:
        raise _Refused("the pickle asks numpy's _reconstruct for a non-empty array")
    return np.ndarray(shape, np.dtype(dtype))


def _array_from_buffer(buf: object, dtype: object, shape: tuple, order: str) -> np.ndarray:
    """numpy's pickle-protocol-5 constructor: an array over bytes the pickle itself holds."""
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _latin1_bytes(text: object, encoding: str = "latin1") -> bytes:
    """``_codecs.encode(text, 'latin1')``: how protocol 2 pickles bytes from Python 3."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("the pickle calls _codecs.encode on something other than text to latin-1")
    return text.encode("latin1")


def _byte_array(data: object = b"", encoding: str | None = None) -> bytearray:
    """``bytearray`` from bytes or latin-1 text only (``bytearray(n)`` would allocate n bytes)."""
    if isinstance(data, str) and encoding in ("latin1", "latin-1"):
        return bytearray(data, "latin1")
    if isinstance(data, bytes | bytearray) and encoding is None:
        return bytearray(data)
    raise _Refused("the pickle calls bytearray on something other than bytes or latin-1 text")


def _check_opcodes(raw: bytes) -> None:
    """Walk the pickle's opcodes without running them, refusing memo indices beyond the opcodes seen.

    Honest picklers number memo entries in order; the C unpickler allocates a table as large as the
    largest index, so a 9-byte file asking for index 2**30 would cost 16 GiB. Truncated length fields
    also fail here, before the unpickler allocates for them.
    """
    for count, (op, arg, _) in enumerate(pickletools.genops(raw)):
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= int(arg) <= count:
            raise _Refused(f"the pickle's memo index {arg} at opcode {count} is out of order (the unpickler would "
                           "allocate a table that large)")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays, dicts and lists and nothing else (pickle can run code).

    Each allowed name maps to a stand-in that accepts only what numpy's own pickles pass it.
    """

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"): _empty_array,
        ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
        ("builtins", "bytearray"): _byte_array,
    }

    def find_class(self, module: str, name: str):
        canonical = (
            module.replace("numpy.core.", "numpy._core.", 1) if module.startswith("numpy.core.") else module
        )
        if (canonical, name) not in self._ALLOWED:
            raise _Refused(f"the pickle calls '{module}.{name}'")
        return self._ALLOWED[canonical, name]


def _load_cifar(files: list[Path]) -> np.ndarray:
    """CIFAR-10 python batches: dict with b'data' N x 3072 uint8, rows are R, G, B planes of 32x32."""
    arrays = []
    for path in files:
        label = f"data file '{display_path(path)}'"
        with open_regular(path, label) as f:
            _check_memory(os.fstat(f.fileno()).st_size, label)
            try:
                raw = f.read()
                _check_opcodes(raw)
                batch = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
            except _Refused as err:
                raise UserError(
                    f"{label}: refused, {display_path(str(err))[:120]} (a CIFAR-10 batch holds only numpy arrays)"
                ) from None
            except Exception as err:
                raise UserError(
                    f"{label}: cannot be read as a CIFAR-10 batch, truncated or corrupt? ({error_reason(err)})"
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
    from PIL import Image

    arrays, size, rgb = [], None, False
    for path in files:
        label = f"image file '{display_path(path)}'"
        with open_regular(path, label) as f:
            try:
                with Image.open(f) as im:
                    if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                        raise UserError(f"{label}: {im.size[0]}x{im.size[1]} pixels, more than the limit of "
                                        f"{MAX_IMAGE_PIXELS:,} pixels per image; shrink it first")
                    if size is None:
                        _check_memory(len(files) * im.size[0] * im.size[1] * 3 * 5, label)
                    im.load()
                    if im.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
                        raise UserError(f"{label}: mode {im.mode} (16-bit or float) is not supported, use 8-bit")
                    gray = im.mode in ("1", "L", "LA")
                    im = im.convert("L" if gray else "RGB")
            except UserError:
                raise
            except Exception as err:  # Pillow's decoders raise many types on damaged files, and bomb errors
                raise UserError(f"{label}: cannot be read, corrupt? ({error_reason(err)})") from None
        if size is None:
            size = im.size
        elif im.size != size:
            raise UserError(
                f"{label}: size {im.size[0]}x{im.size[1]} differs from the first image's "
                f"{size[0]}x{size[1]} (all images in '{display_path(spec)}' must be the same size)"
            )
        rgb = rgb or not gray
        arrays.append(np.asarray(im))
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
    kind = kind_of_rank(a.ndim)
    if kind is None:
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
    lo, hi = float(a.min()), float(a.max())
    if max(-lo, hi) > MAX_ABS_VALUE:
        raise UserError(f"{label}: values span [{lo:g}, {hi:g}], beyond +-{MAX_ABS_VALUE:g} where float32 "
                        "training overflows; rescale (standardise) the data")
    if kind == "points":
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), kind, None
    if a.ndim == 3:
        a = a[:, None]
    elif a.shape[1] not in (1, 3, 4):
        if not (channels_last_ok and a.shape[3] in (1, 3, 4)):
            raise UserError(
                f"{label}: 4-D array of shape {tuple(a.shape)} needs 1, 3 or 4 channels (N x C x H x W)"
            )
        a = a.transpose(0, 3, 1, 2)
    if a.dtype.kind in "biu":
        if lo < 0 or hi > 255:
            raise UserError(f"{label}: integer image values span [{lo:g}, {hi:g}], expected 0..255")
        a = a if a.dtype == np.uint8 else a.astype(np.uint8)
        with warnings.catch_warnings():  # a memory-mapped file is read-only; nothing here writes to it
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(a), "image", 256  # kept as levels, 4x smaller than float32
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if lo >= 0 and hi <= 1:
        return x * 2 - 1, "image", None
    if lo >= -1 and hi <= 1:
        return x, "image", None
    raise UserError(
        f"{label}: float image values span [{lo:g}, {hi:g}]; expected [-1, 1] or [0, 1] (or uint8 0..255)"
    )
