"""``scorefast bench``: every method against its baselines and its fair controls, on the user's data and machine.

    from scorefast.bench import BenchOptions, run_bench
    results = run_bench(BenchOptions(data="checkerboard", methods="truncation", budget="2000steps", seeds=3,
                                     out="bench/t"))

A study (``study``) trains data sets x variants (``scenarios``) x seeds, one run at a time or side by
side (``jobs``), each run (``runs``) reused by the hash of its configuration; ``curves`` evaluates every
EMA snapshot with one evaluator and times it as the run ran; ``report`` writes OUT/report.md,
OUT/results.json and the pictures, each table with its verdict; ``shapes`` checks the files a study
folder holds when they are read back, and ``tables`` makes the documentation's tables from results.json.
Named studies are in ``presets``; the ``fp-embed-off`` control target is a plug-in of ``methods.targets``;
``rejudging`` judges a study folder of the bench's earlier timing rules again by today's.
"""

from __future__ import annotations

from .presets import PRESETS, Preset, get_preset
from .scenarios import GROUPS, SCENARIOS, Selection, choices_text

_LAZY = {"BenchOptions": "options", "run_bench": "command", "make_study": "command", "command_of": "command",
         "Study": "study", "Budget": "study", "run_study": "study", "verdict": "report", "write_report": "report",
         "rejudge": "rejudging"}


def __getattr__(name):
    """The study, its runner and its report are imported when used: listing the choices needs no torch."""
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = ["GROUPS", "PRESETS", "SCENARIOS", "BenchOptions", "Budget", "Preset", "Selection", "Study", "choices_text",
           "command_of", "get_preset", "make_study", "rejudge", "run_bench", "run_study", "verdict", "write_report"]
