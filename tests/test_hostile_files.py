"""Property-based fuzzing of every reader of user files: load_data, load_checkpoint, read_json, read_jsonl.

Random bytes and mutations of valid files (bytes replaced, inserted, deleted, the file cut short)
must load into a valid result or raise a one-line UserError: never another exception, never a hang
(each test has a timeout), never code execution (the corpus holds live payloads that would create
a marker file). Valid files must load exactly as numpy wrote them. Examples per property: 150, or
SCOREFAST_FUZZ_EXAMPLES for a deeper local run; CI runs are derandomised so they are repeatable.
Every failure found so far is kept as an @example.
"""

import gzip
import io
import json
import os
import pickle
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from scorefast.checkpoint import FORMAT, append_jsonl, load_checkpoint, read_json, read_jsonl, save_checkpoint
from scorefast.data import Dataset, load_data
from scorefast.datafiles import MAX_ABS_VALUE
from scorefast.errors import UserError

EXAMPLES = int(os.environ.get("SCOREFAST_FUZZ_EXAMPLES", "150"))
pytestmark = [
    pytest.mark.timeout(180 * max(1, EXAMPLES // 150)),  # a hang fails the test instead of stalling CI
    pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning"),  # torch, on mutated pickles
    pytest.mark.filterwarnings("ignore:Reading `.npy` or `.npz` file required additional header parsing"),
]

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


def _idx(images: np.ndarray) -> bytes:
    return bytes([0, 0, 8, images.ndim]) + struct.pack(f">{images.ndim}I", *images.shape) + images.tobytes()


def _npy(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, **kw)
    return buf.getvalue()


def _npz(compressed: bool, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(workdir):
    """Valid files of every format, and live code payloads, keyed by the file name they need."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(images[0]).save(png, format="PNG")
    payload = _Reduce(os.system, f"touch {workdir / 'MARKER'}")
    cifar = {b"batch_label": b"x", b"labels": [1, 2], b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8)}
    return {
        "pts.npy": _npy(rng.normal(size=(20, 3))),
        "img.npy": _npy(images[:, None]),
        "fortran.npy": _npy(np.asfortranarray(rng.random((6, 4), dtype=np.float32))),
        "pts.npz": _npz(False, x=rng.normal(size=(5, 2)), labels=np.arange(5)),
        "img.npz": _npz(True, arr_0=images),
        "evil.npy": _npy(np.array([payload, 1], dtype=object), allow_pickle=True),
        "evil.npz": _npz(False, x=np.array([payload], dtype=object)),
        "train-images-idx3-ubyte": _idx(images),
        "train-images-idx3-ubyte.gz": gzip.compress(_idx(images)),
        "data_batch_1": pickle.dumps(cifar, protocol=2),
        "data_batch_2": pickle.dumps(cifar, protocol=5),
        "data_batch_3": pickle.dumps({b"data": payload}, protocol=2),
        "img.png": png.getvalue(),
    }


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` with a few bytes replaced, inserted or deleted (often in the header), maybe cut short."""
    b = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        if not b:
            break
        i = draw(st.integers(0, min(len(b), 300) - 1) | st.integers(0, len(b) - 1))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set":
            b[i] = draw(st.integers(0, 255))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del b[i : i + draw(st.integers(1, 8))]
    if draw(st.booleans()):
        b = b[: draw(st.integers(0, len(b)))]
    return bytes(b)


def _expect_valid_or_user_error(workdir, load, *args):
    """Call ``load``; return its result, or None after checking the UserError is one line. No marker may appear."""
    try:
        return load(*args)
    except UserError as err:
        assert "\n" not in str(err) and str(err).strip()
        return None
    finally:
        assert not (workdir / "MARKER").exists()


def _load_file(workdir, name: str, raw: bytes):
    case = workdir / "case"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    (case / name).write_bytes(raw)
    d = _expect_valid_or_user_error(workdir, load_data, str(case / name))
    if d is not None:
        assert isinstance(d, Dataset) and len(d) >= 1 and d.x.dtype == torch.float32
        assert torch.isfinite(d.x).all() and d.x.abs().max() <= MAX_ABS_VALUE
        if d.kind == "image":
            assert d.x.ndim == 4 and d.x.shape[1] in (1, 3, 4) and d.x.abs().max() <= 1
    return d


# ------------------------------------------------------------------------------------------------
# Data files


@FUZZ
@given(st.data())
def test_mutated_data_files_load_or_raise_user_error(workdir, corpus, data):
    name = data.draw(st.sampled_from(sorted(corpus)), label="name")
    _load_file(workdir, name, data.draw(mutated(corpus[name]), label="bytes"))


PREFIXES = {
    "r.npy": b"\x93NUMPY\x01\x00",
    "r.npz": b"PK\x03\x04",
    "r-images-idx3-ubyte": b"\x00\x00\x08\x03",
    "r-images-idx3-ubyte.gz": b"\x1f\x8b\x08\x00",
    "data_batch_r": b"\x80\x02",
    "r.png": b"\x89PNG\r\n\x1a\n",
}


@FUZZ
@given(st.sampled_from(sorted(PREFIXES)), st.booleans(), st.binary(max_size=600))
@example("data_batch_r", True, b"r\x00\x00\x00@")  # LONG_BINPUT 2**30: a 16 GiB memo table in the C unpickler
@example("r-images-idx3-ubyte", True, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")  # 2**96 bytes declared
def test_random_bytes_load_or_raise_user_error(workdir, name, with_magic, tail):
    _load_file(workdir, name, (PREFIXES[name] if with_magic else b"") + tail)


_DTYPES = [np.dtype(t).newbyteorder(o) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u4", "u8")
           for o in "<>"] + [np.dtype("?")]


@st.composite
def point_arrays(draw):
    """N x d arrays of any numeric dtype and byte order, values inside the accepted range."""
    dtype = draw(st.sampled_from(_DTYPES))
    if dtype.kind == "f":
        bound = min(MAX_ABS_VALUE, float(np.finfo(dtype).max))
        elements = hnp.from_dtype(dtype, min_value=-bound, max_value=bound, allow_nan=False, allow_infinity=False)
    elif dtype.kind in "iu":
        bound = int(min(MAX_ABS_VALUE, np.iinfo(dtype).max))
        elements = hnp.from_dtype(dtype, min_value=-bound if dtype.kind == "i" else 0, max_value=bound)
    else:
        elements = hnp.from_dtype(dtype)
    a = draw(hnp.arrays(dtype, st.tuples(st.integers(1, 12), st.integers(1, 5)), elements=elements))
    return np.asfortranarray(a) if draw(st.booleans()) else a


@FUZZ
@given(point_arrays(), st.sampled_from(["npy", "npz", "npz-compressed"]))
def test_valid_arrays_load_exactly_as_numpy_wrote_them(workdir, a, container):
    """The .npy/.npz parser agrees with numpy's writer for every dtype, byte order and memory order."""
    raw = _npy(a) if container == "npy" else _npz(container == "npz-compressed", x=a)
    d = _load_file(workdir, f"a.{container[:3]}", raw)
    assert d is not None and d.kind == "points"
    assert torch.equal(d.x, torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))


@FUZZ
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=3, max_side=9)), st.booleans())
def test_valid_idx_files_load_exactly(workdir, images, compressed):
    raw = _idx(images)
    d = _load_file(workdir, "t-images-idx3-ubyte" + (".gz" if compressed else ""),
                   gzip.compress(raw) if compressed else raw)
    assert d is not None and d.levels == 256
    assert torch.equal(d.x[:, 0], torch.from_numpy(images.astype(np.float32)) / 127.5 - 1)


