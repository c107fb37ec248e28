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
