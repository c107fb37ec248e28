"""The ``scorefast`` command line: a thin layer over the Python API.

The flags of ``train`` and ``sweep-T`` are generated from the configuration's fields (``config``), those of
``bench`` from ``bench.options.BenchOptions``'s by the same helper (``add_option_flag``); heavy modules (torch
and what needs it) are imported only once a command runs, so ``--help`` is instant. Every bad input ends in
one line on stderr and exit status 2; nothing of an existing run is touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .errors import UserError, run_command

SECTION_TITLES = {"recipe": "recipe", "data": "data", "sde": "forward SDE", "net": "network",
                  "objective": "training objective", "optim": "optimisation", "budget": "budget",
                  "log": "run directory and evaluation", "launch": "launch"}


def add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per configuration field, grouped by section (a plug-in slot's group is titled by its registry);
    values are parsed by the configuration."""
    from .config import FLAGS, SELECTORS, SLOTS, selector_help
    groups: dict[str, argparse._ArgumentGroup] = {}

    def group(section: str) -> argparse._ArgumentGroup:
        if section not in groups:
            reg = SLOTS.get(section)
            title = SECTION_TITLES[section] if reg is None else \
                f"{reg.title} (--{reg.flag.replace('_', '-')})" if reg.flag else reg.title
            groups[section] = p.add_argument_group(title)
        return groups[section]

    for flag, slot in SELECTORS.items():
        if flag not in skip:
            group(slot).add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None,
                                     metavar=flag.upper(), help=selector_help(slot).replace("%", "%%"))
    for flag, spec in FLAGS.items():
        if flag in skip:
            continue
        owners = "" if spec.section not in SLOTS or spec.section == "partition" else \
            f" [{', '.join(cls.name for cls, _ in spec.owners)}]"
        add_option_flag(group(spec.section), *spec.owners[0], note=owners)


def add_option_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup, owner: type, f: dataclasses.Field,
                    note: str = "") -> None:
    """The flag of a field declared with ``registry.option``: its help, its default when it has one to show, and
    ``note``; BOOL for a bool field, repeatable for a list. The value stays text for the field's ``coerce``."""
    from .registry import field_type, flag_of, help_of
    flag, kind = flag_of(f), field_type(owner, f)
    hidden = f.default is None or f.default is dataclasses.MISSING or f.metadata.get("selects")
    shown = "" if hidden else f" (default: {f.default})"
    kw = {"nargs": "?", "const": "true", "metavar": "BOOL"} if kind is bool else \
        {"metavar": f.metadata.get("metavar") or flag.upper().replace("_", "-"),
         **({"action": "append"} if kind is list else {})}
    p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None,
                   help=f"{help_of(f)}{shown}{note}".replace("%", "%%"), **kw)


def add_options_flags(p: argparse.ArgumentParser, owner: type) -> None:
    """One flag per field of a dataclass of options (declared with ``registry.option``)."""
    from .registry import options_of
    for f in options_of(owner):
        add_option_flag(p, owner, f)


def options_given(args: argparse.Namespace, owner: type) -> dict:
    """The flags of ``owner``'s fields given on the command line, by field name (as text, for its ``coerce``)."""
    from .registry import flag_of, options_of
    return {f.name: getattr(args, flag_of(f)) for f in options_of(owner) if getattr(args, flag_of(f)) is not None}


def config_flags(args: argparse.Namespace) -> dict:
    """The configuration flags given on the command line, after those of ``--config FILE`` (the command line wins)."""
    from .config import FLAGS, SELECTORS, read_config_file
    given = {k: v for k, v in vars(args).items() if (k in FLAGS or k in SELECTORS) and v is not None}
    if getattr(args, "config", None):
        given = {**read_config_file(args.config), **given}
    return given


