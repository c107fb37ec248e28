"""The ``scorefast`` command line: a thin layer over the Python API.

Every bad input ends in one line on stderr and exit status 2; nothing of an existing run is touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from .errors import UserError, run_command

TRAIN_HELP = {
    "data": "built-in data set (moons, 8gaussians, checkerboard, swissroll, pinwheel, rings, offcentre, gaussian2d, "
            "digits, digits32, photos32) or a path (.npy/.npz, image folder, MNIST idx, CIFAR-10 batch)",
    "out": "run directory to create (refused if it exists, unless --resume)",
    "steps": "optimiser steps per network",
    "time_budget": "stop after this many seconds of training (precomputation counted, evaluation not)",
    "sde": "forward SDE: vp (beta 0.1..20), subvp, ve (geometric 0.01..50), vp-psm (beta=2ct, c=5), "
           "ve-power (g=5^t, the score-embedding code's)",
    "T": "end time of the forward diffusion, in (eps, 1]; T < 1 fits an auxiliary prior at T",
    "eps": "smallest diffusion time",
    "seed": "random seed (runs are deterministic on CPU for a given seed)",
    "n_data": "use only the first N examples of the data set (generated sets: how many to draw)",
    "batch_size": "examples per optimiser step (split across the data-parallel workers of a network)",
    "lr": "Adam learning rate",
    "warmup": "linear learning-rate warm-up steps (0: none)",
    "ema": "EMA decay of the weights used for sampling (with the usual (1+n)/(10+n) warm-up)",
    "grad_clip": "clip the gradient norm to this value (0: no clipping)",
    "param": "network output: eps (noise), score, or data (x0)",
    "arch": "network: mlp, unet, or auto (a U-Net for images, an MLP otherwise)",
    "width": "hidden width of the MLP / base channels of the U-Net (default 128 / 32)",
    "depth": "hidden layers of the MLP",
    "weighting": "loss weighting: epsilon (w=1), likelihood (w=g^2/sigma^2), inv_g2 (w=1/(2g^2))",
    "method": "training target: dsm (plain denoising score matching), fp-embed (transport embedding of a "
              "pre-computed Fokker-Planck score), fp-regress (regress on the grid score), empirical (regress on "
              "the closed-form KDE-mixture score, any dimension)",
    "eval_every": "steps between evaluations of the periodic metric (SWD, or the digits Frechet distance)",
    "eval_samples": "samples drawn for each evaluation (fixed seed)",
    "eval_steps": "sampler steps for each evaluation and for the final samples",
    "sampler": "sampler for the final samples: ode (probability flow), em (Euler-Maruyama), pc",
    "ckpt_every": "steps between checkpoints (a killed run loses at most this many)",
    "snapshot_every": "keep the EMA weights every N steps in snapshots/ (0: never), for quality-vs-time curves",
    "threads": "torch CPU threads in this process (default: all cores; 1 per worker when distributed)",
    "device": "auto (CUDA when present), cpu, cuda, cuda:N",
    "fp_grid": "Fokker-Planck grid points per dimension",
    "fp_steps": "Fokker-Planck time steps",
    "bandwidth": "KDE bandwidth of the initial density (default: Scott's rule for the grid methods, 0 - the "
                 "data's own distribution - for empirical)",
    "fp_variant": "sound (consistent scheme, default) or paper (the published construction, defects included)",
    "reference_size": "data points in the closed-form mixture target of --method empirical",
    "prior": "prior at T: standard (N(0, I)), gaussian (moment-matched), gmm, flow (zuko normalizing flow)",
    "prior_fit": "when to fit the prior: before, alongside (default, in a background thread) or after training",
    "prior_steps": "maximum optimisation steps of the prior fit (early-stopped on held-out data)",
    "intervals": "parallel score matching: number of time intervals, one network each",
    "edges": "explicit interval edges, e.g. 0,0.02,0.1,0.3,1 (0 stands for eps)",
    "partition": "how --intervals splits [eps, T]: logsnr (equal in log-SNR) or equal (equal in t)",
    "per_time_point": "N time-unconditioned networks, one per time point (the paper's extreme case)",
    "workers": "processes for torch.distributed training (intervals in parallel, DDP inside a group)",
    "max_restarts": "with --workers: let torchrun restart failed workers this many times (they resume)",
    "warm_start": "train a shared network this many steps first, then split it into the intervals",
}


def _add_train_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    from .trainer import TrainConfig
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra" or f.name in skip:
            continue
        default = f.default
        kind = {"int": int, "float": float, "str": str}
        typ = next((kind[k] for k in kind if k in str(f.type)), str)
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=typ, default=None,
                       metavar=f.name.upper().replace("_", "-"),
                       help=f"{TRAIN_HELP[f.name]} (default: {default})")


def _given(args: argparse.Namespace) -> dict:
    from .trainer import TrainConfig
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def cmd_train(args) -> int:
    from .trainer import TrainConfig, train
    given = _given(args)
    if "out" not in given:
        raise UserError("--out DIR is required")
    cfg = TrainConfig(**given)
    if "time_budget" in given and "steps" not in given:
        cfg.steps = None
    if args.prepare:
        from .trainer import prepare, prepare_run
        cfg.validate()
        prepare(prepare_run(cfg, False))
        print(f"prepared {cfg.out}; run it on every node with\n  torchrun --nnodes N --nproc-per-node M "
              f"--rdzv-backend c10d --rdzv-endpoint HOST:29500 -m scorefast.distributed {cfg.out}\n"
              f"then assemble, sample and evaluate with: scorefast train --out {cfg.out} --resume")
        return 0
    summary = train(cfg, resume=args.resume, given=set(given), progress=not args.quiet)
    print(f"run directory: {summary['run']}")
    print(f"  {summary['metric_name']} = {summary['metric']:.4f}   training {summary['train_seconds']:.1f} s"
          f"   steps {summary['steps']}")
    print(f"  pictures: {Path(summary['run']) / 'samples.png'}, {Path(summary['run']) / 'metrics.png'}")
    return 0


def _check_new_file(path: str, suffix: str) -> Path:
    out = Path(path)
    if out.suffix != suffix:
        raise UserError(f"--out '{out}': expected a {suffix} file name")
    if not out.parent.exists():
        raise UserError(f"--out '{out}': directory '{out.parent}' does not exist")
    return out


def cmd_sample(args) -> int:
    from .api import open_run
    from .checkpoint import atomic_write
    from .plots import plot_samples
    out = _check_new_file(args.out, ".npy")
    run = open_run(args.run)
    x = run.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, progress=not args.quiet)
    atomic_write(out, lambda f: np.save(f, x.numpy()))
    pic = out.with_suffix(".png")
    plot_samples(x.numpy(), pic, title=f"{run.config.data}: {args.sampler} sampler")
    print(f"wrote {out} ({tuple(x.shape)}) and {pic}")
    return 0


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        print(f"{k:>16}: {v:.5g}" if isinstance(v, float) else f"{k:>16}: {v}")


def cmd_nll(args) -> int:
    from .api import open_run
    run = open_run(args.run)
    _print_result(run.nll(args.data, n=args.n, steps=args.steps, hutchinson=args.hutchinson, seed=args.seed,
                          progress=not (args.quiet or args.json)), args.json)
    return 0


def cmd_evaluate(args) -> int:
    from .api import open_run
    run = open_run(args.run)
    _print_result(run.evaluate(args.data, n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                               progress=not (args.quiet or args.json)), args.json)
    return 0


def cmd_sweep_T(args) -> int:
    from .sweep import format_table, parse_Ts, sweep_T
    from .trainer import TrainConfig
    given = _given(args)
    if "out" not in given:
        raise UserError("--out DIR is required (one run per T is written under it)")
    Ts = parse_Ts(args.T)
    base = TrainConfig(**{**given, "T": 1.0})
    result = sweep_T(base, Ts, given["out"], n_eval=args.n_eval, progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
        print(f"picture: {Path(given['out']) / 'sweep.png'}   numbers: {Path(given['out']) / 'sweep.json'}")
    return 0


def cmd_fp(args) -> int:
    from .data import load_data
    from .methods.fokker_planck import solve_fp
    from .plots import plot_fp
    from .sde import make_sde
    out = _check_new_file(args.out, ".npz")
    ds = load_data(args.data, n=args.n_data, seed=args.seed)
    if ds.kind != "points":
        raise UserError(f"data '{args.data}': the grid solver takes points in 1-3 dimensions; for images use "
                        "--method empirical (any dimension) or --fp-variant paper")
    try:
        sde = make_sde(args.sde, T=args.T, eps=args.eps)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    sol = solve_fp(ds.x, sde, grid=args.grid, steps=args.steps, bandwidth=args.bandwidth, solver=args.solver,
                   progress=not args.quiet)
    sol.save(out)
    pic = out.with_suffix(".png")
    plot_fp(sol.axes, sol.t, sol.logp, sol.score, pic)
    print(f"wrote {out} (logp {sol.logp.shape}, score {sol.score.shape}, bandwidth {sol.bandwidth:.4g}) and {pic}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scorefast", description="Train score-based diffusion models fast: score "
                                "embedding, shorter diffusion times, parallel score matching.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a score model. Budgets: --steps and/or --time-budget.")
    _add_train_flags(t)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoints")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--prepare", action="store_true",
                   help="only check the configuration and write the run directory, for an external torchrun")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a trained run (writes FILE.npy and FILE.png)")
    s.add_argument("--run", required=True, help="run directory")
    s.add_argument("--n", type=int, default=1000, help="number of samples (default: 1000)")
    s.add_argument("--out", required=True, help="output .npy file (a .png picture is written beside it)")
    s.add_argument("--sampler", default="ode", help="ode, em or pc (default: ode)")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's, scaled by T)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sample)

    n = sub.add_parser("nll", help="test negative log-likelihood (nats; bits/dim for images)")
    n.add_argument("--run", required=True, help="run directory")
    n.add_argument("--data", required=True, help="data spec; the run's own data means its held-out split")
    n.add_argument("--n", type=int, default=1000, help="examples to evaluate (default: 1000)")
    n.add_argument("--steps", type=int, default=100, help="RK4 steps of the probability-flow ODE (default: 100)")
    n.add_argument("--hutchinson", type=int, default=None,
                   help="Hutchinson probes (default: exact divergence for d <= 64, else 1)")
    n.add_argument("--seed", type=int, default=0, help="seed of dequantisation and probes")
    n.add_argument("--json", action="store_true", help="print one JSON object (keys nll_nats, bpd, n, seconds)")
    n.add_argument("--quiet", action="store_true", help="no progress bar")
    n.set_defaults(func=cmd_nll)

    e = sub.add_parser("evaluate", help="sample-quality metrics against held-out data")
    e.add_argument("--run", required=True, help="run directory")
    e.add_argument("--data", required=True, help="data spec; the run's own data means its held-out split")
    e.add_argument("--n", type=int, default=2000, help="samples to draw (default: 2000)")
    e.add_argument("--sampler", default="ode", help="ode, em or pc")
    e.add_argument("--steps", type=int, default=None, help="sampler steps")
    e.add_argument("--seed", type=int, default=0, help="sampling seed")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)
    f = sub.add_parser("fp", help="solve the log-density Fokker-Planck equation on a grid (score embedding)",
                       description="Writes axes, t, alpha, sigma, bandwidth, logp and score arrays to FILE.npz "
                                   "(grid axes in 'ij' order) and a picture FILE.png.")
    f.add_argument("--data", required=True, help="data spec (points in 1-3 dimensions)")
    f.add_argument("--out", required=True, help="output .npz file")
    f.add_argument("--grid", type=int, default=181, help="grid points per dimension (default: 181)")
    f.add_argument("--steps", type=int, default=50, help="time steps (default: 50)")
    f.add_argument("--bandwidth", type=float, default=None, help="KDE bandwidth (default: Scott's rule)")
    f.add_argument("--sde", default="vp", help="forward SDE (default: vp)")
    f.add_argument("--T", type=float, default=1.0, help="end time (default: 1)")
    f.add_argument("--eps", type=float, default=1e-3, help="start time (default: 1e-3)")
    f.add_argument("--solver", default="lu", help="lu (SuperLU, default) or krylov (BiCGSTAB + LU preconditioner)")
    f.add_argument("--n-data", type=int, default=None, help="data points for the KDE (default: all)")
    f.add_argument("--seed", type=int, default=0, help="seed of generated data")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_fp)

    w = sub.add_parser("sweep-T", help="train one model per end time T and choose T by the validation ELBO",
                       description="Same budget for every T; NLL/ELBO parts, sample quality and sampling cost vs T.")
    w.add_argument("--T", default="auto", help="comma-separated end times, or auto (0.2,0.3,0.4,0.6,1.0); "
                   "the chosen T has the best validation ELBO")
    w.add_argument("--n-eval", type=int, default=1000, help="held-out examples for NLL and ELBO")
    w.add_argument("--json", action="store_true", help="print one JSON object")
    _add_train_flags(w, skip=("T",))
    w.add_argument("--quiet", action="store_true", help="no progress bars")
    w.set_defaults(func=cmd_sweep_T, resume=False, prepare=False)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
