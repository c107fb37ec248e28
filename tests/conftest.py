"""Shared test set-up: one torch thread per test process, and the device the suite runs on.

Small models run as fast on one thread, and a single thread cannot be oversubscribed when tests
spawn worker processes (torchrun, the CLI) or share the machine. ``SCOREFAST_TEST_DEVICE=cuda`` runs
the suite on a GPU: the ``device`` fixture gives it to the tests that build tensors, and every run that
the tests start (in this process or in a subprocess) resolves ``--device auto`` to it.
"""

import os

import pytest
import torch

torch.set_num_threads(1)
DEVICE = torch.device(os.environ.get("SCOREFAST_TEST_DEVICE", "cpu"))
os.environ["SCOREFAST_DEVICE"] = str(DEVICE)
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise pytest.UsageError("SCOREFAST_TEST_DEVICE=cuda, but torch sees no CUDA device")


@pytest.fixture
def device() -> torch.device:
    """The device the suite runs on (SCOREFAST_TEST_DEVICE, default cpu)."""
    return DEVICE


def pytest_collection_modifyitems(config, items):
    """Tests marked cpu_only (bitwise equalities that CUDA's kernels do not promise) skip on a GPU."""
    if DEVICE.type != "cpu":
        skip = pytest.mark.skip(reason=f"bitwise on CPU only; the suite runs on {DEVICE}")
        for item in items:
            if "cpu_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def k_diffusion():
    """The real k-diffusion package as far as its samplers go: ``k_diffusion.sampling`` loaded from the
    installed files without running the package's __init__ (which imports its training stack; make test
    installs it with --no-deps). torchvision, imported by its utils and unused by sampling, is stubbed if
    absent. Yields a stand-in ``k_diffusion`` module whose ``sampling`` is the real one."""
    import importlib.util
    import sys
    import types
    from pathlib import Path

    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed: pip install --no-deps k-diffusion==0.1.1.post1")
    pytest.importorskip("torchsde", reason="k-diffusion's sampling module imports torchsde")
    kdir = Path(spec.submodule_search_locations[0])
    package = types.ModuleType("kdiffusion_reference")
    package.__path__ = [str(kdir)]
    stubs = {"kdiffusion_reference": package}
    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            stubs[name] = types.ModuleType(name)
        stubs["torchvision"].transforms = stubs["torchvision.transforms"]
        stubs["torchvision.transforms"].functional = stubs["torchvision.transforms.functional"]
    sys.modules.update(stubs)
    try:
        loader = importlib.util.spec_from_file_location("kdiffusion_reference.sampling", kdir / "sampling.py")
        sampling = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(sampling)
        package.sampling = sampling
        yield package
    finally:
        for name in [*stubs, "kdiffusion_reference.sampling", "kdiffusion_reference.utils"]:
            sys.modules.pop(name, None)