def cmd_train(args) -> int:
    from .config import Config, to_toml
    cfg = Config(**config_flags(args))
    if args.print_config:  # resolved for the data's kind, so that the file reproduces the run
        if cfg.data_kind is None:  # data whose kind neither its name nor its header tells: reading it says why
            from .data import load_data
            load_data(cfg.data.spec, n=cfg.data.n, seed=cfg.optim.seed)
        cfg.validate()
        print(to_toml(cfg), end="")
        return 0
    if "out" not in cfg.given:
        raise UserError("--out DIR is required")
    if args.prepare:
        from .training.recipe import prepare
        path = prepare(cfg)
        print(f"prepared {path}; run it on every node with\n  torchrun --nnodes N --nproc-per-node M "
              f"--rdzv-backend c10d --rdzv-endpoint HOST:29500 -m scorefast.distributed {path}\n"
              f"then assemble, sample and evaluate with: scorefast train --out {path} --resume")
        return 0
    from .training.recipe import train
    summary = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"run directory: {summary['run']}")
    fid = f"   fid = {summary['fid']:.2f} (n = {summary['fid_samples']})" if "fid" in summary else ""
    print(f"  {summary['metric_name']} = {summary['metric']:.4f} (n = {summary['eval_samples']}){fid}   training "
          f"{summary['train_seconds']:.1f} s   steps {summary['steps']}")
    for note in (summary.get("metric_note"), summary.get("fid_note")):
        if note:
            print(f"  note: {note}")
    print(f"  pictures: {Path(summary['run']) / 'samples.png'}, {Path(summary['run']) / 'metrics.png'}")
    return 0


def _outputs(args, suffix: str, inputs=()) -> Path:
    """--out and the picture written beside it, checked by the one rule for every written file (nothing replaced
    without --overwrite, never an input of the command) before any work."""
    from .checkpoint import check_output
    out = check_output(args.out, suffix=suffix, overwrite=args.overwrite, inputs=inputs)
    check_output(out.with_suffix(".png"), "--out (its picture)", overwrite=args.overwrite, inputs=inputs)
    return out


def _open(args):
    """The run of a sample/nll/evaluate command, with its torch threads set."""
    import torch

    from .run import open_run
    if getattr(args, "batch_size", 1) < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return open_run(args.run, device=args.device, sigma_rel=args.sigma_rel)


def cmd_sample(args) -> int:
    import numpy as np

    from .checkpoint import atomic_write
    from .plots import plot_samples
    from .run import RunDir
    out = _outputs(args, ".npy", RunDir(args.run).inputs())
    run = _open(args)
    x = run.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, progress=not args.quiet,
                   schedule=args.schedule)
    atomic_write(out, lambda f: np.save(f, x.numpy()))
    pic = out.with_suffix(".png")
    plot_samples(x.numpy(), pic, title=f"{run.config.data.spec}: {args.sampler or run.config.log.sampler} sampler")
    print(f"wrote {out} ({tuple(x.shape)}) and {pic}")
    return 0


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        print(f"{k:>16}: {v:.5g}" if isinstance(v, float) else f"{k:>16}: {v}")


def cmd_nll(args) -> int:
    run = _open(args)
    _print_result(run.nll(args.data, n=args.n, steps=args.steps, hutchinson=args.hutchinson, seed=args.seed,
                          batch_size=args.batch_size, progress=not (args.quiet or args.json)), args.json)
    return 0


def cmd_evaluate(args) -> int:
    run = _open(args)
    _print_result(run.evaluate(args.data, n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                               progress=not (args.quiet or args.json), schedule=args.schedule,
                               metrics=args.metric), args.json)
    return 0


def cmd_ema(args) -> int:
    from .posthoc_ema import reconstruct
    for path in reconstruct(args.run, args.sigma_rel, overwrite=args.overwrite):
        print(f"wrote {path}")
    print(f"use it with: scorefast sample|nll|evaluate --run {args.run} --sigma-rel {args.sigma_rel:g}")
    return 0


def cmd_sweep_T(args) -> int:
    from .config import Config
    from .sweep import format_table, parse_Ts, sweep_T
    flags = config_flags(args)
    if "out" not in flags:
        raise UserError("--out DIR is required (one run per T is written under it)")
    Ts = parse_Ts(args.Ts)
    result = sweep_T(Config(**flags), Ts, flags["out"], n_eval=args.n_eval, progress=not (args.quiet or args.json),
                     overwrite=args.overwrite, inputs=[args.config] if args.config else [])
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
        print(f"picture: {Path(flags['out']) / 'sweep.png'}   numbers: {Path(flags['out']) / 'sweep.json'}")
    return 0


def cmd_fp(args) -> int:
    from .data import load_data
    from .methods.fokker_planck import solve_fp
    from .plots import plot_fp
    from .sde import make_sde
    out = _outputs(args, ".npz", [args.data])
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


def cmd_bench(args) -> int:
    from .bench import BenchOptions, run_bench
    if args.rejudge is not None:
        return cmd_rejudge(args)
    options = BenchOptions(**options_given(args, BenchOptions))
    return _bench_said(run_bench(options), Path(options.out))


