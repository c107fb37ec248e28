"""A study: data sets x variants x seeds, trained side by side and evaluated by one evaluator.

    study = Study(data=("checkerboard",), methods=Selection.parse("truncation").names,
                  budget=Budget.parse("2000steps"), seeds=3)
    rows = run_study(study, Path("bench/trunc"))

Every run lives in ``OUT/runs/<hash of its configuration>/`` (a normal run directory): a finished run
with the same configuration is reused, never trained again and never deleted; an unfinished one is
resumed. Runs go in interleaved order - every variant of a seed before the next seed, the variants'
order rotated from seed to seed - so that a change of machine load hits all variants alike. A variant
that fails (bad flags for this data, a diverged run, a bug) becomes a row with its error text. Seeds
are independent: each is the run's ``--seed`` (its data draw, split, initialisation and batches).
``OUT/study.json`` records what defines the study (data, variants, budget); a study may grow (more data
sets, variants or seeds), but a folder holding another study (another budget, other flags under a variant's
name) is refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..checkpoint import read_json, write_json
from ..errors import UserError
from ..registry import check, options_of
from .curves import QUICK_PROTOCOL, TIMING, Protocol
from .jobs import side_by_side
from .options import BenchOptions
from .runs import Part, Variant, run_job
from .scenarios import SCENARIOS, Setting
from .shapes import STUDY, checked, saved_curve

BUDGET = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?)\s*(steps|s)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """The training budget of every network: ``steps`` optimiser steps, or ``seconds`` of training (the
    seconds of a run: interval networks queued on a worker share them). Written with its unit:
    '4000steps' or '60s'."""

    value: float
    unit: str  # 'steps' or 's'

    @classmethod
    def parse(cls, text: str) -> Budget:
        m = BUDGET.match(str(text))
        if not m:
            raise UserError(f"--budget '{text}': give a number with its unit, e.g. 4000steps or 60s")
        value, unit = float(m.group(1)), m.group(2).lower()
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--budget must be > 0, got {text}")
        if unit == "steps" and not value.is_integer():
            raise UserError(f"--budget '{text}': a number of steps must be whole")
        return cls(value, unit)

    def __str__(self) -> str:
        return f"{int(self.value)}steps" if self.unit == "steps" else f"{self.value:g}s"

    def flags(self, snapshot_every: int) -> dict:
        """The training flags of this budget (evaluation and checkpoints once per run, snapshots as asked)."""
        if self.unit == "steps":
            steps = int(self.value)
            return {"steps": steps, "eval_every": steps, "ckpt_every": steps, "snapshot_every": snapshot_every}
        return {"time_budget": self.value, "eval_every": 10**9, "ckpt_every": 10 * snapshot_every,
                "snapshot_every": snapshot_every}

    def default_snapshot_every(self) -> int:
        """Snapshots every 2 % of a step budget (the first lands well before any variant can reach a target;
        the evaluated ones are spread geometrically); every 200 steps under a time budget."""
        return max(1, int(self.value) // 50) if self.unit == "steps" else 200


def data_defaults(part: Part, quick: bool) -> dict:
    """Network and batch for a kind of data: an MLP for points; for images the trainer's own U-Net and each
    recipe's own batch (what a user of ``scorefast train`` gets); tiny ones, on at most 2,000 points or 256
    images of the data (an MLP for 8x8 images), for --quick."""
    few = min(2000 if part.kind == "points" else 256, part.size or 10**9)
    if part.kind == "points":
        return {"width": 64, "batch_size": 256, "n_data": few} if quick else {"width": 128, "batch_size": 512}
    if not quick:
        return {}
    if part.dim <= 256:
        return {"arch": "mlp", "width": 128, "batch_size": 128}
    return {"batch_size": 32, "n_data": few}


@dataclass
class Study:
    """Data sets x variants (scenario names, see ``scenarios``) x seeds under one budget; ``settings`` are
    training flags for every variant (they win over the data defaults and lose to the scenarios' own),
    ``T`` the end times of the truncated variants (one variant per T when several), ``workers`` those of the
    interval variants and their control, ``evaluation`` the protocol of the curves, ``jobs`` the runs trained
    side by side (each in its own process with ``threads`` torch threads), ``base_recipe`` the recipe every
    method and control starts from (plain DSM stays the reference of every time to target)."""

    data: tuple[str, ...]
    methods: tuple[str, ...]
    budget: Budget
    seeds: int = 3
    n_data: tuple[int | None, ...] = (None,)
    T: tuple[float, ...] = (0.4,)
    workers: int = 1
    threads: int | None = None
    quick: bool = False
    snapshot_every: int | None = None
    settings: dict = field(default_factory=dict)
    evaluation: Protocol | None = None
    jobs: int = 1
    preset: str | None = None  # the preset it was made from (its evaluation protocol comes with the name)
    base_recipe: str = "plain"  # the recipe every method and control starts from (the baselines keep theirs)

    @property
    def threads_per_worker(self) -> int:
        """Torch threads of each worker: --threads, else the cores shared out over the jobs and the workers."""
        return self.threads or max(1, (os.cpu_count() or 1) // (self.jobs * self.workers))

    @property
    def cores_per_run(self) -> int:
        """The cores every run of the study has (equal resources): an interval variant's workers x their
        threads, a one-process variant as many threads."""
        return self.workers * self.threads_per_worker

    @property
    def protocol(self) -> Protocol:
        """The evaluation of every curve point: ``evaluation`` if given, else the quick or the full one."""
        return self.evaluation or (QUICK_PROTOCOL if self.quick else Protocol())

    def validate(self) -> None:
        """One clear error for anything wrong, before anything is written."""
        if not self.data:
            raise UserError("--data is required (a built-in set or a path; several separated by commas)")
        if len(set(self.data)) != len(self.data):
            raise UserError(f"--data names a data set twice: {','.join(self.data)}")
        mine = {f.name for f in fields(self)}
        for f in options_of(BenchOptions):  # a value named like a bench flag is held to the flag's declaration
            if f.name in mine:
                check(f, getattr(self, f.name))
        if self.jobs > 1:
            cores = os.cpu_count() or 1
            used = self.jobs * self.cores_per_run
            if used > cores:
                raise UserError(f"--jobs {self.jobs} x --workers {self.workers} x --threads {self.threads_per_worker} "
                                f"= {used} threads on {cores} cores would oversubscribe the CPU; lower --jobs")
        if self.budget.unit == "steps":
            every, steps = self.snapshot_every or self.budget.default_snapshot_every(), int(self.budget.value)
            if every > steps:
                raise UserError(f"--snapshot-every {every} is larger than the budget ({steps} steps)")
            if 2 * every > steps:
                raise UserError(f"--budget {steps}steps holds fewer than two snapshots {every} steps apart; a curve "
                                "needs two (raise --budget or lower --snapshot-every)")
        if not self.n_data:
            raise UserError("--n-data is empty; give sizes separated by commas")
        if not self.T or any(not 0 < t < 1 for t in self.T):
            raise UserError(f"--T must be end times in (0, 1) for the truncated variants, got {self.T}")
        unknown = [m for m in self.methods if m not in SCENARIOS]
        if unknown:
            raise UserError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        own = Setting({}, 1, recipe=self.base_recipe).baseline
        needing = [m for m in self.methods if SCENARIOS[m].base_control]
        if needing and own not in self.methods:
            raise UserError(f"--methods {', '.join(needing)} on the base recipe {self.base_recipe} need its own "
                            f"scenario {own} beside them (their control); add it to --methods")

    def parts(self) -> list[Part]:
        """The data sets, each read once here (an unreadable one is a UserError before anything runs)."""
        from ..data import load_data
        from ..evaluate import check_metric
        parts = []
        for spec in self.data:
            for n in self.n_data:
                ds = load_data(spec, n=n, seed=0)
                if n is not None and len(ds) < n:
                    raise UserError(f"--n-data {n}: '{spec}' holds only {len(ds)} examples")
                if self.protocol.metric:
                    check_metric(self.protocol.metric, ds)
                parts.append(Part(spec, n, ds.dim, ds.kind, len(ds)))
        return parts

    def base(self, part: Part) -> dict:
        """The flags every variant of ``part`` shares."""
        snapshot_every = self.snapshot_every or self.budget.default_snapshot_every()
        protocol = self.protocol
        flags = {**data_defaults(part, self.quick), "data": part.spec,
                 **({"n_data": part.n} if part.n is not None else {}),
                 **self.budget.flags(snapshot_every), "eval_samples": protocol.samples,
                 "eval_steps": protocol.sample_steps, **self.settings}
        from ..config import Config
        Config(**self.applicable(flags, part)).validate()  # a bad --set is one error, not a failed row per variant
        return flags

    def applicable(self, flags: dict, part: Part) -> dict:
        """``flags`` without the study's settings that are options of a plug-in these flags do not select (a
        --set fp_variant=paper reaches the fp-embed variants only)."""
        from ..config import applies, selected
        chosen = selected(flags, part.kind)
        return {k: v for k, v in flags.items() if k not in self.settings or applies(k, chosen)}

    def variants(self, part: Part) -> list[Variant]:
        """Every selected scenario's flags on ``part`` (one variant per end time for those that use T), each
        run on the study's cores; a --set value that a variant would refuse is a UserError here, before
        anything trains."""
        base = self.base(part)
        out = []
        for name in self.methods:
            sc = SCENARIOS[name]
            Ts = self.T if sc.uses_T and len(self.T) > 1 else self.T[:1]
            for T in Ts:
                label = name if len(Ts) == 1 else f"{name}-T{T:g}"
                skipped = sc.applies(part.dim)
                setting = Setting(base, part.dim, T, self.workers, self.quick, self.base_recipe, part.kind)
                flags = {} if skipped else self.on_cores(self.applicable({**base, **sc.flags(setting)}, part))
                if not skipped:
                    self.check_settings(flags, label, part)
                out.append(Variant(label, sc, flags, skipped, T if sc.uses_T else None, sc.controls_on(setting)))
        return out

    def on_cores(self, flags: dict) -> dict:
        """``flags`` with the threads that give the run the study's cores: its workers x threads = the cores
        of every run (a one-network variant beside a 2-worker one trains with twice the threads)."""
        workers = int(flags.get("workers", 1))
        return {**flags, "threads": max(1, self.cores_per_run // workers)}

    def check_settings(self, flags: dict, label: str, part: Part) -> None:
        """A UserError when the study's settings make this variant's configuration invalid (a bad plug-in
        value in --set reaches only its plug-in's variants, so the study-wide check cannot see it)."""
        from ..config import Config
        try:
            Config(part.kind, **flags).validate()
        except UserError as exc:
            try:
                Config(part.kind, **{k: v for k, v in flags.items() if k not in self.settings}).validate()
            except UserError:
                return  # wrong without the settings too: the run fails and its row says why
            raise UserError(f"--set on {label} ({part.label}): {exc}") from None

    def identity(self, parts: list[Part], variants: dict[str, list[Variant]]) -> dict:
        """What defines the study (a folder holds one): its data, its variants' flags and its budget."""
        return {"data": [p.label for p in parts], "budget": str(self.budget), "timing": TIMING,
                "variants": {p.label: {v.name: v.flags for v in variants[p.label]} for p in parts}}


def grown(saved: dict, identity: dict, out: Path) -> dict:
    """The saved study with ``identity``'s data sets and variants added (a study may grow: more data sets,
    more variants, more seeds), or a UserError when the two are other studies: another budget, or a
    variant of the same name and data set with other flags."""
    differ = ["budget"] if saved.get("budget") != identity["budget"] else []
    old = saved.get("variants", {})
    for label, variants in identity["variants"].items():
        clash = [v for v, flags in variants.items() if v in old.get(label, {}) and old[label][v] != flags]
        if clash:
            differ.append(f"flags of {', '.join(clash)} on {label}")
    if differ:
        raise UserError(f"--out '{out}' holds another study (its {' and '.join(differ)} differ); choose another --out")
    data = [*saved.get("data", []), *(d for d in identity["data"] if d not in saved.get("data", []))]
    variants = {label: {**old.get(label, {}), **identity["variants"].get(label, {})} for label in data}
    return {**identity, "data": data, "variants": variants}


def open_folder(out: Path, identity: dict, extra: dict) -> None:
    """Claim ``out`` for this study: refuse a file, a folder of another study (or of the earlier timing
    rules), a damaged study.json or cached curve, or a non-empty folder that holds no study; then write
    study.json (what it holds so far, this study's included, + ``extra``)."""
    study = out / "study.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file, not a study folder")
    if study.exists():
        saved = checked(read_json(study, "study.json"), STUDY, study, "restore it, or choose another --out")
        if saved.get("timing", 1) != TIMING:
            raise UserError(f"--out '{out}' holds a study timed by the bench's earlier rules (study.json: timing "
                            f"{saved.get('timing', 1)}, now {TIMING}: queued networks one after the other, "
                            "equal cores); its rows would not compare with new ones: choose another --out")
        identity = grown(saved, json.loads(json.dumps(identity)), out)
        for file in sorted((out / "curves").glob("*.json")):
            saved_curve(file)
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out '{out}' is not empty and holds no study.json; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out '{out}': {exc.strerror or exc}") from None
    write_json(study, {**identity, **extra})


