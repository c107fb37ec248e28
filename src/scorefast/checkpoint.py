"""Checkpoints that are safe to write and safe to open.

Written atomically (a temporary file in the same directory, flushed, then ``os.replace``), so a
process killed mid-write leaves the previous checkpoint intact. Read with
``torch.load(weights_only=True)``, which unpickles only tensors and plain containers and never runs
code, so a checkpoint from someone else is safe to open.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

FORMAT = "scorefast-checkpoint"
FORMAT_VERSION = 1


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomically save a dict of tensors, numbers, strings and nested containers."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint without executing code; one clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}': file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, code-executing payload...
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint '{path}': unreadable, truncated or not a safe scorefast checkpoint ({reason})") \
            from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint '{path}': not a scorefast checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint '{path}': format version {state.get('format_version')} is not supported "
                        f"by this scorefast (expects {FORMAT_VERSION})")
    return state
