"""Inputs at the edges: points of one dimension, too few examples, config files nested deep, names longer than the
file system allows, near-duplicate values, images too large to decode. Each works, or is one line, exit 2, with
nothing written."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from scorefast.cli import main
from scorefast.datafiles import MAX_IMAGE_PIXELS

TINY = ["--steps", "20", "--batch-size", "16", "--width", "16", "--eval-every", "10", "--eval-samples", "40",
        "--eval-steps", "4", "--quiet"]
LONG = "x" * 300  # longer than any file system's name limit (255 bytes)


def test_one_dimensional_points_train_plot_and_sample(tmp_path):
    np.save(tmp_path / "line.npy", np.random.default_rng(0).normal(size=(200, 1)).astype("f4"))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "line.npy"), "--out", str(run), *TINY]) == 0
    assert (run / "samples.png").read_bytes()[:4] == b"\x89PNG" and np.load(run / "samples.npy").shape == (40, 1)
    assert main(["sample", "--run", str(run), "--n", "7", "--out", str(tmp_path / "s.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (7, 1) and (tmp_path / "s.png").is_file()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels and holds no pixels: a size check must come first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def _write(folder: Path, name: str, content) -> str:
    path = folder / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


DEEP = 600
REFUSED = [  # (files to write, the train flags (FILE: the first file, DIR: its folder), what the one line says)
    ({"one.npy": np.ones((1, 2), "f4")}, ["--data", "FILE"], "one example, but --time-sampler adaptive keeps a probe"),
    ({"fifty.npy": np.ones((50, 2), "f4")}, ["--data", "FILE", "--batch-size", "64"], "--batch-size 64 is larger"),
    ({"big/a.png": _png_header(9000, 9000)}, ["--data", "DIR"], f"9000x9000 pixels, more than the limit of "
                                                                      f"{MAX_IMAGE_PIXELS:,} pixels per image"),
    ({"deep.json": "[" * DEEP * 10 + "]" * DEEP * 10}, ["--config", "FILE"], "nested too deeply"),
    ({"deep.toml": "width = " + "[" * DEEP + "]" * DEEP}, ["--config", "FILE"], "nested too deeply"),
    ({"deep2.json": '{"width": ' + "[" * DEEP + "]" * DEEP + "}"}, ["--config", "FILE"], "got nested lists"),
    ({"deep3.json": '{"net": {"width": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}}"}, ["--config", "FILE"],
     "got nested tables"),
]


@pytest.mark.parametrize("files, flags, needle", REFUSED)
def test_data_and_config_files_at_the_edges_are_one_line(tmp_path, capsys, files, flags, needle):
    paths = [_write(tmp_path, name, content) for name, content in files.items()]
    flags = [f.replace("FILE", paths[0]).replace("DIR", str(Path(paths[0]).parent)) for f in flags]
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "5", "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


PATHS = [  # (a command writing somewhere, what the one line says); OUT is an empty folder
    (f"train --data moons --out OUT/{LONG} --steps 5", "bytes, more than the file system's limit of"),
    (f"train --data moons --out OUT/{'d/' * 2100}run --steps 5", "the path is"),
    (f"sweep-T --data moons --out OUT/{LONG} --steps 5 --T 0.5", "bytes, more than the file system's limit of"),
    (f"sample --run OUT --n 5 --out OUT/{LONG}.npy", "bytes, more than the file system's limit of"),
    (f"fp --data moons --out OUT/{LONG}.npz", "bytes, more than the file system's limit of"),
    ("sweep-T --data moons --out OUT/sweep --steps 5 --T 0.3,0.3000001", "would share the run folder 'T=0.3'"),
]


@pytest.mark.parametrize("command, needle", PATHS)
def test_unusable_paths_and_near_duplicate_values_are_one_line(tmp_path, capsys, command, needle):
    assert main(command.replace("OUT", str(tmp_path)).split()) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
