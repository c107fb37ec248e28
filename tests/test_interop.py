"""docs/interop.md's example runs as written: k-diffusion's own sampler on Run.denoiser() samples the run's
distribution, as scorefast's DPM-Solver++(2M) does."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from scorefast.cli import main
from scorefast.metrics import sliced_wasserstein

DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"


@pytest.mark.slow
def test_the_documented_example_samples_a_run_with_k_diffusion(tmp_path, k_diffusion, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "--data", "8gaussians", "--out", str(run), "--steps", "1500", "--n-data", "4000",
                 "--batch-size", "256", "--width", "64", "--eval-every", "1500", "--eval-samples", "200",
                 "--eval-steps", "10", "--quiet"]) == 0
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    monkeypatch.setitem(sys.modules, "k_diffusion", k_diffusion)
    monkeypatch.setitem(sys.modules, "k_diffusion.sampling", k_diffusion.sampling)
    scope = {"RUN": str(run)}
    torch.manual_seed(0)
    exec(compile(code, str(DOC), "exec"), scope)
    samples = scope["samples"]
    import scorefast
    r = scorefast.open_run(run)
    ours = r.sample(2000, sampler="dpmpp-2m", steps=20, progress=False)
    held = r.heldout("8gaussians").x
    assert samples.shape == ours.shape and torch.isfinite(samples).all()
    theirs_swd, ours_swd = sliced_wasserstein(samples, held), sliced_wasserstein(ours, held)
    assert theirs_swd < 0.3 and abs(theirs_swd - ours_swd) < 0.1, (theirs_swd, ours_swd)
