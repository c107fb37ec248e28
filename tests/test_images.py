"""Real-size images end to end: a CIFAR-10 batch and a folder of 64x64 images train, sample and reopen,
with the CIFAR-sized U-Net preset at a tiny width (a few steps on CPU); --xflip and --dequantise as resolved
for each kind of data; bits/dim of discrete data is a proper bound only for a model of the dequantised law."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from scorefast.cli import main
from scorefast.data import Dataset
from scorefast.evaluate import test_nll as heldout_nll
from scorefast.run import open_run
from scorefast.sde import make_sde

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


@pytest.mark.parametrize("data, xflip, dequantise", [("digits", False, True), ("photos32", True, False),
                                                     ("moons", False, False)])
def test_xflip_and_dequantise_defaults_are_recorded_in_config_json(tmp_path, data, xflip, dequantise):
    run = tmp_path / "run"
    assert main(["train", "--data", data, "--out", str(run), "--prepare", "--quiet"]) == 0
    recorded = json.loads((run / "config.json").read_text())["config"]["data"]
    assert recorded["xflip"] is xflip and recorded["dequantise"] is dequantise


def test_a_run_written_before_the_options_existed_keeps_training_without_them(tmp_path):
    from scorefast.run import RunDir
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(run), "--prepare", "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())
    del saved["config"]["data"]["xflip"], saved["config"]["data"]["dequantise"]
    (run / "config.json").write_text(json.dumps(saved))
    cfg = RunDir(run).read_config()
    assert cfg.data.xflip is False and cfg.data.dequantise is False


def test_xflip_given_overrides_the_default(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--xflip", "--dequantise", "false", "--out", str(run), "--prepare",
                 "--quiet"]) == 0
    recorded = json.loads((run / "config.json").read_text())["config"]["data"]
    assert recorded["xflip"] is True and recorded["dequantise"] is False


@pytest.mark.parametrize("flags, message", [(["--data", "moons", "--xflip"], "--xflip flips images"),
                                            (["--data", "photos32", "--dequantise"], "--dequantise needs discrete"),
                                            (["--data", "moons", "--eval-metric", "kid"], "'kid' scores images")])
def test_options_the_data_cannot_take_are_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    assert main(["train", *flags, "--out", str(run), "--prepare", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not run.exists()


class _LevelMixture(torch.nn.Module):
    """Exact score of 1-D data drawn uniformly from ``centres``, each blurred by N(0, h^2), diffused by the SDE."""

    def __init__(self, sde, centres: torch.Tensor, h: float):
        super().__init__()
        self.sde, self.centres, self.h = sde, centres, h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        var = a * a * self.h**2 + s * s
        w = torch.softmax(-((x - a * self.centres) ** 2) / (2 * var), dim=1)
        return (w * (a * self.centres - x)).sum(1, keepdim=True) / var


def test_bits_per_dim_is_a_proper_bound_only_for_a_model_of_dequantised_pixels():
    """K = 4 equally likely levels: the data's entropy is log2 K = 2 bits a dimension, a floor for the bits/dim of
    any model of the dequantised pixels 2 (q + u) / K - 1 (what ToModel trains on). The exact score of the raw
    levels (what a network fitted to them sharply learns) scores far worse on those pixels (about 12 bits);
    the exact score of the dequantised law (uniform on [-1, 1), here 200 narrow Gaussians) meets the floor."""
    levels, fine = 4, 50
    sde = make_sde("vp")
    ds = Dataset(torch.arange(levels, dtype=torch.uint8).repeat(100)[:, None], "levels", "points", levels)
    raw = _LevelMixture(sde, torch.linspace(-1, 1, levels), 0.0)
    u = (torch.arange(fine) + 0.5) / fine
    dequantised = _LevelMixture(sde, (2 * (torch.arange(levels)[:, None] + u) / levels - 1).reshape(-1),
                                2 / (levels * fine))
    floor = math.log2(levels)
    bpd_raw = heldout_nll(raw, sde, ds, steps=100)["bpd"]
    bpd_dequantised = heldout_nll(dequantised, sde, ds, steps=100)["bpd"]
    assert floor - 0.03 < bpd_dequantised < floor + 0.05
    assert bpd_raw > floor + 5
