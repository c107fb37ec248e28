"""One run of a study: its configuration, its reuse by the hash of that configuration, its training and the
evaluation of its curve; a failure becomes the row's error, never the end of the study."""

from __future__ import annotations

import hashlib
import json
import math
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .curves import Protocol, cached_curve
from .scenarios import Scenario


@dataclass(frozen=True)
class Part:
    """One data set of a study (a spec at one --n-data), with what its variants' flags depend on."""

    spec: str
    n: int | None
    dim: int
    kind: str
    size: int | None = None  # the examples the data holds (None: not known)

    @property
    def label(self) -> str:
        return self.spec if self.n is None else f"{self.spec} n={self.n}"


@dataclass(frozen=True)
class Variant:
    """A scenario's flags for one data set (without seed and run directory), or why it does not apply."""

    name: str
    scenario: Scenario
    flags: dict
    skipped: str | None = None
    T: float | None = None  # the end time this variant was made for (a truncated variant or its T-control)
    controls: tuple[str, ...] = ()  # the scenarios that control it in this study (``Scenario.controls_on``)


def config_hash(cfg) -> str:
    """The hash of a run's configuration, its location aside (the name of its run directory)."""
    nested = cfg.to_dict()
    nested["log"] = {k: v for k, v in nested["log"].items() if k != "out"}
    return hashlib.sha256(json.dumps(nested, sort_keys=True).encode()).hexdigest()[:16]


def error_text(exc: BaseException) -> str:
    """One line for a failed run: a UserError's own message; for anything else its type and where it arose."""
    if isinstance(exc, UserError):
        return str(exc)
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{at}"


def finished(run: Path, cfg) -> bool:
    """Whether ``run`` holds a finished run of ``cfg``: its stored configuration is ``cfg`` with the options
    ``cfg`` leaves unset (None) as the trainer resolved them for the data (--xflip, --dequantise, ...)."""
    from ..run import RunDir
    if not (run / "summary.json").is_file():
        return False
    stored = RunDir(run).read_config()
    saved, wanted = stored.to_dict(), cfg.to_dict()
    for section, fields in wanted.items():
        for key, value in fields.items():
            if value is None:
                fields[key] = saved.get(section, {}).get(key)
    return config_hash(stored) == config_hash(type(stored).from_dict(wanted))


def run_job(part: Part, variant: Variant, seed: int, out: Path, protocol: Protocol) -> dict:
    """Train (or reuse, or resume) one run and evaluate its curve; failures become the row's 'error'."""
    from ..training.interrupt import Interrupted
    from ..training.recipe import train
    row = {"data": part.label, "spec": part.spec, "n_data": part.n, "variant": variant.name,
           "scenario": variant.scenario.name, "group": variant.scenario.group, "role": variant.scenario.role,
           "seed": seed, "status": "ok", "reused": False, "warnings": [], "variant_T": variant.T,
           "target": protocol.target, "controls": list(variant.controls),
           "resources": {"workers": int(variant.flags.get("workers", 1)), "threads": variant.flags.get("threads")}}
    if variant.skipped:
        return {**row, "status": "n/a", "error": variant.skipped}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cfg = run_config(part, variant, seed)
            digest = config_hash(cfg)
            run = out / "runs" / digest
            row.update(hash=digest, run=str(run))
            if finished(run, cfg):
                row["reused"] = True
            else:
                summary = train(cfg.replace(out=str(run)), resume=(run / "config.json").exists(), progress=False)
                row["train_seconds"] = summary["train_seconds"]
            row["curve"] = cached_curve(run, protocol, out / "curves")
        except Interrupted:
            raise
        except Exception as exc:  # one variant's failure is a row of the report, never the end of the study
            row.update(status="failed", error=error_text(exc))
    row["warnings"] = list(dict.fromkeys(f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}"
                                         for w in caught))
    return row


def run_config(part: Part, variant: Variant, seed: int):
    """The configuration of one run as the run will store it: the recipe's defaults for this kind of data
    applied, a time budget shared along a worker's queue."""
    from ..config import Config
    return queue_budget(Config(part.kind, **variant.flags, seed=seed))


def queue_budget(cfg):
    """A time budget is the run's: interval networks queued on one worker share it (each gets its share)."""
    if cfg.budget.time_budget is None or not cfg.partition.piecewise:
        return cfg
    from ..training.launcher import layout
    networks = len(cfg.edges(cfg.sde.build())) - 1
    groups, _ = layout(cfg.launch.workers, networks)
    return cfg.replace(time_budget=cfg.budget.time_budget / math.ceil(networks / groups))


__all__ = ["Part", "Variant", "config_hash", "error_text", "finished", "queue_budget", "run_config", "run_job"]