# ------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def checkpoints(workdir):
    save_checkpoint(workdir / "good.pt", {"model": {"w": torch.arange(12.0).reshape(3, 4)}, "step": 4, "done": True})
    evil = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": 1, "x": _Reduce(os.system, f"touch {workdir / 'MARKER'}")}, evil)
    return [(workdir / "good.pt").read_bytes(), evil.getvalue()]


@FUZZ
@given(st.data())
def test_mutated_checkpoints_load_or_raise_user_error(workdir, checkpoints, data):
    raw = data.draw(mutated(data.draw(st.sampled_from(checkpoints))))
    (workdir / "case.pt").write_bytes(raw)
    state = _expect_valid_or_user_error(workdir, load_checkpoint, workdir / "case.pt")
    if state is not None:
        assert state["format"] == FORMAT and state["format_version"] == 1


def _members(raw: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, body in members:
            archive.writestr(name, body)
    return buf.getvalue()


@FUZZ
@given(st.sampled_from(["checkpoint", "checkpoint with payload", "npz"]), st.data())
def test_mutated_archive_members_load_or_raise_user_error(workdir, corpus, checkpoints, kind, data):
    """One member mutated inside an intact zip (CRCs right): the pickle or npy parser meets the damage,
    not the zip reader."""
    raw = {"checkpoint": checkpoints[0], "checkpoint with payload": checkpoints[1], "npz": corpus["pts.npz"]}[kind]
    members = _members(raw)
    i = data.draw(st.integers(0, len(members) - 1), label="member")
    members[i] = (members[i][0], data.draw(mutated(members[i][1]), label="body"))
    if kind == "npz":
        _load_file(workdir, "m.npz", _zip(members))
        return
    (workdir / "case.pt").write_bytes(_zip(members))
    state = _expect_valid_or_user_error(workdir, load_checkpoint, workdir / "case.pt")
    if state is not None:
        assert state["format"] == FORMAT and state["format_version"] == 1


# ------------------------------------------------------------------------------------------------
# JSON and JSONL

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=4)


