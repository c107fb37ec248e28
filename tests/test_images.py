"""Real-size images end to end: a CIFAR-10 batch and a folder of 64x64 images train, sample and reopen,
with the CIFAR-sized U-Net preset at a tiny width (a few steps on CPU)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from scorefast.cli import main
from scorefast.run import open_run

FAST = ["--steps", "3", "--batch-size", "4", "--eval-every", "3", "--eval-samples", "4", "--eval-steps", "2",
        "--quiet"]


@pytest.mark.slow
def test_a_cifar10_batch_trains_with_the_cifar_preset(tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(0)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (24, 3072), dtype=np.uint8), b"labels": [0] * 24}, f)
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--out", str(run), "--net-preset", "cifar10", "--width", "8",
                 "--sampler", "dpmpp-2m", *FAST]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["shape"] == [3, 32, 32]
    r = open_run(run)
    x = r.sample(3, steps=2, progress=False)
    assert tuple(x.shape) == (3, 3, 32, 32) and bool(np.isfinite(x.numpy()).all())
    assert sum(p.numel() for p in r.model.parameters()) > 100_000  # 4 levels, 2 blocks each, attention at 16x16


@pytest.mark.slow
def test_a_folder_of_64x64_images_trains_with_a_4_level_u_net(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--out", str(run), "--width", "8", "--channel-mults", "1,2,2,2",
                 "--attention", "16", "--res-blocks", "1", *FAST]) == 0
    assert json.loads((run / "summary.json").read_text())["shape"] == [3, 64, 64]
    assert tuple(open_run(run).sample(2, steps=2, progress=False).shape) == (2, 3, 64, 64)
