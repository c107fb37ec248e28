"""The training recipe: held-out NLL against wall-clock for recipe candidates, side by side, plain DSM as
the reference.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe.py --datasets checkerboard,8gaussians \\
        --variants plain,default --seeds 3 --steps 4000 --out benchmarks/results/recipe

Every variant trains the same network (MLP 3x128 on 2-D, 3x256 on 8x8 digits), optimiser, batch and
step budget on the same data, with EMA snapshots every --snapshot-every steps; each snapshot is
evaluated by the same paired evaluator (the same held-out points, dequantisation and Hutchinson probes
for every snapshot of every variant: evaluate.test_nll with a fixed seed; exact divergence on 2-D,
bits/dim of dequantised digits with 2 probes). Per (data, seed): the final NLL, its difference from
plain DSM at equal steps, and the wall-clock (training seconds, the adaptive sampler's measurements
included) to plain DSM's final NLL by evaluate.time_to, as a ratio to plain DSM's own. min/median/max
over seeds. ``--report-only FILE`` rebuilds the report from a stored recipe.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from common import Report, command_line, curve_of, fmt3, machine_info, mmm, stored_results, train_run

from scorefast import Config, open_run
from scorefast.bench.report import json_safe
from scorefast.checkpoint import load_checkpoint
from scorefast.evaluate import test_nll, time_to
from scorefast.run import split_data

# name -> flags (on top of the data set's settings); 'default' is scorefast's default recipe
VARIANTS: dict[str, dict] = {
    "plain": {"recipe": "plain"},
    "default": {},
    "uniform-stratified": {"recipe": "plain", "time_sampler": "uniform", "stratified": True},
    "likelihood": {"recipe": "plain", "time_sampler": "likelihood"},
    "lognormal-edm": {"recipe": "plain", "time_sampler": "lognormal", "p_mean": -1.2, "p_std": 1.2},
    "lognormal-edm2": {"recipe": "plain", "time_sampler": "lognormal", "p_mean": -2.3, "p_std": 1.5},
    "bins-0.1": {"recipe": "plain", "time_sampler": "bins", "time_edges": "0.1", "time_shares": "0.5,0.5"},
    "adaptive": {"recipe": "plain", "time_sampler": "adaptive"},
    "min-snr": {"recipe": "plain", "weighting": "min-snr"},
    "edm": {"recipe": "plain", "param": "edm", "weighting": "edm", "time_sampler": "lognormal"},
    "power-ema": {"recipe": "plain", "ema_profile": "power", "ema_std": 0.1},
    "rsqrt": {"recipe": "plain", "lr_schedule": "rsqrt", "warmup": 200, "lr": 2e-3},
}

DATA = {  # data set -> (settings, evaluation)
    "digits": ({"arch": "mlp", "width": 256, "batch_size": 256}, {"n": 500, "hutchinson": 2, "key": "bpd"}),
}
TOY = ({"width": 128, "batch_size": 512}, {"n": 1000, "hutchinson": 0, "key": "nll_nats"})


def evaluate_snapshots(run: Path, data: str, every: int, steps: int, ev: dict, device) -> list[dict]:
    """The paired held-out NLL (or bits/dim) of every EMA snapshot and of the final weights."""
    r = open_run(run, device=str(device))
    held = r.heldout(data, ev["n"])
    points = []
    for step in [*range(every, steps, every), None]:
        snap = open_run(run, device=str(device), step=step) if step is not None else r
        state = load_checkpoint(run / "snapshots" / f"net-0-{step:08d}.pt") if step is not None else \
            load_checkpoint(run / "checkpoints" / "net-0.pt")
        out = test_nll(snap.model, snap.sde, held, snap.prior, device, steps=100, hutchinson=ev["hutchinson"], seed=7)
        points.append({"step": int(state["step"]), "wall": float(state["wall"]), "value": out[ev["key"]]})
    return points


def run_all(args, report: Report) -> dict:
    results: dict = {"command": command_line(__file__, args.argv), "machine": machine_info(), "args": vars(args),
                     "records": []}
    device = torch.device("cpu")
    jobs = [(d, v, s) for d in args.datasets for s in range(args.seeds) for v in args.variants]
    began = time.time()
    for i, (data, variant, seed) in enumerate(jobs):
        settings, ev = DATA.get(data, TOY)
        flags = {"data": data, "sde": args.sde, "steps": args.steps, "seed": seed, "depth": 3,
                 "eval_every": args.steps, "eval_samples": 200, "eval_steps": 10, "ckpt_every": args.steps,
                 "snapshot_every": args.snapshot_every, **settings, **VARIANTS[variant]}
        cfg = Config(out=str(args.out / "runs" / data / f"{variant}-seed{seed}"), **flags)
        done = time.time() - began
        eta = done / i * (len(jobs) - i) if i else math.nan
        print(f"[{i + 1}/{len(jobs)}] {data} {variant} seed {seed} (elapsed {done:.0f} s, about {eta:.0f} s left)",
              file=sys.stderr, flush=True)
        summary, reused = train_run(cfg, args.reuse)
        curve = evaluate_snapshots(Path(cfg.log.out), data, args.snapshot_every, args.steps, ev, device)
        results["records"].append({"data": data, "variant": variant, "seed": seed, "curve": curve,
                                   "train_seconds": summary["train_seconds"], "reused": reused,
                                   "key": ev["key"], "n_train": len(split_data(cfg)[0])})
    results["total_seconds"] = time.time() - began
    return results


def tables(results: dict, report: Report) -> None:
    records = results["records"]
    report(f"$ {results['command']}\n")
    for data in dict.fromkeys(r["data"] for r in records):
        rows = [r for r in records if r["data"] == data]
        key = rows[0]["key"]
        report(f"## {data} ({key}; min/median/max over {len({r['seed'] for r in rows})} seeds)\n")
        report(f"| variant | final {key} | vs plain at equal steps | training s | time to plain's final {key} "
               "(ratio to plain's) |")
        report("|---|---|---|---|---|")
        plain = {r["seed"]: r for r in rows if r["variant"] == "plain"}
        for variant in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["variant"] == variant]
            final = [r["curve"][-1]["value"] for r in mine]
            diff = [r["curve"][-1]["value"] - plain[r["seed"]]["curve"][-1]["value"] for r in mine
                    if r["seed"] in plain]
            ratios = []
            for r in mine:
                base = plain.get(r["seed"])
                if base is None:
                    continue
                target = base["curve"][-1]["value"]
                t_base = time_to(curve_of(base["curve"], "wall", "value"), target)
                t_mine = time_to(curve_of(r["curve"], "wall", "value"), target)
                ratios.append(None if t_mine is None or not t_base else t_mine / t_base)
            report(f"| {variant} | {fmt3(mmm(final))} | {fmt3(mmm(diff), '+.3f')} | "
                   f"{fmt3(mmm(r['train_seconds'] for r in mine), '.1f')} | {fmt3(mmm(ratios), '.2f')} |")
        report("")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="checkerboard,8gaussians", help="comma-separated data sets")
    p.add_argument("--variants", default="plain,default", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--snapshot-every", type=int, default=500)
    p.add_argument("--sde", default="vp")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/recipe"))
    p.add_argument("--reuse", action="store_true", help="reuse finished runs with the same configuration")
    p.add_argument("--report-only", type=Path, default=None, help="rebuild the report from a stored recipe.json")
    p.add_argument("--define", action="append", default=[], metavar="NAME=JSON",
                   help='an extra variant, e.g. lr4=\'{"recipe": "plain", "lr": 0.004}\' (repeatable)')
    args = p.parse_args(argv)
    for item in args.define:
        name, _, flags = item.partition("=")
        VARIANTS[name] = json.loads(flags)
    args.argv = argv
    args.datasets = args.datasets.split(",")
    args.variants = args.variants.split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(1)
    report = Report()
    if args.report_only:
        results = stored_results(args.report_only)
    else:
        results = run_all(args, report)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "recipe.json").write_text(json.dumps(json_safe({**results, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}), indent=1))
    tables(results, report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.txt").write_text("\n".join(report.lines) + "\n")


if __name__ == "__main__":
    main()
