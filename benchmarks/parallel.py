"""Parallel score matching against one data-parallel network, at equal wall-clock on the same workers.

    python benchmarks/parallel.py --quick                       # smoke test, about 2-3 minutes
    python benchmarks/parallel.py --seeds 3 --steps 3000 ...    # the real run (see --help)
    python benchmarks/parallel.py --report-only benchmarks/results/parallel/parallel.json --out /tmp/p
        # the tables and pictures again from a stored parallel.json (its curves), nothing trained

Methods (METHODS.md section 3; every network the same MLP, the same optimiser and batch):
- SA-DDP: one time-conditioned network on [eps, T], DistributedDataParallel on the 2 workers (the
  batch is split across them);
- TPSM K=2: two interval networks (log-SNR partition by default), one per worker, side by side;
- scaling: TPSM K=2 queued on 1 worker (for total steps/s from 1 to 2 workers), and K=4, 8 queued
  on 2 workers (each worker trains K/2 networks in sequence), with the step-count view of K workers
  (SIMULATED: the wall-clock of K workers is taken as the max over the networks' own training time).

Every run keeps the EMA weights every --snapshot-every steps; every snapshot is evaluated by ONE
evaluator (section 4): test NLL by the probability-flow ODE with the exact divergence (or Hutchinson
for images, if asked), the same held-out points for every method of a seed, the same dequantisation
noise, and the same fixed RK4 grid for every model, built on the union of all the partitions' edges
(each model is re-expressed as a piecewise model on that union, so no step crosses an edge and all
methods integrate on identical time points).

Wall-clock of a run at snapshot step s: the networks' own training seconds ('wall', precomputation
included, evaluation / checkpoint / launch excluded) at step s, summed along each worker's queue,
max over workers. For side-by-side networks that is the max over networks; for SA-DDP its wall. The
run's total elapsed seconds (summary['elapsed_seconds'], launch of torchrun included) is reported
beside it, so launch overhead is visible.

Outputs in --out: parallel.json (every raw number), nll_vs_wallclock_<data>.png, and the tables
printed to stdout (also saved as report.txt).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import Report, command_line, curve_of, fmt3, machine_info, mmm, stored_results, train_run

from scorefast import Config, open_run
from scorefast.bench.report import json_safe
from scorefast.checkpoint import load_checkpoint
from scorefast.data import BUILTIN_2D
from scorefast.evaluate import time_to
from scorefast.methods.piecewise import PiecewiseModel
from scorefast.run import RunDir
from scorefast.training.launcher import assignment, layout

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "parallel"


# -- what to train --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """One training configuration: K networks on `workers` processes with `threads` torch threads each."""

    key: str
    label: str
    intervals: int
    workers: int
    threads: int
    role: str  # "main" (the equal-wall-clock comparison) or "scaling"


@dataclass(frozen=True)
class DataSettings:
    """What a data set is trained and evaluated with."""

    name: str
    arch: str
    width: int
    depth: int
    batch: int
    steps: int
    sa_steps: int
    snapshot_every: int
    n_data: int | None
    eval_n: int
    hutchinson: int
    metric: str  # "nll_nats" (2-D) or "bpd" (images)


def methods_for(args: argparse.Namespace) -> list[Method]:
    out = [Method("sa-ddp", "SA  DDP on 2 workers", 1, 2, 1, "main"),
           Method("tpsm2", "TPSM K=2  2 workers side by side", 2, 2, 1, "main")]
    if args.with_sa_threads:
        out.append(Method("sa-2threads", "SA  1 process, 2 threads", 1, 1, 2, "main"))
    if args.scaling_ks is not None:
        out.append(Method("tpsm2-1w", "TPSM K=2  1 worker queued", 2, 1, 1, "scaling"))
        for k in args.scaling_ks:
            out.append(Method(f"tpsm{k}", f"TPSM K={k}  2 workers queued", k, 2, 1, "scaling"))
    return out


def data_settings(args: argparse.Namespace, name: str) -> DataSettings:
    if name in BUILTIN_2D or name in ("gaussian2d",):
        return DataSettings(name, "mlp", args.width, args.depth, args.batch, args.steps, args.sa_steps or args.steps,
                            args.snapshot_every, args.n_data, args.eval_n, 0, "nll_nats")
    steps = args.digits_steps or args.steps
    return DataSettings(name, args.digits_arch, args.digits_width, args.depth, args.digits_batch, steps,
                        args.sa_steps or steps, args.digits_snapshot_every or args.snapshot_every, None,
                        args.digits_eval_n, args.digits_hutchinson, "bpd")


def train_config(args: argparse.Namespace, ds: DataSettings, m: Method, seed: int, out: Path) -> Config:
    steps = ds.sa_steps if m.intervals == 1 else ds.steps
    spacing = {"partition": args.partition} if m.intervals > 1 else {}  # an option of the interval partition only
    return Config(data=ds.name, out=str(out), steps=steps, sde=args.sde, eps=args.eps, seed=seed, n_data=ds.n_data,
                  batch_size=ds.batch, lr=args.lr, ema=args.ema, arch=ds.arch, width=ds.width, depth=ds.depth,
                  intervals=m.intervals, workers=m.workers, threads=m.threads, snapshot_every=ds.snapshot_every,
                  eval_every=steps, ckpt_every=steps, eval_samples=256, eval_steps=20, device="cpu", **spacing)


def queues(m: Method) -> list[list[int]]:
    """The networks each worker trains, in order."""
    if m.workers == 1:
        return [list(range(m.intervals))]
    groups, _ = layout(m.workers, m.intervals)
    return assignment(m.intervals, groups)


# -- evaluation -----------------------------------------------------------------------------------

def union_edges(edge_lists: list[list[float]], tol: float = 1e-9) -> list[float]:
    """All edges of all partitions, near-duplicates merged (nested log-SNR partitions agree to ~1 ulp)."""
    out: list[float] = []
    for e in sorted(x for edges in edge_lists for x in edges):
        if not out or e - out[-1] > tol:
            out.append(e)
    return out


def on_grid(model: torch.nn.Module, edges: list[float]) -> PiecewiseModel:
    """The same model as a piecewise model on ``edges`` (each piece: the model's own piece there), so
    that the likelihood integrates every model on the same grid, with every edge on it."""
    own = list(model.edges) if isinstance(model, PiecewiseModel) else None
    parts = []
    for a, b in zip(edges[:-1], edges[1:]):
        if own is None:
            parts.append(model)
            continue
        mid = 0.5 * (a + b)
        k = min(sum(1 for e in own[1:-1] if e <= mid), len(own) - 2)
        parts.append(model.piece(k))
    return PiecewiseModel(parts, edges)


def snapshot_steps(run: Path, K: int) -> list[int]:
    """Steps at which every network of the run has a snapshot."""
    common = None
    for k in range(K):
        steps = {int(m.group(1)) for p in (run / "snapshots").glob(f"net-{k}-*.pt")
                 if (m := re.fullmatch(rf"net-{k}-(\d+)\.pt", p.name))}
        common = steps if common is None else common & steps
    return sorted(common or ())


def network_walls(run: Path, K: int, step: int | None) -> list[float]:
    """Each network's own training seconds at a snapshot step (None: the final checkpoint)."""
    rd = RunDir(run)
    return [float(load_checkpoint(rd.checkpoint(k) if step is None else rd.snapshot(k, step))["wall"])
            for k in range(K)]


def run_wall(walls: list[float], q: list[list[int]]) -> float:
    """Wall-clock of the run: each worker's networks in sequence, workers side by side."""
    return max(sum(walls[k] for k in ks) for ks in q)


def evaluate_run(run: Path, m: Method, ds: DataSettings, grid_edges: list[float],
                 args: argparse.Namespace) -> list[dict]:
    """NLL of every snapshot (and of the final weights if the last step has none), cached in the run."""
    cache_path = run / "bench_nll.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    steps_done = [int(s) for s in json.loads((run / "summary.json").read_text())["steps"]]
    points: list[int | None] = list(snapshot_steps(run, m.intervals))
    if not points or points[-1] < min(steps_done):
        points.append(None)
    grid_tag = ",".join(f"{e:.12g}" for e in grid_edges)
    curve = []
    q = queues(m)
    for step in points:
        key = f"{step}|{ds.eval_n}|{args.nll_steps}|{ds.hutchinson}|{grid_tag}"
        if key not in cache:
            r = open_run(run, device="cpu", step=step)
            r.model = on_grid(r.model, grid_edges)
            res = r.nll(ds.name, n=ds.eval_n, steps=args.nll_steps, hutchinson=ds.hutchinson, seed=0,
                        progress=False)
            cache[key] = {k: res[k] for k in ("nll_nats", "nll_nats_sem", "n", "divergence", "seconds", "bpd")
                          if k in res}
            cache_path.write_text(json.dumps(cache, indent=1))
        walls = network_walls(run, m.intervals, step)
        curve.append({"step": step if step is not None else min(steps_done), "net_walls": walls,
                      "wall": run_wall(walls, q), "sim_wall": max(walls), **cache[key]})
    return curve


# -- curves and tables ----------------------------------------------------------------------------

def value_at(curve: list[dict], xkey: str, ykey: str, x: float) -> float:
    """The curve linearly interpolated at x (NaN outside its range)."""
    xs = np.array([p[xkey] for p in curve])
    ys = np.array([p[ykey] for p in curve])
    if len(xs) == 0 or x < xs[0] - 1e-12 or x > xs[-1] + 1e-12:
        return float("nan")
    return float(np.interp(x, xs, ys))


def over_known(values: list[float | None]) -> list[float]:
    """The values that exist: statistics over the seeds that reached a target (the table says how many)."""
    return [x for x in values if x is not None and math.isfinite(x)]


def views(runs: list[dict]) -> list[dict]:
    """Rows to report: each method on its measured wall-clock; K > 2 also SIMULATED on K workers."""
    out = []
    for r in runs:
        out.append({**r, "view": r["label"], "xkey": "wall", "simulated": False})
        if r["intervals"] > 2 and r["workers"] < r["intervals"]:
            out.append({**r, "view": f"TPSM K={r['intervals']}  SIMULATED {r['intervals']} workers", "xkey": "sim_wall",
                        "simulated": True})
    return out


def summarise(data: str, runs: list[dict], metric: str) -> dict:
    """Per-view statistics over seeds, each seed compared with SA-DDP of the same seed."""
    sa = {r["seed"]: r for r in runs if r["key"] == "sa-ddp"}
    main = [r for r in runs if r["role"] == "main"]
    equal_wall = {s: min(r["curve"][-1]["wall"] for r in main if r["seed"] == s) for s in sa}
    rows = []
    order = []
    for v in views(runs):
        if v["view"] not in order:
            order.append(v["view"])
    for name in order:
        vs = [v for v in views(runs) if v["view"] == name]
        per_seed = []
        for v in vs:
            c, x = v["curve"], v["xkey"]
            base = sa.get(v["seed"])
            final = c[-1][metric]
            rec = {"seed": v["seed"], "final": final, "wall": c[-1][x], "elapsed": None if v["simulated"]
                   else v["summary"]["elapsed_seconds"], "total_steps": sum(v["summary"]["steps"])}
            if base is not None:
                target = base["curve"][-1][metric]
                t = time_to(curve_of(c, x, metric), target)
                rec.update(sa_final=target, sa_wall=base["curve"][-1]["wall"], time_to_sa_final=t,
                           ratio=None if t is None else t / base["curve"][-1]["wall"], equal_wall=equal_wall[v["seed"]],
                           at_equal_wall=value_at(c, x, metric, equal_wall[v["seed"]]),
                           sa_at_equal_wall=value_at(base["curve"], "wall", metric, equal_wall[v["seed"]]))
            per_seed.append(rec)
        def stat(k: str, per_seed: list[dict] = per_seed) -> list:
            return mmm(over_known([p.get(k) for p in per_seed]))
        delta = [p["at_equal_wall"] - p["sa_at_equal_wall"] for p in per_seed if "at_equal_wall" in p]
        rows.append({"view": name, "key": vs[0]["key"], "role": vs[0]["role"], "simulated": vs[0]["simulated"],
                     "intervals": vs[0]["intervals"], "workers": vs[0]["workers"],
                     "seeds": [p["seed"] for p in per_seed],
                     "per_seed": per_seed, "final": stat("final"), "wall": stat("wall"), "elapsed": stat("elapsed"),
                     "at_equal_wall": stat("at_equal_wall"), "delta_at_equal_wall": mmm(over_known(delta)),
                     "time_to_sa_final": stat("time_to_sa_final"), "ratio": stat("ratio"),
                     "steps_per_s": mmm(p["total_steps"] / p["wall"] for p in per_seed),
                     "steps_per_s_elapsed": mmm(p["total_steps"] / p["elapsed"] for p in per_seed if p["elapsed"])})
    return {"data": data, "metric": metric, "rows": rows}


def worker_scaling(runs: list[dict]) -> dict | None:
    """Total steps/s of K=2 on 2 workers side by side over K=2 queued on 1 worker (target >= 1.8)."""
    one = {r["seed"]: r for r in runs if r["key"] == "tpsm2-1w"}
    two = {r["seed"]: r for r in runs if r["key"] == "tpsm2"}
    seeds = sorted(set(one) & set(two))
    if not seeds:
        return None

    def rate(r: dict, on: str) -> float:
        seconds = r["curve"][-1]["wall"] if on == "wall" else r["summary"]["elapsed_seconds"]
        return sum(r["summary"]["steps"]) / seconds

    out = {"seeds": seeds}
    for on in ("wall", "elapsed"):
        out[f"one_worker_steps_per_s_{on}"] = mmm([rate(one[s], on) for s in seeds])
        out[f"two_workers_steps_per_s_{on}"] = mmm([rate(two[s], on) for s in seeds])
        out[f"ratio_{on}"] = mmm([rate(two[s], on) / rate(one[s], on) for s in seeds])
    return out


def table(summary: dict, scaling: dict | None) -> str:
    unit = "bits/dim" if summary["metric"] == "bpd" else "nats"
    lines = [f"== {summary['data']}: test NLL in {unit}, min/median/max over seeds (one value: all equal); "
             "wall-clock = the networks' training seconds, summed along each worker's queue, max over workers; "
             "elapsed = median of summary['elapsed_seconds'] (launch included) =="]
    head = (f"{'method':<38} {'seeds':>5}  {'final NLL':>23}  {'NLL @ equal wall':>23}  {'vs SA':>23}  "
            f"{'wall-clock s':>17}  {'elapsed s':>9}  {'t to SA final s':>17}  {'ratio (<=0.6) (reached)':>20}")
    lines += [head, "-" * len(head)]
    for r in summary["rows"]:
        main = r["role"] == "main"
        eq = fmt3(r["at_equal_wall"]) if main else ""
        delta = fmt3(r["delta_at_equal_wall"], "+.3f") if main and r["key"] != "sa-ddp" else ""
        elapsed = "SIMULATED" if r["simulated"] else format(r["elapsed"][1], ".1f")
        times = [p.get("time_to_sa_final") for p in r["per_seed"]]
        reached = sum(t is not None for t in times)
        ratio = f"{fmt3(r['ratio'], '.2f')} ({reached}/{len(times)})"
        lines.append(f"{r['view']:<38} {len(r['seeds']):>5}  {fmt3(r['final']):>23}  {eq:>23}  {delta:>23}  "
                     f"{fmt3(r['wall'], '.1f'):>17}  {elapsed:>9}  "
                     f"{fmt3(r['time_to_sa_final'], '.1f'):>17}  {ratio:>20}")
    lines.append("NLL @ equal wall: each curve at the shortest final wall-clock of the main methods of the same seed; "
                 "vs SA: difference to SA-DDP there (negative = better).")
    lines.append("t to SA final: first wall-clock at which the curve reaches SA-DDP's final NLL of the same seed "
                 "(linear between snapshots); ratio = that / SA-DDP's final wall-clock, min/median/max over "
                 "the seeds that reached it (reached = how many of them did).")
    steps = [r for r in summary["rows"] if r["role"] == "scaling" or r["key"] == "tpsm2"]
    if len(steps) > 1:
        lines.append(f"{'total steps/s (all networks)':<58} {'on wall-clock':>20}  {'on elapsed':>20}")
        for r in steps:
            el = "SIMULATED" if r["simulated"] else fmt3(r["steps_per_s_elapsed"], ".1f")
            lines.append(f"  {r['view']:<56} {fmt3(r['steps_per_s'], '.1f'):>20}  {el:>20}")
    if scaling:
        lines.append(f"1 -> 2 workers (K=2, total steps/s, seeds {scaling['seeds']}): on wall-clock "
                     f"{fmt3(scaling['ratio_wall'], '.2f')}x, on elapsed {fmt3(scaling['ratio_elapsed'], '.2f')}x "
                     "(target >= 1.8x)")
    return "\n".join(lines)


# -- picture --------------------------------------------------------------------------------------

def plot(data: str, runs: list[dict], metric: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ys = []
    for v in views(runs):
        c = colours.setdefault(v["view"], cycle[len(colours) % len(cycle)])
        label = v["view"] if v["seed"] == min(r["seed"] for r in runs if r["key"] == v["key"]) else None
        style = "--" if v["simulated"] else "-"
        xs = [p[v["xkey"]] for p in v["curve"]]
        y = [p[metric] for p in v["curve"]]
        ys += y
        axes[0].plot(xs, y, style, marker="o", ms=3, color=c, alpha=0.8, label=label)
        if not v["simulated"]:
            axes[1].plot([p["step"] for p in v["curve"]], y, style, marker="o", ms=3, color=c, alpha=0.8, label=label)
    sa_final = [r["curve"][-1][metric] for r in runs if r["key"] == "sa-ddp"]
    for ax in axes:
        if sa_final:
            ax.axhline(float(np.median(sa_final)), color="grey", lw=0.8, ls=":", label="SA-DDP final (median)")
        ax.set_ylabel("test NLL (bits/dim)" if metric == "bpd" else "test NLL (nats)")
        ax.grid(alpha=0.3)
    finite = np.array([y for y in ys if math.isfinite(y)])
    if len(finite):
        lo, hi = finite.min(), np.percentile(finite, 90)
        for ax in axes:
            ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    axes[0].set_xlabel("wall-clock of the run (s): networks' training seconds, queued per worker; dashed = SIMULATED")
    axes[1].set_xlabel("optimiser steps per network (step-count view)")
    axes[0].set_title(f"{data}: NLL against wall-clock")
    axes[1].set_title(f"{data}: NLL against steps")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke test (1 seed, checkerboard, 100 steps, width 64, K=4 and 8 scaling)")
    p.add_argument("--datasets", default="checkerboard,8gaussians,digits", help="comma-separated data sets")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for the main comparison")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps per network (2-D)")
    p.add_argument("--sa-steps", type=int, default=None, help="steps of the single network (default: --steps)")
    p.add_argument("--snapshot-every", type=int, default=300, help="EMA snapshot (curve point) every N steps")
    p.add_argument("--eval-n", type=int, default=500, help="held-out points per NLL evaluation (2-D)")
    p.add_argument("--nll-steps", type=int, default=50, help="RK4 steps of the NLL evaluator over [eps, 1]")
    p.add_argument("--sde", default="vp-psm", help="forward SDE (the paper's: vp-psm)")
    p.add_argument("--eps", type=float, default=1e-3, help="smallest diffusion time")
    p.add_argument("--partition", default="logsnr", choices=("logsnr", "equal"), help="interval partition")
    p.add_argument("--width", type=int, default=128, help="MLP width (2-D)")
    p.add_argument("--depth", type=int, default=3, help="MLP hidden layers")
    p.add_argument("--batch", type=int, default=512, help="batch per network per step (SA-DDP: split over workers)")
    p.add_argument("--n-data", type=int, default=None, help="2-D points to draw (default: the library's 10,000)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the evaluated weights")
    p.add_argument("--digits-steps", type=int, default=2000, help="steps per network on images (0: --steps)")
    p.add_argument("--digits-snapshot-every", type=int, default=500,
                   help="snapshot interval on images (0: --snapshot-every)")
    p.add_argument("--digits-arch", default="mlp", choices=("mlp", "unet"), help="network on images")
    p.add_argument("--digits-width", type=int, default=256, help="MLP width / U-Net channels on images")
    p.add_argument("--digits-batch", type=int, default=256, help="batch on images")
    p.add_argument("--digits-eval-n", type=int, default=200, help="held-out images per NLL evaluation")
    p.add_argument("--digits-hutchinson", type=int, default=0, help="Hutchinson probes on images (0: exact)")
    p.add_argument("--scaling-ks", default="4,8", help="K of the queued scaling runs on 2 workers ('none': no scaling)")
    p.add_argument("--scaling-datasets", default=None, help="data sets with scaling runs (default: the first)")
    p.add_argument("--scaling-seeds", type=int, default=1, help="seeds of the scaling runs (0..N-1)")
    p.add_argument("--with-sa-threads", action="store_true", help="also SA in one process with 2 threads, no DDP")
    p.add_argument("--eval-threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch threads of the evaluator")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of parallel.json, the PNGs and report.txt")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="keep run directories here (default: a temp dir, deleted)")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs of identical configuration in --runs-dir")
    p.add_argument("--report-only", type=Path, default=None, metavar="PARALLEL_JSON",
                   help="train nothing: regenerate the tables and pictures from a stored parallel.json (its "
                        "curves) into --out")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.seeds, args.steps, args.snapshot_every = "checkerboard", 1, 100, 50
        args.eval_n, args.nll_steps, args.width, args.batch = 200, 20, 64, 256
        args.scaling_ks, args.scaling_seeds = "4,8", 1
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.scaling_ks = None if args.scaling_ks.lower() in ("", "none", "0") else \
        [int(k) for k in args.scaling_ks.split(",")]
    args.scaling_datasets = args.datasets[:1] if args.scaling_datasets is None else \
        [d.strip() for d in args.scaling_datasets.split(",") if d.strip()]
    if args.seeds < 1 or args.steps < 1 or args.snapshot_every < 1:
        p.error("--seeds, --steps and --snapshot-every must be >= 1")
    return args


