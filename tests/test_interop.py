"""docs/interop.md's example runs as written against the installed k-diffusion: ``from k_diffusion.sampling
import ...`` runs the real package's ``__init__``, and k-diffusion's own sampler on ``Run.denoiser()`` samples
the run's distribution as scorefast's DPM-Solver++(2M) does.

torchvision is the one import not installed here: no CPU build of it matching the pinned torch is on PyPI,
and PyPI's would replace that torch. When it cannot be imported, a stand-in answers the names the
package's training modules import from it at import time; the samplers never use it."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from scorefast.cli import main
from scorefast.metrics import sliced_wasserstein

DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"


class _Anything:
    """Whatever a module-level ``from torchvision... import X`` or ``X.ATTR`` asks for."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return _Anything()

    def __call__(self, *args, **kwargs):
        return _Anything()


class _StandIn(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StandIn(spec.name)

    def exec_module(self, module):
        module.__path__ = []


@pytest.fixture
def installed_k_diffusion(monkeypatch):
    """Imports resolve to the installed k-diffusion; torchvision is stood in for only when it is absent."""
    if importlib.util.find_spec("k_diffusion") is None:
        pytest.skip("k-diffusion is not installed (make test installs it; docs/interop.md says how)")
    before = set(sys.modules)
    if importlib.util.find_spec("torchvision") is None:
        monkeypatch.setattr(sys, "meta_path", [_TorchvisionStandIn(), *sys.meta_path])
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("k_diffusion", "torchvision", "clip", "cleanfid", "skimage", "jsonmerge"):
            sys.modules.pop(name, None)


@pytest.mark.slow
def test_the_documented_example_samples_a_run_with_k_diffusion(tmp_path, installed_k_diffusion, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "8gaussians", "--out", "runs/8gaussians", "--steps", "1500", "--n-data", "4000",
                 "--batch-size", "256", "--width", "64", "--eval-every", "1500", "--eval-samples", "200",
                 "--eval-steps", "10", "--quiet"]) == 0
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert "from k_diffusion.sampling import" in code
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, str(DOC), "exec"), scope)
    assert scope["sample_dpmpp_2m"].__module__ == "k_diffusion.sampling"
    assert Path(sys.modules["k_diffusion"].__file__).name == "__init__.py"  # the package itself was imported
    samples = scope["samples"]
    import scorefast
    r = scorefast.open_run("runs/8gaussians")
    ours = r.sample(2000, sampler="dpmpp-2m", steps=20, progress=False)
    held = r.heldout("8gaussians").x
    assert samples.shape == ours.shape and torch.isfinite(samples).all()
    theirs_swd, ours_swd = sliced_wasserstein(samples, held), sliced_wasserstein(ours, held)
    assert theirs_swd < 0.3 and abs(theirs_swd - ours_swd) < 0.1, (theirs_swd, ours_swd)
