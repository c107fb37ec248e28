"""The bench command's layer over a study: flags -> a Study (a preset's values, each flag given replacing
one), the command line that regenerates it, and the run that writes its report."""

from __future__ import annotations

import os
import shlex
from dataclasses import replace
from pathlib import Path

from ..checkpoint import read_json
from ..errors import UserError
from .bracket import bracket
from .curves import QUICK_PROTOCOL, Protocol
from .options import BenchOptions
from .presets import PRESETS, Preset, get_preset
from .scenarios import Selection
from .study import Budget, Study, run_study, stderr_line

RESERVED = {"seed": "--seeds", "out": "--out", "data": "--data", "n_data": "--n-data", "T": "--T",
            "workers": "--workers", "threads": "--threads", "recipe": "--methods (each variant sets it)",
            "method": "--methods (each variant sets it)"}


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


def make_study(options: BenchOptions) -> Study:
    """The study the bench flags describe: the preset's (``--quick`` alone is the quick preset), each flag
    given replacing the preset's value."""
    o = options
    base: Preset | None = get_preset(o.preset) if o.preset else (PRESETS["quick"] if o.quick else None)

    def pick(mine, theirs, default):
        return mine if mine is not None else (theirs if base is not None else default)

    spec = pick(o.data, base and base.data, None)
    if not spec:
        raise UserError("--data is required (a built-in set or a path; several separated by commas), or a --preset")
    given = {**(base.settings if base else {}), **settings_of(o.settings or [])}
    evaluation = Protocol(**base.evaluation) if base and base.evaluation else None
    if o.metric is not None:
        evaluation = replace(evaluation or (QUICK_PROTOCOL if o.quick or (base and base.quick) else Protocol()),
                             metric=o.metric)
    study = Study(data=spec, methods=tuple(Selection.parse(pick(o.methods, base and base.methods, "all")).names),
                 budget=Budget.parse(pick(o.budget, base and base.budget, "2000steps")),
                 seeds=pick(o.seeds, base and base.seeds, 3), quick=o.quick or bool(base and base.quick),
                 n_data=pick(o.n_data, base and base.n_data, (None,)), T=pick(o.T, base and base.T, (0.4,)),
                 workers=pick(o.workers, base and base.workers, 1),
                 threads=pick(o.threads, base and base.threads, None),
                 snapshot_every=pick(o.snapshot_every, base and base.snapshot_every, None), settings=given,
                 jobs=o.jobs if o.jobs is not None else preset_jobs(base, o.workers, o.threads),
                 evaluation=evaluation, preset=base.name if base else None,
                 base_recipe=pick(o.base_recipe, base and base.base_recipe, "plain"))
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


def run_bench(options: BenchOptions) -> dict:
    """Run the study of the bench flags (see :func:`make_study`) into their --out and write its report; the
    results."""
    from .report import machine_info, write_report
    if options.out is None:
        raise UserError("--out is required: the study folder (or --rejudge FOLDER)")
    out = Path(options.out)
    study = make_study(options)
    command = command_of(study, out)
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    rows = bracket(run_study(study, out, command=command), study.protocol, out, stderr_line,
                   processes=study.jobs, threads=study.cores_per_run)
    machine = {**machine_info(), "loadavg_start": load}
    machine["threads"] = study.threads or machine["threads"]
    if not any(r["status"] == "ok" and not r["reused"] for r in rows):
        machine = timed_on(out / "results.json", machine)
    return write_report(rows, out, command, {"budget": str(study.budget), "seeds": study.seeds,
                                             "data": list(study.data), "methods": list(study.methods),
                                             "refine": study.protocol.refine}, machine)


def timed_on(results: Path, machine: dict) -> dict:
    """The machine (its load averages) of the report that timed a study's runs, when a re-report trains nothing:
    the load of the machine that re-reports says nothing about the runs; ``machine`` where there is none."""
    try:
        earlier = read_json(results, "results.json").get("machine") if results.exists() else None
    except UserError:
        earlier = None
    return earlier if isinstance(earlier, dict) and "loadavg_start" in earlier else machine


__all__ = ["command_of", "make_study", "run_bench", "settings_of", "timed_on"]
