"""Systems levers of the training step: bf16 autocast and torch.compile, each measured before it is a default
(benchmarks/engine.py)."""

from __future__ import annotations

import shutil
from contextlib import nullcontext

import torch

from ..errors import UserError


def check_compile() -> None:
    """One clear error where torch.compile cannot run (no dynamo for this Python, no C++ compiler for CPU code)."""
    try:
        import torch._dynamo as dynamo
        supported = dynamo.is_dynamo_supported()
    except Exception:  # an old or stripped torch
        supported = False
    if not supported:
        raise UserError(f"--compile: torch.compile is not available with torch {torch.__version__} on this Python")
    if not torch.cuda.is_available() and shutil.which("g++") is None and shutil.which("c++") is None:
        raise UserError("--compile: torch.compile needs a C++ compiler (g++) for CPU code, and none was found")


class Autocast(torch.nn.Module):
    """Runs the wrapped objective under bf16 autocast on its device (the reduction stays float32)."""

    def __init__(self, objective: torch.nn.Module, device: torch.device, precision: str):
        super().__init__()
        self.objective, self.device_type, self.precision = objective, device.type, precision

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        if self.precision == "bf16":
            context = torch.autocast(self.device_type, dtype=torch.bfloat16)
        else:
            context = nullcontext()
        with context:
            return self.objective(x0).float()


def training_step(objective: torch.nn.Module, device: torch.device, precision: str, compile: bool) -> torch.nn.Module:
    """The objective as the loop calls it: in ``precision``, compiled if asked."""
    step = Autocast(objective, device, precision) if precision != "fp32" else objective
    return torch.compile(step) if compile else step


__all__ = ["Autocast", "check_compile", "training_step"]
