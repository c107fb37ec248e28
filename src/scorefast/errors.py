"""The one exception type for bad input: the CLI prints its message as one line and exits with 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """Something the user gave is wrong (a file, a flag, a value); the message names it."""


def run_command(body: Callable[[], object]) -> int:
    """Run a command's body as an exit code: bad input -> one line on stderr and 2 (or the error's own
    ``status``: an interrupted run exits with the signal's conventional 128 + N), Ctrl-C -> 130."""
    try:
        result = body()
    except UserError as exc:
        print(f"scorefast: error: {exc}", file=sys.stderr)
        return getattr(exc, "status", 2)
    except KeyboardInterrupt:
        print("scorefast: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0
