"""User data formats below everything that reads them: their names, their headers, and the kind of data
('points' or 'image') a path holds, told without loading it.

The configuration is resolved once, with the data's kind (a recipe sets some defaults by kind), so the kind of
a user file is read here from its header: the shape in a .npy header (also inside an .npz), the rank in an MNIST
idx header; an image file, an image folder and CIFAR-10 batches hold images. ``datafiles`` reads the same headers
through the same functions when it loads the data. Only regular files are opened and only their first bytes are
read; a damaged header is one UserError line naming the file. Nothing heavy is imported with this module (the
configuration imports it): numpy and the file helpers of ``checkpoint`` (which import torch) when a file is read.
"""

from __future__ import annotations

import gzip
import os
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from .choices import DATASETS
from .errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CIFAR_BATCHES = ("data_batch", "test_batch")
IDX_NAME = re.compile(r"-idx\d-ubyte(\.gz)?$")
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
NPY_MAGIC = b"\x93NUMPY"


def kind_of_rank(ndim: int) -> str | None:
    """N x d arrays hold points, N x H x W and N x C x H x W (or N x H x W x C) arrays images; None otherwise."""
    return "points" if ndim == 2 else "image" if ndim in (3, 4) else None


def npy_header(f: BinaryIO, label: str) -> tuple[tuple[int, ...], bool, Any]:
    """(shape, fortran_order, dtype) of the .npy array ``f`` starts at, parsed without pickle; ``f`` is left at
    its data."""
    import numpy as np
    head = f.read(8)
    if len(head) < 8 or head[:6] != NPY_MAGIC:
        raise UserError(f"{label}: cannot be read as a .npy file (bad header), corrupt?")
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    version = (head[6], head[7])
    if version not in read_header:
        raise UserError(f"{label}: .npy format version {version[0]}.{version[1]} is not supported (1.0, 2.0 are)")
    try:
        return read_header[version](f)
    except Exception:  # numpy's ValueError, a SyntaxError of the header's text, a read error
        raise UserError(f"{label}: cannot be read as a .npy file (damaged header), truncated or corrupt?") from None


def npz_member(archive: zipfile.ZipFile, label: str) -> tuple[zipfile.ZipInfo, str]:
    """The member of an .npz archive that holds the data (the array named x, data or arr_0, or the only one) and
    its label."""
    from .checkpoint import display_path
    members = {(n[:-4] if n.endswith(".npy") else n): n for n in archive.namelist()}
    if not members:
        raise UserError(f"{label}: holds no arrays")
    if len(members) == 1:
        key = next(iter(members))
    else:
        key = next((k for k in ("x", "data", "arr_0") if k in members), None)
        if key is None:
            shown = ", ".join(display_path(k)[:40] for k in list(members)[:8])
            raise UserError(f"{label}: holds {len(members)} arrays ({shown}), none named x, data or arr_0")
    return archive.getinfo(members[key]), f"{label}, array '{display_path(key)[:40]}'"


def idx_header(stream: BinaryIO, label: str) -> tuple[str, int]:
    """(dtype, rank) of an MNIST idx stream, from its magic number 0 0 <type> <rank>."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
        raise UserError(f"{label}: not an idx file (bad magic number)")
    return IDX_DTYPES[magic[2]], magic[3]


def path_kind(spec: str) -> str | None:
    """The kind of data the path ``spec`` holds, from its form or its header; None where neither tells (a path
    that does not exist, a format the reader refuses): reading the data then says what is wrong."""
    from .checkpoint import display_path, error_reason, open_regular
    path = Path(spec).expanduser()
    if path.is_dir() or path.name.startswith(CIFAR_BATCHES) or path.suffix.lower() in IMAGE_SUFFIXES:
        return "image" if os.path.lexists(path) else None
    suffix, label = path.suffix.lower(), f"data file '{display_path(spec)}'"
    if not (IDX_NAME.search(path.name) or suffix in (".npy", ".npz")) or not os.path.lexists(path):
        return None
    with open_regular(path, label) as f:
        try:
            if IDX_NAME.search(path.name):
                return kind_of_rank(idx_header(gzip.GzipFile(fileobj=f) if path.name.endswith(".gz") else f,
                                               label)[1])
            if suffix == ".npy":
                return kind_of_rank(len(npy_header(f, label)[0]))
            with zipfile.ZipFile(f) as archive:
                info, member = npz_member(archive, label)
                with archive.open(info) as stream:
                    return kind_of_rank(len(npy_header(stream, member)[0]))
        except UserError:
            raise
        except Exception as err:  # zipfile, gzip and OS errors from a damaged file
            raise UserError(f"{label}: its header cannot be read, truncated or corrupt? ({error_reason(err)})") \
                from None


def kind_of_data(spec: str) -> str | None:
    """The kind of the data ``spec`` names: a built-in set's from its registry entry, a path's from
    :func:`path_kind`."""
    return DATASETS.tag(spec, "kind") if spec in DATASETS else path_kind(spec)


__all__ = ["CIFAR_BATCHES", "IDX_DTYPES", "IDX_NAME", "IMAGE_SUFFIXES", "NPY_MAGIC", "idx_header",
           "kind_of_data", "kind_of_rank", "npy_header", "npz_member", "path_kind"]
