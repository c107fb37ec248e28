"""Built-in data sets, user file formats and the one-line errors for bad input."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from scorefast.data import (
    BUILTIN_2D,
    BUILTIN_TOY,
    GAUSSIAN2D_COV,
    GAUSSIAN2D_MEAN,
    Dataset,
    list_builtin,
    load_data,
    sample_toy,
)
from scorefast.errors import UserError

# ------------------------------------------------------------------------------------------------
# Built-in sets


def test_builtin_names():
    names = list_builtin()
    assert set(BUILTIN_2D) <= set(names)
    assert {"gaussian2d", "digits", "digits32", "photos32"} <= set(names)


@pytest.mark.parametrize("name", BUILTIN_TOY)
def test_toy_shape_determinism_and_seeds(name):
    a = load_data(name, n=2000, seed=0)
    assert a.x.shape == (2000, 2) and a.x.dtype == torch.float32
    assert a.kind == "points" and a.levels is None and a.shape == (2,) and a.dim == 2 and len(a) == 2000
    assert torch.isfinite(a.x).all()
    assert a.x.abs().max() < 12  # roughly unit scale, as FFJORD's toys
    assert torch.equal(a.x, load_data(name, n=2000, seed=0).x)
    assert not torch.allclose(a.x, load_data(name, n=2000, seed=1).x)


def test_toy_default_size():
    assert len(load_data("moons")) == 10000


@pytest.mark.parametrize("name", BUILTIN_2D)
def test_sample_toy_uses_generator(name):
    a = sample_toy(name, 500, torch.Generator().manual_seed(3))
    b = sample_toy(name, 500, torch.Generator().manual_seed(3))
    c = sample_toy(name, 500, torch.Generator().manual_seed(4))
    assert a.shape == (500, 2) and torch.equal(a, b) and not torch.equal(a, c)


def test_checkerboard_squares():
    x = load_data("checkerboard", n=20000).x
    assert x.min() >= -4 and x.max() <= 4
    cell = torch.floor(x / 2).long()  # 2x2 cells of the 8x8 board; occupied ones alternate in colour
    assert torch.all((cell[:, 0] + cell[:, 1]) % 2 == 0)


def test_offcentre_is_far_from_origin():
    x = load_data("offcentre", n=20000).x
    assert x.mean(0).norm() > 3.0


def test_gaussian2d_moments_match_constants():
    x = load_data("gaussian2d", n=200000, seed=5).x.double()
    mean, cov = torch.tensor(GAUSSIAN2D_MEAN).double(), torch.tensor(GAUSSIAN2D_COV).double()
    assert torch.allclose(x.mean(0), mean, atol=0.01)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.015)


def test_digits():
    d = load_data("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.kind == "image" and d.levels == 17
    assert d.x.min() == -1 and d.x.max() == 1
    q = (d.x + 1) * 8  # back to the 0..16 grid
    assert torch.allclose(q, q.round(), atol=1e-5)
    assert len(load_data("digits", n=10)) == 10
    assert torch.equal(load_data("digits", n=10).x, d.x[:10])


def test_digits32():
    d = load_data("digits32", n=50)
    assert d.x.shape == (50, 1, 32, 32) and d.levels is None
    assert d.x.min() >= -1 and d.x.max() <= 1
    small = torch.nn.functional.avg_pool2d(d.x, 4)
    assert (small - load_data("digits", n=50).x).abs().mean() < 0.15


def test_photos32():
    d = load_data("photos32")
    assert d.x.shape == (8, 1, 32, 32) and d.levels is None and d.kind == "image"
    assert d.x.min() >= -1 and d.x.max() <= 1 and torch.isfinite(d.x).all()
    flat = d.x.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(8) * 100).min() > 1.0  # eight distinct images
    one = load_data("photos32", n=1)
    assert one.x.shape == (1, 1, 32, 32) and torch.equal(one.x[0], d.x[0])


def test_split():
    d = load_data("moons", n=1000)
    train, test = d.split(0.2, seed=0)
    assert len(train) == 800 and len(test) == 200
    both = torch.cat([train.x, test.x])
    assert torch.equal(both[both[:, 0].argsort()], d.x[d.x[:, 0].argsort()])
    again = d.split(0.2, seed=0)
    assert torch.equal(again[1].x, test.x)
    assert not torch.equal(d.split(0.2, seed=1)[1].x, test.x)
    with pytest.raises(UserError):
        d.split(1.5)


def test_dataset_properties():
    d = Dataset(torch.zeros(4, 3, 5, 6), "z", "image", 256)
    assert d.shape == (3, 5, 6) and d.dim == 90 and len(d) == 4


# ------------------------------------------------------------------------------------------------
# User files that load


def test_npy_points(tmp_path):
    a = np.random.default_rng(0).normal(size=(40, 3))
    np.save(tmp_path / "pts.npy", a)
    d = load_data(str(tmp_path / "pts.npy"))
    assert d.kind == "points" and d.x.dtype == torch.float32 and d.levels is None
    assert np.allclose(d.x.numpy(), a, atol=1e-6)
    assert len(load_data(str(tmp_path / "pts.npy"), n=7)) == 7


def test_npy_float_images_01_and_pm1(tmp_path):
    a = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    np.save(tmp_path / "img01.npy", a)
    d = load_data(str(tmp_path / "img01.npy"))
    assert d.kind == "image" and d.x.shape == (5, 1, 6, 7) and d.levels is None
    assert np.allclose(d.x.numpy()[:, 0], 2 * a - 1)
    b = a * 2 - 1
    np.save(tmp_path / "imgpm1.npy", b)
    assert np.allclose(load_data(str(tmp_path / "imgpm1.npy")).x.numpy()[:, 0], b)


def test_npy_uint8_images(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    a[0, 0, 0, 0], a[0, 0, 0, 1] = 0, 255
    np.save(tmp_path / "u8.npy", a)
    d = load_data(str(tmp_path / "u8.npy"))
    assert d.x.shape == (4, 3, 8, 8) and d.levels == 256
    assert np.allclose(d.x.numpy(), a / 127.5 - 1, atol=1e-6)
    assert d.x.min() == -1 and d.x.max() == 1


def test_npy_channels_last(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "nhwc.npy", a)
    d = load_data(str(tmp_path / "nhwc.npy"))
    assert d.x.shape == (4, 3, 8, 8)
    assert np.allclose(d.x.numpy(), a.transpose(0, 3, 1, 2) / 127.5 - 1, atol=1e-6)


def test_npz_single_and_named(tmp_path):
    a = np.arange(12.0).reshape(6, 2)
    np.savez(tmp_path / "one.npz", whatever=a)
    assert np.allclose(load_data(str(tmp_path / "one.npz")).x.numpy(), a)
    np.savez(tmp_path / "two.npz", labels=np.arange(6), x=a)
    assert np.allclose(load_data(str(tmp_path / "two.npz")).x.numpy(), a)
    np.savez_compressed(tmp_path / "three.npz", a)
    assert np.allclose(load_data(str(tmp_path / "three.npz")).x.numpy(), a)


def _png_folder(tmp_path, mode, n=3, size=(6, 5)):
    folder = tmp_path / f"pngs_{mode}"
    folder.mkdir()
    rng = np.random.default_rng(1)
    arrays = []
    for i in range(n):
        shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(a, mode=mode).save(folder / f"img_{i:02d}.png")
        arrays.append(a)
    return folder, np.stack(arrays)


def test_png_folder_gray(tmp_path):
    folder, arrays = _png_folder(tmp_path, "L")
    before = sorted(os.listdir(folder))
    d = load_data(str(folder))
    assert d.x.shape == (3, 1, 5, 6) and d.levels == 256 and d.kind == "image"
    assert np.allclose(d.x.numpy()[:, 0], arrays / 127.5 - 1, atol=1e-6)
    assert sorted(os.listdir(folder)) == before  # nothing written


def test_png_folder_rgb(tmp_path):
    folder, arrays = _png_folder(tmp_path, "RGB")
    d = load_data(str(folder))
    assert d.x.shape == (3, 3, 5, 6)
    assert np.allclose(d.x.numpy(), arrays.transpose(0, 3, 1, 2) / 127.5 - 1, atol=1e-6)


def _idx_bytes(images: np.ndarray) -> bytes:
    return b"\x00\x00\x08\x03" + struct.pack(">III", *images.shape) + images.tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_idx(tmp_path, compressed):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    raw = _idx_bytes(imgs)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if compressed else ""))
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    d = load_data(str(path))
    assert d.x.shape == (5, 1, 28, 28) and d.levels == 256
    assert np.allclose(d.x.numpy()[:, 0], imgs / 127.5 - 1, atol=1e-6)


def test_mnist_folder_and_single_image_file(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(imgs[:1]))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(imgs))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 4) + bytes(4))
    d = load_data(str(tmp_path), n=3)
    assert d.x.shape == (3, 1, 28, 28) and np.allclose(d.x.numpy()[:, 0], imgs[:3] / 127.5 - 1, atol=1e-6)
    Image.fromarray(imgs[0]).save(tmp_path / "one.png")
    one = load_data(str(tmp_path / "one.png"))
    assert one.x.shape == (1, 1, 28, 28) and one.levels == 256


def _cifar_batch(n=3, seed=0):
    data = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    return data, {b"batch_label": b"training batch 1 of 5", b"labels": list(range(n)), b"data": data}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle(tmp_path, protocol):
    data, batch = _cifar_batch()
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    d = load_data(str(path))
    assert d.x.shape == (3, 3, 32, 32) and d.levels == 256
    assert np.allclose(d.x.numpy(), data.reshape(3, 3, 32, 32) / 127.5 - 1, atol=1e-6)


def test_cifar_python2_format(tmp_path):
    """The real CIFAR-10 files are Python 2 cPickle protocol 2: byte strings and numpy.core names."""
    data = np.random.default_rng(0).integers(0, 256, (2, 3072), dtype=np.uint8)
    raw = data.tobytes()
    blob = (
        b"\x80\x02}q\x01(U\x04data"
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        b"(K\x01K\x02M\x00\x0c\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
        b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T"
        + struct.pack("<I", len(raw))
        + raw
        + b"tbU\x06labels](K\x01K\x02eu."
    )
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    d = load_data(str(path))
    assert np.allclose(d.x.numpy(), data.reshape(2, 3, 32, 32) / 127.5 - 1, atol=1e-6)


def test_cifar_directory(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = []
    for i in (1, 2):
        data, batch = _cifar_batch(seed=i)
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
        parts.append(data)
    (folder / "batches.meta").write_bytes(b"not read")
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(seed=9)[1]))
    d = load_data(str(folder))
    assert d.x.shape == (6, 3, 32, 32)
    assert np.allclose(d.x.numpy(), np.concatenate(parts).reshape(6, 3, 32, 32) / 127.5 - 1, atol=1e-6)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("wrap", [False, True])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, wrap):
    marker = tmp_path / "pwned"
    payload = {b"data": _Evil(marker)} if wrap else _Evil(marker)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError) as info:
        load_data(str(path))
    msg = str(info.value)
    assert "data_batch_1" in msg and "\n" not in msg and "system" in msg
    assert not marker.exists()


def test_pickle_of_other_numpy_callables_is_refused(tmp_path):
    path = tmp_path / "data_batch_2"
    path.write_bytes(b"\x80\x02cnumpy\nload\nU\x03abc\x85R.")  # numpy.load(b'abc')
    with pytest.raises(UserError, match="numpy.load"):
        load_data(str(path))


# ------------------------------------------------------------------------------------------------
# Bad input: one-line UserError that names the file


def _write_bad(tmp_path, case):
    p = tmp_path / f"bad_{case}.npy"
    if case == "missing":
        return tmp_path / "no_such_file.npy", "does not exist"
    if case == "strings":
        np.save(p, np.array([["a", "b"], ["c", "d"]]))
        return p, "not numeric"
    if case == "objects":
        np.save(p, np.array([[1, None]], dtype=object), allow_pickle=True)
        return p, "object"
    if case == "truncated":
        np.save(p, np.zeros((100, 2)))
        p.write_bytes(p.read_bytes()[:300])
        return p, "truncated"
    if case == "garbage":
        p.write_bytes(b"this is not numpy at all")
        return p, "cannot be read"
    if case == "zero_rows":
        np.save(p, np.zeros((0, 2)))
        return p, "zero rows"
    if case == "rank1":
        np.save(p, np.zeros(5))
        return p, "rank 1"
    if case == "rank5":
        np.save(p, np.zeros((2, 1, 3, 4, 4)))
        return p, "rank 5"
    if case == "nan":
        a = np.zeros((10, 2))
        a[1, 0], a[2, 1], a[3, 0] = np.nan, np.inf, -np.inf
        np.save(p, a)
        return p, "3 NaN/inf"
    if case == "channels":
        np.save(p, np.zeros((2, 5, 6, 7), dtype=np.float32))
        return p, "channels"
    if case == "float_range":
        np.save(p, np.full((2, 4, 4), 3.0))
        return p, "[3, 3]"
    if case == "int_range":
        np.save(p, np.full((2, 4, 4), 300, dtype=np.int64))
        return p, "0..255"
    if case == "npz_ambiguous":
        p = tmp_path / "bad_ambiguous.npz"
        np.savez(p, a=np.zeros((2, 2)), b=np.zeros((2, 2)))
        return p, "none named"
    if case == "idx_truncated":
        p = tmp_path / "bad-images-idx3-ubyte"
        p.write_bytes(_idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8))[:-10])
        return p, "idx header"
    if case == "idx_gz_corrupt":
        p = tmp_path / "bad-images-idx3-ubyte.gz"
        p.write_bytes(gzip.compress(_idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8)))[:-20])
        return p, "cannot be read"
    if case == "idx_labels":
        p = tmp_path / "bad-labels-idx1-ubyte"
        p.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes(3))
        return p, "rank 1"
    if case == "cifar_not_dict":
        p = tmp_path / "data_batch_bad"
        p.write_bytes(pickle.dumps([1, 2, 3]))
        return p, "not a CIFAR-10 batch"
    if case == "cifar_truncated":
        p = tmp_path / "data_batch_trunc"
        p.write_bytes(pickle.dumps(_cifar_batch()[1])[:500])
        return p, "CIFAR-10"
    if case == "unknown_suffix":
        p = tmp_path / "bad.csv"
        p.write_text("1,2\n3,4\n")
        return p, "unknown format"
    if case == "empty_folder":
        p = tmp_path / "bad_empty_folder"
        p.mkdir()
        return p, "no images"
    raise AssertionError(case)


BAD_CASES = [
    "missing",
    "strings",
    "objects",
    "truncated",
    "garbage",
    "zero_rows",
    "rank1",
    "rank5",
    "nan",
    "channels",
    "float_range",
    "int_range",
    "npz_ambiguous",
    "idx_truncated",
    "idx_gz_corrupt",
    "idx_labels",
    "cifar_not_dict",
    "cifar_truncated",
    "unknown_suffix",
    "empty_folder",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_one_line_user_error(tmp_path, case):
    path, expected = _write_bad(tmp_path, case)
    with pytest.raises(UserError) as info:
        load_data(str(path))
    msg = str(info.value)
    assert path.name in msg, msg
    assert expected in msg, msg
    assert "\n" not in msg


def test_unknown_builtin_lists_valid_names():
    with pytest.raises(UserError) as info:
        load_data("mooons")
    msg = str(info.value)
    assert "mooons" in msg and "moons" in msg and "checkerboard" in msg and "\n" not in msg


def test_folder_with_odd_size_names_the_file(tmp_path):
    folder, _ = _png_folder(tmp_path, "L")
    Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(folder / "img_99_odd.png")
    with pytest.raises(UserError) as info:
        load_data(str(folder))
    msg = str(info.value)
    assert "img_99_odd.png" in msg and "9x9" in msg and "\n" not in msg


def test_folder_with_corrupt_image_names_the_file(tmp_path):
    folder, _ = _png_folder(tmp_path, "L")
    (folder / "img_50_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(UserError) as info:
        load_data(str(folder))
    assert "img_50_broken.png" in str(info.value) and "\n" not in str(info.value)


def test_bad_n():
    with pytest.raises(UserError):
        load_data("moons", n=0)