def cmd_rejudge(args) -> int:
    """``bench --rejudge FOLDER``: the folder's own results judged again; any study flag beside it is refused."""
    from .bench import rejudge
    given = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
             if k not in ("rejudge", "func", "command") and v not in (None, False, [])]
    if given:
        raise UserError(f"--rejudge re-judges a folder's own results and takes no other flag (got {given[0]})")
    return _bench_said(rejudge(args.rejudge), Path(args.rejudge))


def _bench_said(results: dict, out: Path) -> int:
    """The verdict sentences of a study and where its report is."""
    for table in results["tables"]:
        for sentence in table["sentences"]:
            print(f"{table['data']}: {sentence.replace('**', '')}")
    print(f"report: {out / 'report.md'}   numbers: {out / 'results.json'}")
    return 0


def _bench_parser(sub, text: str) -> None:
    from .bench import BenchOptions
    b = sub.add_parser("bench", help=text, description="Train every method beside its baselines (plain DSM, the "
                       "default recipe) and its controls, seeds side by side, evaluate every snapshot with one "
                       "evaluator, and write DIR/report.md, DIR/results.json and pictures. Finished runs in "
                       "DIR/runs are reused, so the same command again only re-reports.")
    add_options_flags(b, BenchOptions)
    b.set_defaults(func=cmd_bench)


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (and of dequantisation and probes)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the run's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--sigma-rel", type=float, default=None, help="use the post-hoc EMA of this relative width "
                   "(written by scorefast ema) instead of the run's own EMA")


def _sampler_flags(p: argparse.ArgumentParser) -> None:
    from .choices import SAMPLERS, SCHEDULES
    p.add_argument("--sampler", default=None, help=f"{SAMPLERS.listing()} (default: the run's)")
    p.add_argument("--schedule", default=None, help=f"{SCHEDULES.listing()} (default: the sampler's own)")