def interleaved(parts: list[Part], variants: dict[str, list[Variant]], seeds: int) -> list[tuple]:
    """(part, variant, seed) in run order: seed by seed, every data set, the variants rotated per seed."""
    jobs = []
    for seed in range(seeds):
        for part in parts:
            vs = variants[part.label]
            k = seed % len(vs) if vs else 0
            jobs += [(part, v, seed) for v in vs[k:] + vs[:k]]
    return jobs


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_study(study: Study, out: Path, say: Callable[[str], None] = stderr_line, command: str = "") -> list[dict]:
    """Run every (data, variant, seed) of ``study`` into ``out``; returns one row per run (its curve, or its
    error). One progress line per run on ``say``: which run, the time so far and an estimate of what is left
    (from the runs trained so far; reused runs cost nothing)."""
    import torch

    from ..training.interrupt import Interrupted
    study.validate()
    parts = study.parts()
    variants = {p.label: study.variants(p) for p in parts}
    open_folder(out, study.identity(parts, variants), {"seeds": study.seeds, "command": command})
    jobs = interleaved(parts, variants, study.seeds)
    threads = torch.get_num_threads()
    torch.set_num_threads(study.cores_per_run)  # the evaluation's too
    began, spent, trained, rows = time.perf_counter(), 0.0, 0, {}

    def done(i: int, row: dict, seconds: float) -> None:
        nonlocal spent, trained
        if not row["reused"] and row["status"] != "n/a":
            spent, trained = spent + seconds, trained + 1
        if row["status"] == "failed":
            say(f"bench: {row['data']}: {row['variant']}, seed {row['seed']} failed: {row['error']}")
        rows[i] = row

    def progress(i: int, part: Part, variant: Variant, seed: int, verb: str = "") -> None:
        elapsed = time.perf_counter() - began
        left = (f"about {clock(spent / trained * (len(jobs) - len(rows)) / study.jobs)} left" if trained
                else "estimating the time left")
        doing = f"not applicable ({variant.skipped})" if variant.skipped else f"elapsed {clock(elapsed)}, {left}"
        say(f"bench [{i + 1}/{len(jobs)}]{verb} {part.label}: {variant.name}, seed {seed} ({doing})")

    try:
        if study.jobs == 1:
            for i, (part, variant, seed) in enumerate(jobs):
                progress(i, part, variant, seed)
                t0 = time.perf_counter()
                done(i, run_job(part, variant, seed, out, study.protocol), time.perf_counter() - t0)
        else:
            side_by_side(jobs, out, study.jobs, study.protocol, study.cores_per_run, done, progress, say)
    except Interrupted as exc:  # a run's advice (--resume) is not the bench's
        stop = UserError(f"bench stopped by {signal.Signals(exc.signum).name}: {exc.what}; the same bench command "
                         "continues the study (finished runs are reused, the stopped one resumes)")
        stop.status = exc.status
        raise stop from None
    finally:
        torch.set_num_threads(threads)
    rows = [rows[i] for i in range(len(jobs))]
    say(f"bench: {len(jobs)} runs in {clock(time.perf_counter() - began)} "
        f"({sum(r['reused'] for r in rows)} reused, {sum(r['status'] == 'failed' for r in rows)} failed)")
    return rows


__all__ = ["Budget", "Study", "data_defaults", "grown", "interleaved", "open_folder", "run_study"]
