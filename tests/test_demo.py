"""`make demo`'s job, shortened: it trains, measures and writes its numbers, and the model it trains beats the best
Gaussian fit of the data (the 8 modes are far from Gaussian)."""

import json
import math

import pytest
import torch

from scorefast.data import load_data
from scorefast.demo import run_demo


@pytest.mark.slow
def test_demo_beats_the_best_gaussian(tmp_path):
    out = tmp_path / "demo"
    numbers = run_demo(str(out), steps=600, data="8gaussians")
    assert json.loads((out / "demo.json").read_text()) == numbers
    assert (out / "samples.png").stat().st_size > 0 and numbers["steps"] == 600
    x = load_data("8gaussians", n=20000, seed=3).x.double()
    cov = torch.cov(x.T)
    gaussian_nll = 0.5 * (x.shape[1] * math.log(2 * math.pi * math.e) + torch.logdet(cov).item())
    assert numbers["nll_nats"] < gaussian_nll - 0.5
    assert 0 < numbers["swd"] < 0.5