def _overwrite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist (never an input of "
                   "the command); without it an existing file is an error")


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a score model. Budgets: --steps and/or --time-budget. Every flag can also "
                                   "be a key of a --config file (TOML or JSON); flags given here win.")
    t.add_argument("--config", metavar="FILE", help="read flags from a TOML/JSON file (top-level keys or [section] "
                   "tables; see --print-config)")
    t.add_argument("--print-config", action="store_true", help="print the resolved configuration as TOML and exit")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoints")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--prepare", action="store_true",
                   help="only check the configuration and write the run directory, for an external torchrun")
    add_config_flags(t)
    t.set_defaults(func=cmd_train)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the flags of a command are generated only when that command is asked for (fast --help)."""
    p = argparse.ArgumentParser(prog="scorefast", description="Train score-based diffusion models fast: score "
                                "embedding, shorter diffusion times, parallel score matching.")
    sub = p.add_subparsers(dest="command", required=True)
    helps = {"train": "train a model and write a run directory",
             "sample": "draw samples from a trained run (writes FILE.npy and FILE.png)",
             "nll": "test negative log-likelihood (nats; bits/dim for images)",
             "evaluate": "sample-quality metrics against held-out data",
             "fp": "solve the log-density Fokker-Planck equation on a grid (score embedding)",
             "sweep-T": "train one model per end time T and choose T by the validation ELBO",
             "ema": "rebuild an EMA of any length from a run's post-hoc EMA snapshots (EDM2)",
             "bench": "measure every method against its baselines and controls; writes a report"}
    for name, text in helps.items():
        if name != command:
            sub.add_parser(name, help=text, add_help=False)
    if command == "train":
        _train_parser(sub)
    elif command == "sample":
        s = sub.add_parser("sample", help=helps["sample"])
        _run_flags(s)
        s.add_argument("--n", type=int, default=1000, help="number of samples (default: 1000)")
        s.add_argument("--out", required=True, help="output .npy file (a .png picture is written beside it)")
        _sampler_flags(s)
        s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's, scaled by T)")
        _overwrite_flag(s)
        s.set_defaults(func=cmd_sample)
    elif command in ("nll", "evaluate"):
        e = sub.add_parser(command, help=helps[command])
        _run_flags(e)
        e.add_argument("--data", default=None, help="data spec (default: the run's own data); the run's own data "
                       "means its held-out split")
        e.add_argument("--json", action="store_true", help="print one JSON object")
        if command == "nll":
            e.add_argument("--n", type=int, default=1000, help="examples to evaluate (default: 1000)")
            e.add_argument("--steps", type=int, default=100, help="RK4 steps of the probability-flow ODE "
                           "(default: 100)")
            e.add_argument("--hutchinson", type=int, default=None,
                           help="Hutchinson probes (default: exact divergence for d <= 64, else 1)")
            e.add_argument("--batch-size", type=int, default=1000, help="examples integrated at once: memory grows "
                           "with it, not with --n (default: 1000)")
            e.set_defaults(func=cmd_nll)
        else:
            e.add_argument("--n", type=int, default=2000, help="samples to draw (default: 2000)")
            _sampler_flags(e)
            e.add_argument("--steps", type=int, default=None, help="sampler steps")
            from .choices import METRICS
            e.add_argument("--metric", action="append", default=None, choices=list(METRICS), metavar="NAME",
                           help="a metric to compute, repeatable (default: swd, mmd and the data's own): "
                           + METRICS.listing())
            e.set_defaults(func=cmd_evaluate)
    elif command == "fp":
        f = sub.add_parser("fp", help=helps["fp"], description="Writes axes, t, alpha, sigma, bandwidth, logp and "
                           "score arrays to FILE.npz (grid axes in 'ij' order) and a picture FILE.png.")
        f.add_argument("--data", required=True, help="data spec (points in 1-3 dimensions)")
        f.add_argument("--out", required=True, help="output .npz file")
        f.add_argument("--grid", type=int, default=181, help="grid points per dimension (default: 181)")
        f.add_argument("--steps", type=int, default=50, help="time steps (default: 50)")
        f.add_argument("--bandwidth", type=float, default=None, help="KDE bandwidth (default: Scott's rule)")
        from .choices import SDES
        f.add_argument("--sde", default=SDES.default, help=f"forward SDE: {SDES.listing()} (default: {SDES.default})")
        f.add_argument("--T", type=float, default=1.0, help="end time (default: 1)")
        f.add_argument("--eps", type=float, default=1e-3, help="start time (default: 1e-3)")
        f.add_argument("--solver", default="lu", help="lu (SuperLU, default) or krylov (BiCGSTAB + LU preconditioner)")
        f.add_argument("--n-data", type=int, default=None, help="data points for the KDE (default: all)")
        f.add_argument("--seed", type=int, default=0, help="seed of generated data")
        f.add_argument("--quiet", action="store_true", help="no progress bar")
        _overwrite_flag(f)
        f.set_defaults(func=cmd_fp)
    elif command == "sweep-T":
        w = sub.add_parser("sweep-T", help=helps["sweep-T"],
                           description="Same budget for every T; NLL/ELBO parts, sample quality and sampling cost "
                                       "vs T.")
        w.add_argument("--T", dest="Ts", default="auto", help="comma-separated end times, or auto "
                       "(0.2,0.3,0.4,0.6,1.0); the chosen T has the best validation ELBO")
        w.add_argument("--n-eval", type=int, default=1000, help="held-out examples for NLL and ELBO")
        w.add_argument("--json", action="store_true", help="print one JSON object")
        w.add_argument("--config", metavar="FILE", help="read flags from a TOML/JSON file")
        w.add_argument("--quiet", action="store_true", help="no progress bars")
        _overwrite_flag(w)
        add_config_flags(w, skip=("T",))
        w.set_defaults(func=cmd_sweep_T)
    elif command == "bench":
        _bench_parser(sub, helps["bench"])
    elif command == "ema":
        m = sub.add_parser("ema", help=helps["ema"], description="EDM2's post-hoc EMA: from the power EMAs a run kept "
                           "with --posthoc-ema-every (sigma_rel 0.05 and 0.10), solve for the average of relative "
                           "width --sigma-rel at the last snapshot and write it to RUN/ema/net-K-sigmaS.pt; sample, "
                           "nll and evaluate use it with --sigma-rel S.")
        m.add_argument("--run", required=True, help="run directory (trained with --posthoc-ema-every N)")
        m.add_argument("--sigma-rel", type=float, required=True, help="relative standard deviation of the averaging "
                       "profile, as a fraction of the run (EDM2 finds 0.05-0.15 best)")
        m.add_argument("--overwrite", action="store_true", help="replace an EMA of this width written before")
        m.set_defaults(func=cmd_ema)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
