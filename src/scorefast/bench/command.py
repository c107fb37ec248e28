"""The bench command's layer over a study: flags -> a Study (a preset's values, each flag given replacing
one), the command line that regenerates it, and the run that writes its report."""

from __future__ import annotations

import os
import shlex
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from .curves import QUICK_PROTOCOL, Protocol
from .presets import PRESETS, Preset, get_preset
from .scenarios import Selection
from .study import Budget, Study, run_study

RESERVED = {"seed": "--seeds", "out": "--out", "data": "--data", "n_data": "--n-data", "T": "--T",
            "workers": "--workers", "threads": "--threads", "recipe": "--methods (each variant sets it)",
            "method": "--methods (each variant sets it)"}


def numbers(text: str | None, kind: type, flag: str) -> tuple | None:
    """A comma-separated list of numbers, or None when not given."""
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag} '{text}': expected comma-separated {kind.__name__}s") from None
    if not values:
        raise UserError(f"{flag} is empty")
    return values


def settings_of(items: list[str]) -> dict:
    """--set FLAG=VALUE items as training flags (dashes or underscores), each value parsed as its flag's type
    (so that '--set batch_size=64' is the preset's batch_size 64, and the study it makes is the same)."""
    from ..config import FLAGS
    from ..registry import coerce
    flags = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not eq or not key:
            raise UserError(f"--set '{item}': expected FLAG=VALUE, e.g. width=256")
        if key in RESERVED:
            raise UserError(f"--set {key}: give it as the bench's {RESERVED[key]}")
        flags[key] = coerce(*FLAGS[key].owners[0], value, f"--set {key}") if key in FLAGS else value
    return flags


def make_study(data: str | None = None, methods: str | None = None, budget: str | None = None,
               seeds: int | None = None, quick: bool = False, preset: str | None = None, n_data: str | None = None,
               T: str | None = None, workers: int | None = None, threads: int | None = None,
               snapshot_every: int | None = None, settings: list[str] | None = None, jobs: int | None = None,
               metric: str | None = None, base_recipe: str | None = None) -> Study:
    """The study the bench flags describe: the preset's (``--quick`` alone is the quick preset), each flag
    given replacing the preset's value."""
    base: Preset | None = get_preset(preset) if preset else (PRESETS["quick"] if quick else None)

    def pick(mine, theirs, default):
        return mine if mine is not None else (theirs if base is not None else default)

    spec = pick(numbers(data, str, "--data"), base and base.data, None)
    if not spec:
        raise UserError("--data is required (a built-in set or a path; several separated by commas), or a --preset")
    given = {**(base.settings if base else {}), **settings_of(settings or [])}
    evaluation = Protocol(**base.evaluation) if base and base.evaluation else None
    if metric is not None:
        evaluation = replace(evaluation or (QUICK_PROTOCOL if quick or (base and base.quick) else Protocol()),
                             metric=metric)
    study = Study(data=tuple(spec), methods=tuple(Selection.parse(pick(methods, base and base.methods, "all")).names),
                 budget=Budget.parse(pick(budget, base and base.budget, "2000steps")),
                 seeds=pick(seeds, base and base.seeds, 3), quick=quick or bool(base and base.quick),
                 n_data=pick(numbers(n_data, int, "--n-data"), base and base.n_data, (None,)),
                 T=pick(numbers(T, float, "--T"), base and base.T, (0.4,)),
                 workers=pick(workers, base and base.workers, 1), threads=pick(threads, base and base.threads, None),
                 snapshot_every=pick(snapshot_every, base and base.snapshot_every, None), settings=given,
                 jobs=jobs if jobs is not None else preset_jobs(base, workers, threads),
                 evaluation=evaluation, preset=base.name if base else None,
                 base_recipe=pick(base_recipe, base and base.base_recipe, "plain"))
    study.validate()
    return replace(study, threads=study.threads_per_worker)  # written into the command: the same cores elsewhere


def preset_jobs(base: Preset | None, workers: int | None, threads: int | None) -> int:
    """A preset's side-by-side runs, as many as fit into this machine's cores (at least one)."""
    if base is None:
        return 1
    per_job = (workers or base.workers) * (threads or base.threads or 1)
    return max(1, min(base.jobs, (os.cpu_count() or 1) // per_job))


def command_of(study: Study, out: Path) -> str:
    """The bench command that runs (or, its runs finished, re-reports) exactly this study."""
    brought = [n for n in Selection.parse(",".join(study.methods)).names if n not in study.methods]
    methods = ",".join([*study.methods, *(f"-{n}" for n in brought)])  # a method brings its controls: left out
    words = ["scorefast", "bench", *(["--preset", study.preset] if study.preset else []), "--data",
             ",".join(study.data), "--methods", methods, "--budget", str(study.budget), "--seeds",
             str(study.seeds), "--out", str(out)]
    if study.quick:
        words.append("--quick")
    if study.n_data != (None,):
        words += ["--n-data", ",".join(str(n) for n in study.n_data)]
    words += ["--T", ",".join(f"{t:g}" for t in study.T), "--workers", str(study.workers)]
    if study.threads:
        words += ["--threads", str(study.threads)]
    if study.jobs > 1:
        words += ["--jobs", str(study.jobs)]
    if study.snapshot_every:
        words += ["--snapshot-every", str(study.snapshot_every)]
    if study.protocol.metric:
        words += ["--metric", study.protocol.metric]
    if study.base_recipe != (get_preset(study.preset).base_recipe if study.preset else "plain"):
        words += ["--base-recipe", study.base_recipe]
    for key, value in study.settings.items():
        words += ["--set", f"{key}={value}"]
    return shlex.join(words)


def run_bench(out: str | Path, **flags) -> dict:
    """Run the study of ``flags`` (see :func:`make_study`) into ``out`` and write its report; the results."""
    from .report import machine_info, write_report
    out = Path(out)
    study = make_study(**flags)
    command = command_of(study, out)
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    rows = run_study(study, out, command=command)
    machine = {**machine_info(), "loadavg_start": load}
    machine["threads"] = study.threads or machine["threads"]
    return write_report(rows, out, command, {"budget": str(study.budget), "seeds": study.seeds,
                                             "data": list(study.data), "methods": list(study.methods)}, machine)


__all__ = ["command_of", "make_study", "numbers", "run_bench", "settings_of"]