def report_dataset(data: str, runs: list[dict], metric: str, out: Path, say: Report) -> dict:
    """Statistics over seeds, the table and the picture of one data set's evaluated runs."""
    summary = summarise(data, runs, metric)
    scaling = worker_scaling(runs)
    say()
    say(table(summary, scaling))
    png = out / f"nll_vs_wallclock_{data}.png"
    plot(data, runs, metric, png)
    say(f"picture: {png}")
    return {"summary": summary, "worker_scaling": scaling}


def write_results(out: Path, results: dict, say: Report) -> None:
    (out / "parallel.json").write_text(json.dumps(json_safe(results), indent=1))
    (out / "report.txt").write_text("\n".join(say.lines) + "\n")
    say(f"raw numbers: {out / 'parallel.json'}")


def report_only(args: argparse.Namespace, command: str) -> int:
    """The report of a stored parallel.json, recomputed from its curves (nothing is trained or evaluated)."""
    results = stored_results(args.report_only)
    say = Report()
    say(f"command: {command}")
    say(f"report regenerated from the curves stored in {args.report_only}, written by: {results['command']}")
    for data, res in results["datasets"].items():
        say(f"\n[{data}]")
        res.update(report_dataset(data, res["runs"], res["settings"]["metric"], args.out, say))
    results["report_only"] = {"command": command, "source": str(args.report_only)}
    write_results(args.out, results, say)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line(__file__, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only is not None:
        return report_only(args, command)
    tmp = None
    if args.runs_dir is None:
        tmp = tempfile.mkdtemp(prefix="bench-parallel-")
        runs_dir = Path(tmp)
    else:
        runs_dir = args.runs_dir
    say = Report()
    machine = machine_info()
    say(f"command: {command}")
    say(f"machine: {machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['loadavg_start'])}")
    say(f"runs in: {runs_dir}")
    torch.set_num_threads(args.eval_threads)
    all_methods = methods_for(args)
    results = {"command": command, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": machine, "datasets": {}}
    t_all = time.perf_counter()
    try:
        for data in args.datasets:
            ds = data_settings(args, data)
            plan = []
            for seed in range(args.seeds):
                for m in all_methods:
                    if m.role == "scaling" and (data not in args.scaling_datasets or seed >= args.scaling_seeds):
                        continue
                    plan.append((m, seed))
            say(f"\n[{data}] {ds.arch} width {ds.width} depth {ds.depth}, batch {ds.batch}, {ds.steps} steps per "
                f"network (SA {ds.sa_steps}), snapshot every {ds.snapshot_every}, SDE {args.sde}, eps {args.eps}, "
                f"{len(plan)} runs")
            runs = []
            for m, seed in plan:
                cfg = train_config(args, ds, m, seed, runs_dir / data / m.key / f"seed{seed}")
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                summary, reused = train_run(cfg, args.reuse)
                say(f"  trained {m.label:<36} seed {seed}: wall {summary['max_network_seconds']:.1f} s per network "
                    f"(max), elapsed {summary['elapsed_seconds']:.1f} s, call {time.perf_counter() - t0:.1f} s, "
                    f"load {load:.2f}{' (reused)' if reused else ''}")
                runs.append({"key": m.key, "label": m.label, "role": m.role, "intervals": m.intervals,
                             "workers": m.workers, "threads": m.threads, "seed": seed, "run_dir": cfg.log.out,
                             "config": cfg.to_dict(), "queues": queues(m), "loadavg_before": load, "reused": reused,
                             "summary": {k: summary[k] for k in ("steps", "train_seconds", "max_network_seconds",
                                                                  "elapsed_seconds", "networks")}})
            sde = Config(sde=args.sde, eps=args.eps).sde.build()
            grid_edges = union_edges([Config.from_dict(r["config"]).edges(sde) for r in runs])
            say(f"  evaluator: {ds.eval_n} held-out examples per seed, RK4 {args.nll_steps} steps on one grid over "
                f"the {len(grid_edges) - 1} pieces of edges {[round(e, 5) for e in grid_edges]}, "
                f"{'exact divergence' if ds.hutchinson == 0 else f'Hutchinson {ds.hutchinson}'}, "
                f"{args.eval_threads} thread(s)")
            t0 = time.perf_counter()
            for r in runs:
                t1 = time.perf_counter()
                r["curve"] = evaluate_run(Path(r["run_dir"]), next(m for m in all_methods if m.key == r["key"]), ds,
                                          grid_edges, args)
                say(f"  evaluated {r['label']:<36} seed {r['seed']}: {len(r['curve'])} points, final "
                    f"{ds.metric} {r['curve'][-1][ds.metric]:.4f}, {time.perf_counter() - t1:.1f} s")
            say(f"  evaluated {sum(len(r['curve']) for r in runs)} snapshots in {time.perf_counter() - t0:.1f} s")
            results["datasets"][data] = {"settings": dataclasses.asdict(ds), "grid_edges": grid_edges,
                                         "runs": runs, **report_dataset(data, runs, ds.metric, args.out, say)}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - t_all
    say(f"\ntotal {results['total_seconds']:.0f} s; load average at end "
        f"{', '.join(f'{x:.2f}' for x in results['machine']['loadavg_end'])}")
    write_results(args.out, results, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