@FUZZ
@given(json_objects, st.data())
def test_json_cut_or_mutated_reads_back_or_raises_user_error(workdir, obj, data):
    raw = json.dumps({"run_format": 1, "config": obj}, indent=2).encode()
    raw = data.draw(mutated(raw))
    (workdir / "config.json").write_bytes(raw)
    got = _expect_valid_or_user_error(workdir, read_json, workdir / "config.json", "config.json")
    if got is not None:  # compared as canonical text: a mutation may write NaN, which is not equal to itself
        assert json.dumps(got, sort_keys=True) == json.dumps(json.loads(raw), sort_keys=True)


@FUZZ
@given(st.lists(json_objects, min_size=1, max_size=6), st.data())
def test_jsonl_cut_anywhere_gives_the_whole_lines_before_the_cut(workdir, rows, data):
    """A log killed at any byte reads back as exactly its complete rows, and appending after repair
    continues it cleanly: the recovery a resumed run relies on."""
    path = workdir / "metrics.jsonl"
    path.unlink(missing_ok=True)
    for row in rows:
        append_jsonl(path, row)
    raw = path.read_bytes()
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    path.write_bytes(raw[:cut])
    ends = np.cumsum([len((json.dumps(r) + "\n").encode()) for r in rows])
    expected = [r for r, end in zip(rows, ends) if end - 1 <= cut]  # a line missing only its newline is whole
    assert read_jsonl(path, "metrics log", repair=True) == expected
    append_jsonl(path, {"step": "next"})
    assert read_jsonl(path, "metrics log") == expected + [{"step": "next"}]


@FUZZ
@given(st.lists(json_objects, min_size=2, max_size=5), st.data())
def test_jsonl_garbage_in_the_middle_names_its_line(workdir, rows, data):
    path = workdir / "metrics.jsonl"
    lines = [json.dumps(r).encode() for r in rows]
    where = data.draw(st.integers(0, len(lines) - 2), label="line index")
    garbage = data.draw(st.binary(min_size=1, max_size=20).filter(
        lambda b: b"\n" not in b and b.strip() and not _is_json_object(b)), label="garbage")
    lines[where] = garbage
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(UserError, match=f"'{path}': line {where + 1}: "):
        read_jsonl(path, "metrics log", repair=True)


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw.decode()), dict)
    except (ValueError, RecursionError):
        return False
