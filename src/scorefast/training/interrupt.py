"""Ctrl-C and SIGTERM during training: save the current step and stop, or stop at once when asked twice.

While the loop runs (``with interrupt.deferred():``), the first SIGINT or SIGTERM only asks the loop to
stop after the current step: the budget sees ``interrupt.requested``, the hooks write the checkpoint of
that step, and :class:`Interrupted` then ends the command with one line and the signal's conventional
status (130 for SIGINT, 143 for SIGTERM). A second signal, or a signal outside the loop (during an FP
solve or a prior fit, where there is no step to save), stops at once, but not inside a file being
written: it waits for that write to end (``checkpoint.WRITES``), so nothing is corrupted or left behind.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..checkpoint import WRITES
from ..errors import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(UserError):
    """Training stopped by a signal after saving its checkpoint; ``status`` is 128 + the signal number."""

    def __init__(self, signum: int, what: str):
        super().__init__(f"stopped by {signal.Signals(signum).name}: {what}; continue with --resume")
        self.signum, self.what, self.status = signum, what, 128 + signum

    def __reduce__(self):  # rebuilt from its arguments in another process (a bench job's result)
        return type(self), (self.signum, self.what)


class Interrupt:
    """Catches SIGINT and SIGTERM in the main thread for the lifetime of a ``with`` block."""

    def __init__(self):
        self.signum: int | None = None
        self.deferring = False
        self.previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        """Ask the loop to stop after its current step as if ``signum`` had arrived (from any thread)."""
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum, frame) -> None:
        if self.deferring and self.signum is None:
            self.signum = signum
            print(f"scorefast: {signal.Signals(signum).name}: stopping after this step (again to stop at once)",
                  file=sys.stderr, flush=True)
            return
        self.signum = signum
        if not WRITES.defer(lambda: self.stop(signum)):
            self.stop(signum)

    @staticmethod
    def stop(signum: int) -> None:
        """Stop at once: KeyboardInterrupt for SIGINT, exit status 128 + signum otherwise."""
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within this block a first signal is only recorded (the loop polls ``requested``)."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False


__all__ = ["Interrupt", "Interrupted"]
