"""Quality against wall-clock for every run of a study, by one evaluator.

Every kept EMA snapshot of a run (at most ``Protocol.points`` of them, geometrically spread so that the
early ones resolve a fast variant, plus the final weights) is evaluated the same way for every variant
and seed:

- held-out NLL by ``evaluate.test_nll`` on the run's own held-out split (the same points for every
  variant of a seed and data set): a fixed seed for dequantisation and probes, the exact divergence for
  d <= 3, else Hutchinson with 2 probes; bits/dim for discrete images, nats per example otherwise;
- the sample metric of ``evaluate.Evaluator`` (fixed seed, the probability-flow ODE) against the whole
  held-out split: SWD, or the digits Frechet distance for digits - the protocol of the trainer's own final
  metric, so the last point equals the run's summary.

The wall-clock of a point is when that model could first have existed on the resources the run had
(``run_wall``, timing rules ``TIMING``): precomputation (FP solve, reference set-up, a prior fitted before
training, a shared warm-start network) included; interval networks queued on a worker one after the
other, each finished before the next starts; workers side by side as the slowest of them plus what the
torchrun launch cost.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..checkpoint import load_checkpoint, read_json, write_json
from ..errors import UserError
from ..run import RunDir
from .shapes import saved_curve

SNAPSHOT = re.compile(r"net-(\d+)-(\d+)\.pt$")
TARGETS = ("nll", "metric")
TIMING = 2  # 1: queued networks timed turn by turn, no launch cost; 2: as they ran (``run_wall``)


@dataclass(frozen=True)
class Protocol:
    """The evaluation of every curve point: held-out NLL (``nll_n`` points, ``nll_steps`` RK4 steps at
    T = 1) and the sample metric (``samples`` ODE samples, ``sample_steps`` steps; ``metric`` one of
    ``evaluate.METRICS``, None for the data's own); ``points`` snapshots at most per curve, besides the
    final weights; ``refine`` rounds of bisection over the kept snapshots where a curve first meets its seed's
    target (``bench.bracket``); ``target`` what plain's final value sets every seed's target on: 'nll', or 'metric' (the
    sample metric: images judged by their samples where the NLL the protocol affords is not to be trusted).
    The target and the refinement only judge the curves (refined points are kept apart), so neither is part of
    their key."""

    nll_n: int = 1000
    nll_steps: int = 100
    samples: int = 2000
    sample_steps: int = 100
    points: int = 10
    seed: int = 7
    metric: str | None = None
    target: str = "nll"
    refine: int = 4

    def __post_init__(self):
        if self.target not in TARGETS:
            raise UserError(f"the bench's evaluation target must be one of {', '.join(TARGETS)}, got '{self.target}'")
        if isinstance(self.refine, bool) or not isinstance(self.refine, int) or self.refine < 0:
            raise UserError(f"the bench's evaluation refine must be a whole number >= 0, got {self.refine!r}")

    def key(self) -> str:
        """A short hash of what the curves hold (with the data's own metric, None, the key earlier curves have)."""
        fields = {k: v for k, v in asdict(self).items()
                  if k not in ("target", "refine") and not (k == "metric" and v is None)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


QUICK_PROTOCOL = Protocol(nll_n=200, nll_steps=20, samples=500, sample_steps=20, points=3, refine=2)


def snapshot_steps(run: Path, networks: int) -> list[int]:
    """The steps at which every network of the run kept a snapshot."""
    found: dict[int, set[int]] = {}
    for path in (run / "snapshots").glob("net-*-*.pt"):
        m = SNAPSHOT.search(path.name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    return sorted(step for step, nets in found.items() if len(nets) == networks)


def spread(steps: list[int], k: int) -> list[int]:
    """At most ``k`` of ``steps``, geometrically spread from the first to the last (both kept): dense
    early, where a fast variant meets its target, coarser late."""
    if len(steps) <= k:
        return steps
    if k <= 1:
        return steps[-1:]
    first, last = steps[0], steps[-1]
    picks: list[int] = []
    for i in range(k):
        wanted = first * (last / first) ** (i / (k - 1))
        j = min(range(len(steps)), key=lambda j: abs(math.log(steps[j] / wanted)))
        picks.append(min(max(j, picks[-1] + 1 if picks else 0), len(steps) - (k - i)))  # k distinct, in order
    return [steps[j] for j in picks]


def run_wall(cfg, walls: list[float], finals: list[float] | None = None, extra: float = 0.0,
             launch: float = 0.0) -> float:
    """When the model made of networks at ``walls`` seconds of their own training could first exist: one
    network's 'wall' as it is; interval networks queued on a worker one after the other (each earlier one
    trained to its end, ``finals``, before the next starts), the slowest worker group, plus ``extra`` (a
    prior fitted before training, a warm-start network) and ``launch`` (torchrun's start, for workers > 1)."""
    if len(walls) == 1:
        return float(walls[0]) + launch
    from ..training.launcher import assignment, layout
    finals = walls if finals is None else finals
    groups, _ = layout(cfg.launch.workers, len(walls))
    return max(sum(finals[k] for k in queue[:-1]) + walls[queue[-1]]
               for queue in assignment(len(walls), groups)) + extra + launch


def launch_seconds(cfg, summary: dict, finals: list[float], extra: float) -> float:
    """What a run on several workers spent beyond its slowest worker's queue (torchrun's start, the process
    group, the workers' hand-over): its training phase's elapsed seconds less the networks' and ``extra``."""
    elapsed = summary.get("elapsed_seconds")
    if cfg.launch.workers == 1 or elapsed is None:
        return 0.0
    return max(0.0, float(elapsed) - run_wall(cfg, finals, extra=extra))


def outside_walls(run: RunDir, cfg) -> float:
    """Seconds a piecewise run spends outside its networks' walls: the prior fitted before training, the
    shared warm-start network."""
    if not cfg.partition.piecewise:
        return 0.0
    seconds = 0.0
    if cfg.prior.fit == "before" and run.prior_path.exists():
        seconds += float(load_checkpoint(run.prior_path)["fit"].get("seconds", 0.0))
    warm = run.checkpoint("warm")
    if warm.exists():
        seconds += float(load_checkpoint(warm)["wall"])
    return seconds


def evaluate_run(path: str | Path, protocol: Protocol, steps: list[int] | None = None) -> dict:
    """The curve of a finished run: {'points': [{step, wall, nll, metric}], 'nll_key', 'metric_name', ...}:
    the ``Protocol.points`` spread snapshots and the final weights, or only the kept snapshots at ``steps``."""
    import torch

    from ..evaluate import Evaluator, quality, test_nll
    from ..run import open_run
    rd = RunDir(path)
    final = open_run(rd.path)
    cfg, sde, device = final.config, final.sde, final.device
    networks = len(cfg.edges(sde)) - 1
    extra = outside_walls(rd, cfg)
    finals = [float(load_checkpoint(rd.checkpoint(k))["wall"]) for k in range(networks)]
    launch = launch_seconds(cfg, read_json(rd.path / "summary.json", "summary.json"), finals, extra)
    held = final.heldout(cfg.data.spec)
    probe = final.heldout(cfg.data.spec, protocol.nll_n)
    hutchinson = 0 if probe.dim <= 3 else 2
    key = "bpd" if probe.levels else "nll_nats"
    evaluator = Evaluator(protocol.samples, "ode", protocol.sample_steps, levels=final.sample_levels(held))
    states = [load_checkpoint(rd.checkpoint(k)) for k in range(networks)]
    last = min(int(s["step"]) for s in states)
    if steps is None:
        steps = [*spread([s for s in snapshot_steps(rd.path, networks) if s < last], max(0, protocol.points - 1)),
                 None]
    points = []
    for step in steps:
        if step is None:
            model, walls = final.model, [float(s["wall"]) for s in states]
        else:
            model = rd.load_model(cfg, sde, final.shape, step=step).to(device)
            walls = [float(load_checkpoint(rd.snapshot(k, step))["wall"]) for k in range(networks)]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(protocol.seed)  # the probes' generator off the CPU (test_nll seeds its own on CPU)
            nll = test_nll(model, sde, probe, final.prior, device, steps=protocol.nll_steps, hutchinson=hutchinson,
                           seed=protocol.seed)[key]
            if protocol.metric:
                x = evaluator.samples(model, sde, held.shape, final.prior, device)
                metric = {"metric": quality(protocol.metric, x, held.x, seed=protocol.seed),
                          "metric_name": protocol.metric}
            else:
                metric = evaluator(model, sde, held, final.prior, device)
        points.append({"step": last if step is None else step, "wall": run_wall(cfg, walls, finals, extra, launch),
                       "nll": finite(nll), "metric": finite(metric["metric"])})
    return {"points": points, "nll_key": key, "metric_name": metric["metric_name"], "networks": networks,
            "divergence": "exact" if hutchinson == 0 else f"hutchinson-{hutchinson}", "nll_n": len(probe),
            "T": cfg.sde.T, "timing": TIMING, "launch_seconds": launch,
            "resources": {"workers": cfg.launch.workers, "threads": cfg.launch.threads}}


def finite(value: float) -> float | None:
    """A float for JSON: None for inf or NaN (JSON has neither; a missing value never reaches a target)."""
    value = float(value)
    return value if math.isfinite(value) else None


def cached_curve(path: str | Path, protocol: Protocol, cache: Path) -> dict:
    """``evaluate_run``'s curve, kept in ``cache/<run>-<protocol>-t<timing rules>.json`` (a finished run never
    changes, so a study run again re-evaluates nothing; a curve of other timing rules is evaluated anew)."""
    file = cache / f"{Path(path).name}-{protocol.key()}-t{TIMING}.json"
    if file.exists():
        return saved_curve(file)
    curve = evaluate_run(path, protocol)
    write_json(file, curve)
    return curve


def as_pairs(points: list[dict], key: str) -> list[tuple[float, float]]:
    """[(wall, value)] of curve points for ``evaluate.time_to`` (a missing value as NaN: never reaching)."""
    return [(p["wall"], math.nan if p[key] is None else p[key]) for p in points]


__all__ = ["TIMING", "Protocol", "QUICK_PROTOCOL", "as_pairs", "cached_curve", "evaluate_run", "finite",
           "launch_seconds", "outside_walls", "run_wall", "snapshot_steps", "spread"]
