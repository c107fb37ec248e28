"""Score embedding (METHODS.md section 1): time-to-quality against plain DSM, FP solve counted.

    python benchmarks/embedding.py --quick       # smoke test, under a minute (its numbers mean nothing)
    python benchmarks/embedding.py --report-only benchmarks/results/embedding/memorise/embedding.json --out /tmp/e
        # the tables, verdicts and pictures again from a stored embedding.json (its curves), nothing trained

    # one run of about 15-20 min on a quiet 2-core machine (estimated from per-step timings measured here):
    python benchmarks/embedding.py --threads 2 --runs-dir runs/bench-embedding --reuse \
        --steps 1500 --snapshot-every 150 --eval-n 3000 --sample-steps 40 \
        --mem-data photos32:1,digits32:3 --mem-methods dsm,paper,paper-off --mem-seeds 1 \
        --digits-seeds 2 --digits-steps 1000 --digits-snapshot-every 100

    # the fuller run, one part at a time (about 10, 15 and 6 min), each into its own --out:
    python benchmarks/embedding.py --threads 2 --runs-dir runs/bench-embedding --reuse --parts toy \
        --steps 2000 --snapshot-every 200 --eval-n 4000 --out benchmarks/results/embedding/toy
    python benchmarks/embedding.py --threads 2 --runs-dir runs/bench-embedding --reuse --parts memorise \
        --mem-data photos32:1,digits32:3 --mem-methods dsm,paper,paper-off --mem-seeds 2 \
        --out benchmarks/results/embedding/memorise
    python benchmarks/embedding.py --threads 2 --runs-dir runs/bench-embedding --reuse --parts digits \
        --digits-seeds 3 --digits-steps 1500 --digits-snapshot-every 150 --out benchmarks/results/embedding/digits

Timing needs a quiet machine: with --threads 2 on a 2-core machine that other processes load, a step costs
up to 30x more (measured here); on a shared machine use --threads 1.

Three parts (--parts toy,memorise,digits):

toy (moons, checkerboard, 8gaussians; VP; MLP; the issue's headline target: >= 5x)
  dsm, fp-embed, fp-regress and empirical are trained by ``scorefast.train`` with the SAME network,
  optimiser, batch, EMA, seed and step budget, keeping EMA snapshots every --snapshot-every steps. Every
  snapshot is evaluated offline by ONE evaluator: --eval-n samples from the SDE prior with a fixed seed,
  the RK4 probability-flow ODE with --sample-steps steps, SWD (500 fixed projections) against a fixed
  fresh sample of --eval-n points of the true distribution (the same for every method and seed).
  Wall-clock = the trainer's 'wall': the loss factory's precomputation (FP solve / reference set-up) +
  optimiser steps; evaluation and checkpointing excluded. Target of a seed = DSM's SWD at the end of its
  budget (its last snapshot); the time to reach it is ``evaluate.time_to``'s: linear between the last
  snapshot that misses it and the first that meets it (the first snapshot itself when it already meets it:
  resolution = one snapshot interval); speed-up = DSM's time / the method's time, per seed ('not reached' = 0x).

memorise (the paper's protocol at small scale)
  1 or 3 grayscale 32x32 images (photos32 and digits32, the first n images), a small U-Net; every variant
  uses the score-embedding code's SDE (ve-power, g = 5^t), the same steps, Adam, batch, EMA, no warm-up,
  the same sampler (RK4 PF-ODE, --mem-sample-steps, fixed seed, no 'conditional' start from 60-65 % of the
  images as in the published code) and the same network. The sampler starts from the moment-matched law
  of x_T (--mem-start moment: per pixel N(mean image, sigma_T^2 + pixel variance), the exact x_T law for
  one image) and ends with one Tweedie
  denoising step (--mem-denoise): the ve-power SDE's own prior N(0, 2.73^2) ignores the data mean, which
  that small noise range cannot wash out (with it even the EXACT score gives SSIM ~0.3-0.7 on digits32),
  and the plain PF-ODE ends at sigma(eps) = 0.03, whose leftover noise caps the exact score's SSIM at
  ~0.97. Variants (--mem-methods):
    dsm          plain DSM, weighting inv_g2: the paper's loss on un-embedded samples, t ~ U per example
                 (the baseline; for ONE image and bandwidth 0 'empirical' is the very same target)
    dsm-eps      plain DSM, weighting epsilon (the usual simple loss)
    paper        fp-embed --fp-variant paper (the published pipeline, weighting inv_g2)
    paper-off    the same pipeline, precomputation included, with every pre-computed score replaced by zero
                 (METHODS.md 1.3's 'embedding switched off' control: it keeps the pipeline's 10 stratified
                 time bins shared by the batch): the target 'fp-embed-off' that this script registers, whose
                 loss is fp-embed's with a zero score provider; its runs reopen only in a process that
                 imported this script)
    fp-embed     fp-embed --fp-variant sound (weighting inv_g2)
    empirical    regression on the closed-form KDE-mixture score (sound; weighting inv_g2)
  Quality = mean over --mem-eval-n fixed-seed samples (clamped to [-1, 1]) of the best-match SSIM to the
  training images; time to SSIM 0.90 / 0.95 interpolated as above; ratio = DSM's time / the variant's
  (the published 3.32x-13.44x are DDPM's time / the pipeline's); when DSM never reaches a level, its whole
  budget is used instead and the ratio is marked as a lower bound. 'paper' vs 'paper-off' isolates the
  embedding itself. The runs are driven through
  ``recipe.train_network`` (the trainer's own loop, precomputation counted the same way) on a run context
  built here, because ``run.split_data`` (and so ``recipe.context``) refuses a batch larger than the data
  set (a batch of 1 for one image), although the loop draws the batch with replacement.

digits (8x8 scikit-learn digits; VP)
  dsm vs empirical (and any --digits-methods); quality = digits Frechet distance of --digits-eval-n
  fixed-seed samples, clamped to [-1, 1] (unclamped, a few wild pixels dominate it: FD ~7000 at 1000
  steps), against the run's held-out split; target = DSM's final value; speed-up as above. The fraction of
  out-of-range pixels is kept with every curve point.

Outputs in --out: embedding.json (every raw number and curve), toy_swd_vs_wallclock.png,
memorise_ssim_vs_wallclock.png, digits_fd_vs_wallclock.png, report.txt (the tables, as printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the FP solve's progress bar (read when tqdm is imported)

import torch  # noqa: E402
from common import (  # noqa: E402
    Report,
    command_line,
    curve_of,
    fmt3,
    json_safe,
    machine_info,
    mmm,
    options_of,
    same_config,
    stored_results,
)

from scorefast import Config, train  # noqa: E402
from scorefast.checkpoint import load_checkpoint  # noqa: E402
from scorefast.data import Dataset, load_data  # noqa: E402
from scorefast.errors import UserError  # noqa: E402
from scorefast.evaluate import sample_steps, time_to  # noqa: E402
from scorefast.methods.partitions import Job  # noqa: E402
from scorefast.methods.targets import TARGETS  # noqa: E402
from scorefast.run import RunDir, resolve_device, split_data  # noqa: E402
from scorefast.sampling import sample  # noqa: E402
from scorefast.training.recipe import RunContext, train_network  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "embedding"
SAMPLE_SEED = 12345  # the sampling seed of every evaluation
REFERENCE_SEED = 987654  # the fresh true-distribution sample of the toy SWD
TOY_DATA = ("moons", "checkerboard", "8gaussians")
TOY_METHODS = ("dsm", "fp-embed", "fp-regress", "empirical")
PUBLISHED = (3.32, 13.44)  # the published speed-up range of the memorisation protocol
METRICS = {"toy": ("SWD", ".4f"), "digits": ("FD", ".3f")}  # the quality of a part that times to DSM's final


@dataclass(frozen=True)
class Variant:
    """One trained configuration: a name in the tables and the configuration flags it sets."""

    name: str
    method: str
    weighting: str
    fp_variant: str = "sound"
    note: str = ""


MEM_VARIANTS = {
    "dsm": Variant("dsm", "dsm", "inv_g2", note="plain DSM, inv_g2 weighting = pipeline with the embedding off"),
    "dsm-eps": Variant("dsm-eps", "dsm", "epsilon", note="plain DSM, epsilon weighting"),
    "paper": Variant("paper", "fp-embed", "inv_g2", "paper", note="fp-embed, published construction"),
    "paper-off": Variant("paper-off", "fp-embed-off", "inv_g2", "paper",
                         note="the published pipeline with every pre-computed score zero (control)"),
    "fp-embed": Variant("fp-embed", "fp-embed", "inv_g2", "sound", note="fp-embed, sound variant"),
    "empirical": Variant("empirical", "empirical", "inv_g2", "sound", note="closed-form KDE-mixture regression"),
}


# -- small helpers --------------------------------------------------------------------------------

def fmt_ratio(t) -> str:
    """Speed-ups min/median/max; 0 means the method never reached the target."""
    if t is None:
        return "-"
    parts = [("n.r." if x == 0 else ("inf" if math.isinf(x) else f"{x:.2f}x")) for x in t]
    return parts[0] if len(set(parts)) == 1 else "/".join(parts)


def time_to_target(rec: dict, key: str, target: float, higher_better: bool = False) -> float | None:
    """When (``key``: 'wall' or 'step') the record's curve first reaches ``target``, by ``evaluate.time_to``;
    None if never."""
    return time_to(curve_of(rec["curve"], key, "value"), target, lower_is_better=not higher_better)


def speedup(base_t: float | None, t: float | None) -> float:
    """base / method; 0 when the method never reaches the target (inf when only the baseline never does)."""
    if t is None:
        return 0.0
    if base_t is None:
        return math.inf
    return base_t / max(t, 1e-9)


def _fresh_dir(run: Path) -> None:
    if run.exists():
        if any(run.iterdir()) and not (run / "config.json").is_file():
            raise SystemExit(f"refusing to delete '{run}': it is not a scorefast run directory")
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)


def _finished(run: Path, cfg: Config) -> bool:
    ck = RunDir(run).checkpoint(0)
    return same_config(run, cfg) and ck.is_file() and bool(load_checkpoint(ck).get("done"))


def _guarded(fn) -> tuple[str | None, list[str]]:
    """Run a training call; any error (a UserError such as a method that does not apply to the data, a
    missing methods.embedding, a library bug) is returned as one line instead of stopping the benchmark
    (the run is then shown as FAILED with that line, and counts as not reaching any target). Also returns the
    distinct warnings it raised (e.g. an FP solve that did not converge)."""
    threads = torch.get_num_threads()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
            err = None
        except (UserError, ImportError) as exc:
            err = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a library bug in one run must not lose the others: recorded, shown as FAILED
            where = traceback.extract_tb(exc.__traceback__)[-1]
            err = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
        finally:
            torch.set_num_threads(threads)
    msgs = list(dict.fromkeys(f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}" for w in caught))
    return err, msgs


def train_run(cfg: Config, reuse: bool) -> tuple[bool, str | None, list[str]]:
    """Train one run with ``scorefast.train`` (or reuse a finished identical one): (reused, error, warnings)."""
    run = Path(cfg.log.out)
    if reuse and _finished(run, cfg) and (run / "summary.json").is_file():
        return True, None, []
    _fresh_dir(run)
    err, msgs = _guarded(lambda: train(cfg, progress=False))
    return False, err, msgs


def train_direct(cfg: Config, x: torch.Tensor, reuse: bool) -> tuple[bool, str | None, list[str]]:
    """One network through the trainer's own loop (``recipe.train_network``) on the given examples, with a
    run context built here instead of by ``recipe.context``, whose ``run.split_data`` refuses batches larger
    than the set (the loop draws with replacement). No periodic metric, as the benchmark evaluates offline."""
    run = RunDir(cfg.log.out)
    if reuse and _finished(run.path, cfg):
        return True, None, []
    _fresh_dir(run.path)
    cfg.validate()
    run.write_config(cfg)
    sde = cfg.sde.build()
    ds = Dataset(x.contiguous(), cfg.data.spec, "image", None)
    ctx = RunContext(cfg, run, sde, cfg.edges(sde), ds, ds, resolve_device(cfg.launch.device))

    def go():
        if cfg.launch.threads:
            torch.set_num_threads(cfg.launch.threads)
        train_network(ctx, Job(0, sde.eps, sde.T), evaluate=False, progress=False)

    err, msgs = _guarded(go)
    return False, err, msgs


def run_info(run: Path) -> dict:
    """Final step / wall and the loss factory's precomputation of a trained run."""
    ck = load_checkpoint(RunDir(run).checkpoint(0))
    pre = ck.get("precompute") or {}
    pre_s = float(pre.get("precompute_seconds", 0.0)) if isinstance(pre, dict) else 0.0
    steps = int(ck["step"])
    wall = float(ck["wall"])
    return {"steps": steps, "wall": wall, "precompute_seconds": pre_s,
            "ms_per_step": 1000.0 * (wall - pre_s) / max(steps, 1),
            "precompute_info": {k: v for k, v in pre.items() if isinstance(v, (int, float, str, bool))}
            if isinstance(pre, dict) else {}}


def snapshot_points(run: Path) -> list[tuple[int, float, int | None]]:
    """(step, wall, step-to-load) of every EMA snapshot in step order, plus the final weights when the last
    snapshot is not at the final step (step-to-load None = checkpoints/net-0.pt)."""
    pts = []
    for p in sorted((run / "snapshots").glob("net-0-*.pt")):
        step = int(p.stem.split("-")[-1])
        pts.append((step, float(load_checkpoint(p)["wall"]), step))
    info = run_info(run)
    if not pts or pts[-1][0] != info["steps"]:
        pts.append((info["steps"], info["wall"], None))
    return pts


class _Fixed:
    """A 'prior' that returns given start points (drawn on the CPU with the fixed seed, so the same start on
    every device)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def sample(self, n: int, generator=None) -> torch.Tensor:
        return self.x[:n]


class MomentStart:
    """x_T ~ N(mean(data), sigma_T^2 + var(data)) per coordinate: the moment-matched law of x_T for VE
    (alpha = 1). For ONE image it is the exact law of x_T. Used by the memorisation evaluator because the
    ve-power SDE's own prior N(0, sigma_T^2) (sigma_T = 2.73) ignores the data mean, which that small noise
    range cannot wash out (see the report)."""

    def __init__(self, data: torch.Tensor, sde):
        a = float(sde.alpha(torch.tensor(sde.T, dtype=torch.float64)))
        s = float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64)))
        self.mean = a * data.double().mean(0)
        self.std = (a * a * data.double().var(0, unbiased=False) + s * s).sqrt()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn((n, *self.mean.shape), generator=generator, dtype=torch.float64)
        return (self.mean + self.std * z).float()


class Evaluator:
    """ONE evaluator for every snapshot of a part: fixed seed, fixed sampler and steps, fixed reference,
    fixed start (``start='moment'``: ``MomentStart`` of ``targets``; 'prior': the SDE's own prior)."""

    def __init__(self, kind: str, n: int, steps_at_T1: int, device, reference: torch.Tensor,
                 targets: torch.Tensor | None = None, start: str = "prior", denoise: bool = False):
        self.kind, self.n, self.steps_at_T1, self.device = kind, n, steps_at_T1, device
        self.reference, self.targets, self.start, self.denoise = reference, targets, start, denoise
        self.seconds = 0.0
        self.count = 0

    def samples(self, model, sde, shape) -> torch.Tensor:
        g = torch.Generator(device="cpu").manual_seed(SAMPLE_SEED)
        if self.start == "moment":
            x = MomentStart(self.targets, sde).sample(self.n, generator=g).reshape(self.n, *shape).to(self.device)
        else:
            x = sde.prior_sampling((self.n, *shape), generator=g).to(self.device)
        x = sample(model, sde, self.n, tuple(shape), sampler="ode", steps=sample_steps(self.steps_at_T1, sde),
                   prior=_Fixed(x), device=self.device, progress=False)
        if self.denoise:  # one Tweedie step at t = eps: x0 = (x - sigma eps_theta(x, eps)) / alpha
            t = torch.full((self.n,), sde.eps, device=self.device, dtype=x.dtype)
            with torch.no_grad():
                x = (x - sde.sigma(t).reshape(-1, *[1] * (x.ndim - 1)) * model.eps(x, t)) \
                    / sde.alpha(t).reshape(-1, *[1] * (x.ndim - 1))
        return x.cpu()

    def __call__(self, run: Path, step: int | None, shape) -> dict:
        from scorefast import metrics
        t0 = time.perf_counter()
        rd = RunDir(run)
        cfg = rd.read_config()
        sde = cfg.sde.build()
        model = rd.load_model(cfg, sde, shape, step=step).to(self.device)
        x = self.samples(model, sde, shape)
        if self.kind == "swd":
            out = {"value": metrics.sliced_wasserstein(x.flatten(1), self.reference.flatten(1), seed=0)}
        elif self.kind == "digits_fd":  # clamped to the image range first: a few wild pixels otherwise dominate
            out = {"value": metrics.digits_frechet(x.clamp(-1, 1), self.reference),
                   "out_of_range": float((x.abs() > 1.05).float().mean())}
        else:  # ssim: best-match SSIM to the training images, clamped samples
            x = x.clamp(-1, 1)
            best, idx = metrics.best_match_ssim(x, self.targets, return_index=True)
            out = {"value": float(best.mean()), "ssim_min": float(best.min()),
                   "ssim_median": float(best.median()),
                   "covered": int(len(set(idx[best >= 0.9].tolist()))), "n_targets": int(len(self.targets))}
        if not math.isfinite(out["value"]):
            out["value"] = math.inf if self.kind != "ssim" else -math.inf
        self.seconds += time.perf_counter() - t0
        self.count += 1
        return out


def quality_curve(run: Path, shape, evaluate: Evaluator, stop, full: bool, known: dict | None = None) -> list[dict]:
    """Evaluate the snapshots of a run in step order; stop at the first point for which ``stop(value)``
    holds unless ``full``. ``known`` maps step -> an evaluation already made (the final one)."""
    curve = []
    for step, wall, load in snapshot_points(run):
        if known and step in known:
            ev = known[step]
        else:
            ev = evaluate(run, load, shape)
        curve.append({"step": step, "wall": wall, **ev})
        if not full and stop is not None and stop(ev["value"]):
            break
    return curve


def final_eval(run: Path, shape, evaluate: Evaluator) -> tuple[int, dict]:
    step, _, load = snapshot_points(run)[-1]
    return step, evaluate(run, load, shape)


# -- part 1: the 2-D toys -------------------------------------------------------------------------

def toy_config(args, data: str, method: str, seed: int, out: Path) -> Config:
    options = options_of(TARGETS, method, fp_grid=args.fp_grid, fp_steps=args.fp_steps, bandwidth=args.bandwidth,
                         reference_size=args.reference_size)
    return Config(data=data, out=str(out), steps=args.steps, sde=args.sde, eps=args.eps, seed=seed,
                  batch_size=args.batch, lr=args.lr, warmup=0, ema=args.ema, arch="mlp", width=args.width,
                  depth=args.depth, weighting=args.weighting, method=method, eval_every=args.steps, eval_samples=256,
                  eval_steps=args.sample_steps, ckpt_every=args.steps, snapshot_every=args.snapshot_every,
                  threads=args.threads, device=args.device, **options)


def compare_to_dsm(args, say, ev: Evaluator, data: str, shape, part: str, configs: dict[str, Config]) -> list[dict]:
    """Train the methods of one seed (``configs``), evaluate each final snapshot, then time every method's
    curve to DSM's final value; returns the seed's records (a failed run's record carries 'error')."""
    metric, fmt = METRICS[part]
    records, recs, known = [], {}, {}
    for method, cfg in configs.items():
        seed = cfg.optim.seed
        label = f"{data} seed {seed} {method:<10}"
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        reused, err, warns = train_run(cfg, args.reuse)
        rec = {"data": data, "method": method, "seed": seed, "run": cfg.log.out, "reused": reused,
               "loadavg_before": load, "elapsed_seconds": time.perf_counter() - t0, "warnings": warns}
        records.append(rec)
        for w in warns:
            say(f"  {label}: warning: {w}")
        if err:
            rec["error"] = err
            say(f"  {label}: FAILED: {err}")
            continue
        rec.update(run_info(Path(cfg.log.out)))
        step, fin = final_eval(Path(cfg.log.out), shape, ev)
        rec["final"] = fin["value"]
        known[method] = {step: fin}
        recs[method] = rec
        say(f"  {label}: {rec['wall']:7.1f} s wall (precompute {rec['precompute_seconds']:.1f} s, "
            f"{rec['ms_per_step']:.2f} ms/step){' (reused)' if reused else ''}, final {metric} "
            f"{rec['final']:{fmt}}, load {load:.2f}")
    base = recs.get("dsm")
    if base is None:
        return records
    target = base["final"]
    for method, rec in recs.items():
        rec["target"] = target
        rec["curve"] = quality_curve(Path(rec["run"]), shape, ev, lambda v: v <= target, args.full_curves,
                                     known[method])
    time_to_dsm(recs, part, say)
    return records


def time_to_dsm(recs: dict[str, dict], part: str, say) -> None:
    """The time and steps of every method of one seed (``recs``, by method, with curves) to its target,
    DSM's final value, and the speed-ups over DSM."""
    metric, fmt = METRICS[part]
    for rec in recs.values():
        rec["t_target"] = time_to_target(rec, "wall", rec["target"])
        rec["steps_target"] = time_to_target(rec, "step", rec["target"])
    base = recs["dsm"]
    for method, rec in recs.items():
        rec["speedup"] = speedup(base["t_target"], rec["t_target"])
        rec["step_ratio"] = speedup(base["steps_target"], rec["steps_target"])
        say(f"    {method:<10} target {metric} {rec['target']:{fmt}} (DSM final): reached at "
            f"{'never' if rec['t_target'] is None else format(rec['t_target'], '.1f') + ' s'}"
            f" / step {'-' if rec['steps_target'] is None else format(rec['steps_target'], '.0f')}"
            f" -> speed-up {fmt_ratio([rec['speedup']])} (steps {fmt_ratio([rec['step_ratio']])}), "
            f"{len(rec['curve'])} curve point(s)")


def run_part_toy(args, runs_dir: Path, device, say) -> dict:
    say(f"\n== part toy: {', '.join(args.toy_data)}; methods {', '.join(args.methods)}; seeds {args.seeds}; "
        f"MLP {args.width}x{args.depth}, batch {args.batch}, Adam {args.lr:g}, EMA {args.ema}, {args.steps} steps, "
        f"snapshot every {args.snapshot_every}; SDE {args.sde}, weighting {args.weighting}; FP grid {args.fp_grid}^2 x "
        f"{args.fp_steps} steps, bandwidth {args.bandwidth or 'Scott'}, reference size {args.reference_size}; "
        f"evaluator: {args.eval_n} samples, RK4 PF-ODE {args.sample_steps} steps, seed {SAMPLE_SEED}, SWD vs "
        f"{args.eval_n} fresh points ==")
    part = {}
    for data in args.toy_data:
        reference = load_data(data, n=args.eval_n, seed=REFERENCE_SEED).x
        ev = Evaluator("swd", args.eval_n, args.sample_steps, device, reference)
        records = []
        for seed in range(args.seeds):
            configs = {m: toy_config(args, data, m, seed, runs_dir / "toy" / data / m / f"seed{seed}")
                       for m in args.methods}
            records += compare_to_dsm(args, say, ev, data, (2,), "toy", configs)
        part[data] = {"records": records, "summary": summarise_toy(records, args.methods)}
    say(f"  evaluator: {ev.count} evaluations in {ev.seconds:.1f} s (last data set)")
    return part


def summarise_toy(records: list[dict], methods) -> list[dict]:
    rows = []
    for m in methods:
        rs = [r for r in records if r["method"] == m and "curve" in r]
        errs = [r["error"] for r in records if r["method"] == m and "error" in r]
        if not rs:
            rows.append({"method": m, "n": 0, "errors": errs})
            continue
        rows.append({"method": m, "n": len(rs), "errors": errs,
                     "precompute_seconds": mmm(r["precompute_seconds"] for r in rs),
                     "ms_per_step": mmm(r["ms_per_step"] for r in rs),
                     "wall": mmm(r["wall"] for r in rs), "final": mmm(r["final"] for r in rs),
                     "target": mmm(r["target"] for r in rs), "t_target": mmm(r["t_target"] for r in rs),
                     "steps_target": mmm(r["steps_target"] for r in rs),
                     "speedup": mmm(r["speedup"] for r in rs), "step_ratio": mmm(r["step_ratio"] for r in rs),
                     "reached": sum(r["t_target"] is not None for r in rs)})
    return rows


def toy_table(data: str, rows: list[dict], args, metric: str = "SWD") -> list[str]:
    head = (f"{'method':<11} {'seeds':>5} {'precompute s':>16} {'ms/step':>17} {'wall s':>19} {'final ' + metric:>20} "
            f"{'t to target s':>19} {'step to target':>19} {'reached':>7} {'speed-up (time)':>22} "
            f"{'(steps)':>20}")
    lines = [f"-- {data}: min/median/max over seeds (one value: all equal); target = DSM's final {metric} of the same "
             f"seed; speed-up = DSM's time to it / the method's (n.r. = never reached)",
             head, "-" * len(head)]
    for r in rows:
        if not r["n"]:
            lines.append(f"{r['method']:<11} {0:>5}  failed: {r['errors'][0] if r['errors'] else 'not run'}")
            continue
        lines.append(f"{r['method']:<11} {r['n']:>5} {fmt3(r['precompute_seconds'], '.1f'):>16} "
                     f"{fmt3(r['ms_per_step'], '.2f'):>17} {fmt3(r['wall'], '.1f'):>19} {fmt3(r['final'], '.4f'):>20} "
                     f"{fmt3(r['t_target'], '.1f'):>19} {fmt3(r['steps_target'], '.0f'):>19} "
                     f"{str(r['reached']) + '/' + str(r['n']):>7} {fmt_ratio(r['speedup']):>22} "
                     f"{fmt_ratio(r['step_ratio']):>20}")
    return lines


def toy_verdict(part: dict, args) -> list[str]:
    out = []
    goal = args.goal
    best = []
    for m in args.methods:
        if m == "dsm":
            continue
        per = []
        for data, res in part.items():
            row = next((r for r in res["summary"] if r["method"] == m), None)
            if row is None or not row["n"]:
                per.append((data, None))
                continue
            per.append((data, row["speedup"]))
        ok_all = [s is not None and s[0] >= goal for _, s in per]
        ok_med = [s is not None and s[1] >= goal for _, s in per]
        state = ("MET on every seed of every data set" if all(ok_all) else
                 f"met on the median only on {sum(ok_med)}/{len(per)} data set(s)" if any(ok_med) else "NOT met")
        nums = "; ".join(f"{d} {fmt_ratio(s)}" if s is not None else f"{d} failed" for d, s in per)
        out.append(f"VERDICT [toy] {m}: goal >= {goal:g}x (DSM's time to its own final SWD / the method's, FP solve "
                   f"counted): {state} -- speed-ups min/median/max: {nums}")
        best += [s[1] for _, s in per if s is not None]
    if best:
        out.append(f"VERDICT [toy]: best median speed-up of any pre-computed-score method on any data set: "
                   f"{max(best):.2f}x (goal {goal:g}x: {'met' if max(best) >= goal else 'NOT met'})")
    return out


# -- part 2: memorisation -------------------------------------------------------------------------

def parse_mem_data(spec: str) -> list[tuple[str, int]]:
    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, n = item.partition(":")
        out.append((name, int(n or 1)))
    return out


def mem_config(args, name: str, n: int, variant: Variant, seed: int, out: Path) -> Config:
    options = options_of(TARGETS, variant.method, fp_variant=variant.fp_variant, reference_size=args.reference_size,
                         bandwidth=args.mem_bandwidth)
    return Config(data=name, n_data=n, out=str(out), steps=args.mem_steps, sde=args.mem_sde, eps=args.eps, seed=seed,
                  batch_size=args.mem_batch, lr=args.mem_lr, warmup=0, ema=args.mem_ema, arch="unet",
                  width=args.mem_width, weighting=variant.weighting, method=variant.method,
                  eval_every=args.mem_steps, eval_samples=4, eval_steps=args.mem_sample_steps,
                  ckpt_every=args.mem_steps, snapshot_every=args.mem_snapshot_every, threads=args.threads,
                  device=args.device, **options)


def mem_times(rec: dict, ssim_targets: list[float]) -> None:
    """The wall-clock and steps at which a run's curve first reaches each SSIM level (None: never)."""
    for t in ssim_targets:
        rec[f"t_{t:g}"] = time_to_target(rec, "wall", t, higher_better=True)
        rec[f"step_{t:g}"] = time_to_target(rec, "step", t, higher_better=True)


def mem_ratios(records: list[dict], ssim_targets: list[float]) -> None:
    """DSM's time (and steps) to each SSIM level over every variant's, same seed; when DSM never reaches a
    level, its whole budget over the variant's time, marked as a lower bound."""
    for seed in sorted({r["seed"] for r in records}):
        base = next((r for r in records if r["seed"] == seed and r["variant"] == "dsm" and "curve" in r), None)
        for r in records:
            if r["seed"] != seed or "curve" not in r:
                continue
            for t in ssim_targets:
                r[f"ratio_{t:g}"] = None if base is None else speedup(base[f"t_{t:g}"], r[f"t_{t:g}"])
                r[f"step_ratio_{t:g}"] = None if base is None else speedup(base[f"step_{t:g}"], r[f"step_{t:g}"])
                r[f"ratio_{t:g}_lower_bound"] = False
                if base is not None and math.isinf(r[f"ratio_{t:g}"]):
                    r[f"ratio_{t:g}"] = base["wall"] / max(r[f"t_{t:g}"], 1e-9)
                    r[f"step_ratio_{t:g}"] = base["steps"] / max(r[f"step_{t:g}"], 1e-9)
                    r[f"ratio_{t:g}_lower_bound"] = True


def run_part_memorise(args, runs_dir: Path, device, say) -> dict:
    say(f"\n== part memorise: {', '.join(f'{d}:{n}' for d, n in args.mem_data)}; variants "
        f"{', '.join(args.mem_methods)}; seeds {args.mem_seeds}; U-Net width {args.mem_width}, batch {args.mem_batch}, "
        f"Adam {args.mem_lr:g} (no warm-up), EMA {args.mem_ema}, {args.mem_steps} steps, snapshot every "
        f"{args.mem_snapshot_every}; SDE {args.mem_sde}; evaluator: {args.mem_eval_n} samples, RK4 PF-ODE "
        f"{args.mem_sample_steps} steps from the "
        f"{'moment-matched x_T law' if args.mem_start == 'moment' else 'SDE prior'}"
        f"{', final Tweedie denoising step' if args.mem_denoise else ''}, seed {SAMPLE_SEED}, "
        f"mean best-match SSIM to the training "
        f"images; targets {', '.join(f'{t:g}' for t in args.ssim_targets)} ==")
    part = {}
    top = max(args.ssim_targets)
    for name, n in args.mem_data:
        key = f"{name}:{n}"
        images = load_data(name, n=n).x
        if len(images) < n:
            say(f"  {key}: only {len(images)} images available; skipped")
            continue
        ev = Evaluator("ssim", args.mem_eval_n, args.mem_sample_steps, device, images, targets=images,
                       start=args.mem_start, denoise=args.mem_denoise)
        records = []
        for seed in range(args.mem_seeds):
            for vname in args.mem_methods:
                v = MEM_VARIANTS[vname]
                cfg = mem_config(args, name, n, v, seed, runs_dir / "memorise" / f"{name}-{n}" / vname / f"seed{seed}")
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                reused, err, warns = train_direct(cfg, images, args.reuse)
                rec = {"data": key, "variant": vname, "method": v.method, "fp_variant": v.fp_variant,
                       "weighting": v.weighting, "seed": seed, "run": cfg.log.out,
                       "reused": reused, "loadavg_before": load, "elapsed_seconds": time.perf_counter() - t0,
                       "warnings": warns}
                for w in warns:
                    say(f"  {key} seed {seed} {vname:<10}: warning: {w}")
                if err:
                    rec["error"] = err
                    say(f"  {key} seed {seed} {vname:<10}: FAILED: {err}")
                    records.append(rec)
                    continue
                rec.update(run_info(Path(cfg.log.out)))
                rec["curve"] = quality_curve(Path(cfg.log.out), tuple(images.shape[1:]), ev, lambda q: q >= top,
                                             args.full_curves)
                mem_times(rec, args.ssim_targets)
                rec["best"] = max(p["value"] for p in rec["curve"])
                records.append(rec)
                reach = ", ".join(f"SSIM {t:g} at " + ("never" if rec[f"t_{t:g}"] is None else
                                                       f"{rec[f't_{t:g}']:.1f} s / step {rec[f'step_{t:g}']:.0f}")
                                  for t in args.ssim_targets)
                say(f"  {key} seed {seed} {vname:<10}: {rec['wall']:7.1f} s wall (precompute "
                    f"{rec['precompute_seconds']:.2f} s, {rec['ms_per_step']:.1f} ms/step)"
                    f"{' (reused)' if reused else ''}; {reach}; best SSIM {rec['best']:.3f} "
                    f"({len(rec['curve'])} point(s)), load {load:.2f}")
        mem_ratios(records, args.ssim_targets)
        part[key] = {"records": records, "summary": summarise_mem(records, args)}
    return part


def summarise_mem(records: list[dict], args) -> list[dict]:
    rows = []
    for vname in args.mem_methods:
        rs = [r for r in records if r["variant"] == vname and "curve" in r]
        errs = [r["error"] for r in records if r["variant"] == vname and "error" in r]
        row = {"variant": vname, "n": len(rs), "errors": errs}
        if rs:
            row.update({"precompute_seconds": mmm(r["precompute_seconds"] for r in rs),
                        "ms_per_step": mmm(r["ms_per_step"] for r in rs), "wall": mmm(r["wall"] for r in rs),
                        "best": mmm(r["best"] for r in rs)})
            for t in args.ssim_targets:
                row[f"t_{t:g}"] = mmm(r[f"t_{t:g}"] for r in rs)
                row[f"reached_{t:g}"] = sum(r[f"t_{t:g}"] is not None for r in rs)
                ratios = [r.get(f"ratio_{t:g}") for r in rs]
                row[f"ratio_{t:g}"] = mmm(ratios) if all(x is not None for x in ratios) else None
                row[f"bounds_{t:g}"] = sum(bool(r.get(f"ratio_{t:g}_lower_bound")) for r in rs)
                sr = [r.get(f"step_ratio_{t:g}") for r in rs]
                row[f"step_ratio_{t:g}"] = mmm(sr) if all(x is not None for x in sr) else None
        rows.append(row)
    return rows


def mem_table(key: str, rows: list[dict], args) -> list[str]:
    head = f"{'variant':<10} {'seeds':>5} {'precompute s':>14} {'ms/step':>17} {'best SSIM':>17}"
    for t in args.ssim_targets:
        head += f" {'t to ' + format(t, 'g') + ' s':>17} {'DSM/variant':>24}"
    lines = [f"-- {key}: min/median/max over seeds; time = precompute + training seconds to the mean best-match "
             f"SSIM; DSM/variant = DSM's (inv_g2) time / the variant's, same seed (n.r. = variant never reached it; "
             f"(k >=) = for k seeds DSM never reached it and its whole budget is used: a lower bound)",
             head, "-" * len(head)]
    for r in rows:
        if not r["n"]:
            lines.append(f"{r['variant']:<10} {0:>5}  failed: {r['errors'][0] if r['errors'] else 'not run'}")
            continue
        line = (f"{r['variant']:<10} {r['n']:>5} {fmt3(r['precompute_seconds'], '.2f'):>14} "
                f"{fmt3(r['ms_per_step'], '.1f'):>17} {fmt3(r['best'], '.3f'):>17}")
        for t in args.ssim_targets:
            bd = f" ({r[f'bounds_{t:g}']} >=)" if r[f"bounds_{t:g}"] else ""
            line += f" {fmt3(r[f't_{t:g}'], '.1f'):>17} {fmt_ratio(r[f'ratio_{t:g}']) + bd:>24}"
        lines.append(line)
    return lines


def mem_verdict(part: dict, args) -> list[str]:
    out = []
    lo, hi = PUBLISHED
    for key, res in part.items():
        rows = {r["variant"]: r for r in res["summary"]}
        for vname in args.mem_methods:
            if vname == "dsm" or vname not in rows or not rows[vname]["n"]:
                continue
            r = rows[vname]
            parts = []
            for t in args.ssim_targets:
                ratio = r[f"ratio_{t:g}"]
                if ratio is None:
                    parts.append(f"SSIM {t:g}: no DSM baseline")
                    continue
                med = ratio[1]
                nb = r[f"bounds_{t:g}"]
                bound = f"; {nb} of {r['n']} seed(s) a lower bound: DSM never reached it in its budget" if nb else ""
                if med == 0:
                    where = "variant did not reach it (median)"
                elif med > hi:
                    where = f"above the published {lo}-{hi}x"
                elif med >= lo:
                    where = f"within the published {lo}-{hi}x"
                elif med > 1.1:
                    where = f"faster than DSM but below the published {lo}-{hi}x"
                elif med >= 0.9:
                    where = "within +-10% of DSM"
                else:
                    where = "SLOWER than DSM"
                parts.append(f"SSIM {t:g}: {fmt_ratio(ratio)} ({where}{bound}; "
                             f"reached {r[f'reached_{t:g}']}/{r['n']}, DSM "
                             f"{rows['dsm'][f'reached_{t:g}'] if 'dsm' in rows and rows['dsm']['n'] else 0}/"
                             f"{rows['dsm']['n'] if 'dsm' in rows else 0})")
            out.append(f"VERDICT [memorise {key}] {vname} vs DSM (same {args.mem_sde} noise range, steps, optimiser, "
                       f"sampler, network; precompute counted): " + "; ".join(parts))
        recs = [r for r in res["records"] if "curve" in r]
        on = {r["seed"]: r for r in recs if r["variant"] == "paper"}
        off = {r["seed"]: r for r in recs if r["variant"] == "paper-off"}
        seeds = sorted(set(on) & set(off))
        if seeds:
            parts = []
            for t in args.ssim_targets:
                ratios = [speedup(off[s][f"t_{t:g}"], on[s][f"t_{t:g}"]) for s in seeds]
                both = sum(on[s][f"t_{t:g}"] is not None and off[s][f"t_{t:g}"] is not None for s in seeds)
                parts.append(f"SSIM {t:g}: {fmt_ratio(mmm(ratios))} (both reached on {both}/{len(seeds)} seed(s))")
            out.append(f"VERDICT [memorise {key}] the embedding itself (paper-off's time / paper's, same pipeline, "
                       f"scores zeroed; > 1 = the embedding helps): " + "; ".join(parts))
    return out


# -- part 3: digits -------------------------------------------------------------------------------

def digits_config(args, method: str, seed: int, out: Path) -> Config:
    options = options_of(TARGETS, method, reference_size=args.reference_size, bandwidth=args.digits_bandwidth)
    return Config(data="digits", out=str(out), steps=args.digits_steps, sde=args.sde, eps=args.eps, seed=seed,
                  batch_size=args.digits_batch, lr=args.lr, warmup=0, ema=args.ema, arch=args.digits_arch,
                  width=args.digits_width, depth=args.depth, weighting=args.weighting, method=method,
                  eval_every=args.digits_steps, eval_samples=256, eval_steps=args.sample_steps,
                  ckpt_every=args.digits_steps, snapshot_every=args.digits_snapshot_every, threads=args.threads,
                  device=args.device, **options)


def run_part_digits(args, runs_dir: Path, device, say) -> dict:
    say(f"\n== part digits: methods {', '.join(args.digits_methods)}; seeds {args.digits_seeds}; "
        f"{args.digits_arch} width {args.digits_width}, batch {args.digits_batch}, Adam {args.lr:g}, EMA {args.ema}, "
        f"{args.digits_steps} steps, snapshot every {args.digits_snapshot_every}; SDE {args.sde}, weighting "
        f"{args.weighting}, reference size {args.reference_size}; evaluator: {args.digits_eval_n} samples, RK4 PF-ODE "
        f"{args.sample_steps} steps, seed {SAMPLE_SEED}, digits Frechet distance vs the held-out split ==")
    records = []
    for seed in range(args.digits_seeds):
        configs = {m: digits_config(args, m, seed, runs_dir / "digits" / m / f"seed{seed}")
                   for m in args.digits_methods}
        first = next(iter(configs.values()))
        ev = Evaluator("digits_fd", args.digits_eval_n, args.sample_steps, device, split_data(first)[1].x)
        records += compare_to_dsm(args, say, ev, "digits", (1, 8, 8), "digits", configs)
    return {"digits": {"records": records, "summary": summarise_toy(records, args.digits_methods)}}


def digits_verdict(part: dict, args) -> list[str]:
    out = []
    base = next((x for x in part["digits"]["summary"] if x["method"] == "dsm" and x["n"]), None)
    for r in part["digits"]["summary"]:
        if r["method"] == "dsm" or base is None:
            continue
        if not r["n"]:
            out.append(f"VERDICT [digits] {r['method']}: failed ({r['errors'][0] if r['errors'] else 'not run'})")
            continue
        out.append(f"VERDICT [digits] {r['method']}: wall-clock to DSM's final digits FD "
                   f"{fmt3(r['target'], '.3f')}: {fmt3(r['t_target'], '.1f')} s (reached {r['reached']}/{r['n']}) vs "
                   f"DSM's {fmt3(base['t_target'], '.1f')} s -> speed-up {fmt_ratio(r['speedup'])} "
                   f"(per step: {fmt_ratio(r['step_ratio'])}; "
                   f"{fmt3(r['ms_per_step'], '.2f')} ms/step)")
    return out


# -- pictures -------------------------------------------------------------------------------------

def plot_curves(part: dict, path: Path, key: str, ylabel: str, log: bool, title: str,
                hlines: list[float] | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(part)
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.3), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes[0], names):
        colours: dict[str, str] = {}
        seeds = sorted({r["seed"] for r in part[name]["records"]})
        for r in part[name]["records"]:
            if not r.get("curve"):
                continue
            label = r[key]
            c = colours.setdefault(label, cycle[len(colours) % len(cycle)])
            ax.plot([p["wall"] for p in r["curve"]], [p["value"] for p in r["curve"]], marker="o", ms=3, color=c,
                    alpha=0.85, ls="-" if r["seed"] == seeds[0] else "--",
                    label=label if r["seed"] == seeds[0] else None)
            if r.get("target") is not None and r[key] == "dsm":
                ax.axhline(r["target"], color="grey", lw=0.7, ls=":")
        for h in hlines or []:
            ax.axhline(h, color="grey", lw=0.7, ls=":")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("wall-clock (s): precomputation + training")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name}: {title}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke test (1 seed; moons, photos32:1 and digits; few steps, small networks and "
                        "evaluations; overrides those sizes): checks the pipeline, its numbers mean nothing")
    p.add_argument("--parts", default="toy,memorise,digits", help="which parts: toy, memorise, digits")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 on the toys")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps per toy run (every method)")
    p.add_argument("--snapshot-every", type=int, default=250, help="EMA snapshot (curve point) every N steps (toys)")
    p.add_argument("--eval-n", type=int, default=5000,
                   help="toy evaluator: samples per snapshot and size of the fixed true-distribution reference")
    p.add_argument("--sample-steps", type=int, default=50, help="RK4 PF-ODE steps of the evaluator (toys, digits)")
    p.add_argument("--toy-data", default=",".join(TOY_DATA), help="2-D data sets")
    p.add_argument("--methods", default=",".join(TOY_METHODS), help="methods on the toys (dsm is always added)")
    p.add_argument("--goal", type=float, default=5.0, help="the issue's speed-up goal on the toys")
    p.add_argument("--sde", default="vp", help="forward SDE of the toys and digits")
    p.add_argument("--eps", type=float, default=1e-3, help="smallest diffusion time")
    p.add_argument("--weighting", default="epsilon", help="loss weighting of the toys and digits")
    p.add_argument("--width", type=int, default=128, help="MLP width (toys)")
    p.add_argument("--depth", type=int, default=3, help="MLP hidden layers")
    p.add_argument("--batch", type=int, default=512, help="batch (toys)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (toys, digits)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (toys, digits; with the trainer's warm-up)")
    p.add_argument("--fp-grid", type=int, default=129, help="FP grid points per dimension")
    p.add_argument("--fp-steps", type=int, default=48, help="FP time steps")
    p.add_argument("--bandwidth", type=float, default=None, help="KDE bandwidth on the toys (default: Scott)")
    p.add_argument("--reference-size", type=int, default=1024, help="reference points of method empirical")
    # memorisation
    p.add_argument("--mem-data", default="photos32:1,photos32:3,digits32:1,digits32:3",
                   help="NAME:N items: the first N images of a built-in image set")
    p.add_argument("--mem-methods", default="dsm,paper,paper-off,empirical",
                   help=f"variants (dsm is always added): {', '.join(MEM_VARIANTS)}")
    p.add_argument("--mem-seeds", type=int, default=2, help="seeds per memorisation configuration")
    p.add_argument("--mem-steps", type=int, default=1200, help="optimiser steps per memorisation run")
    p.add_argument("--mem-snapshot-every", type=int, default=150, help="EMA snapshot every N steps")
    p.add_argument("--mem-width", type=int, default=16, help="U-Net base channels")
    p.add_argument("--mem-batch", type=int, default=16, help="batch (drawn with replacement from the N images)")
    p.add_argument("--mem-lr", type=float, default=1e-3, help="Adam learning rate (no warm-up)")
    p.add_argument("--mem-ema", type=float, default=0.999, help="EMA decay of the evaluated weights")
    p.add_argument("--mem-sde", default="ve-power", help="SDE of every memorisation variant")
    p.add_argument("--mem-bandwidth", type=float, default=None, help="KDE bandwidth (default: the method's)")
    p.add_argument("--mem-eval-n", type=int, default=8, help="samples per SSIM evaluation")
    p.add_argument("--mem-sample-steps", type=int, default=50, help="RK4 PF-ODE steps of the SSIM evaluator")
    p.add_argument("--ssim-targets", default="0.90,0.95", help="SSIM levels to time")
    p.add_argument("--mem-start", default="moment", choices=("moment", "prior"),
                   help="start of the memorisation sampler: 'moment' = N(mean image, sigma_T^2 + pixel variance) "
                        "(the exact x_T law for one image), 'prior' = the SDE's N(0, sigma_T^2)")
    p.add_argument("--mem-denoise", action=argparse.BooleanOptionalAction, default=True,
                   help="end the memorisation sampler with one Tweedie denoising step at t = eps")
    # digits
    p.add_argument("--digits-methods", default="dsm,empirical", help="methods on the 8x8 digits")
    p.add_argument("--digits-seeds", type=int, default=2, help="seeds on the digits")
    p.add_argument("--digits-steps", type=int, default=2000, help="optimiser steps per digits run")
    p.add_argument("--digits-snapshot-every", type=int, default=250, help="EMA snapshot every N steps (digits)")
    p.add_argument("--digits-arch", default="mlp", choices=("mlp", "unet"), help="network on the digits")
    p.add_argument("--digits-width", type=int, default=256, help="MLP width / U-Net channels on the digits")
    p.add_argument("--digits-batch", type=int, default=256, help="batch on the digits")
    p.add_argument("--digits-eval-n", type=int, default=2000, help="samples per digits Frechet evaluation")
    p.add_argument("--digits-bandwidth", type=float, default=None, help="KDE bandwidth on the digits")
    # common
    p.add_argument("--full-curves", action="store_true",
                   help="evaluate every snapshot (default: stop a curve at the first point reaching the target)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. OMP_NUM_THREADS)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of embedding.json, PNGs, report.txt")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="where the runs live (default: a temporary directory, removed at the end)")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs of identical configuration in --runs-dir")
    p.add_argument("--report-only", type=Path, default=None, metavar="EMBEDDING_JSON",
                   help="train nothing: regenerate the tables, verdicts and pictures from a stored embedding.json "
                        "(its curves) into --out")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.mem_seeds, args.digits_seeds = 1, 1, 1
        args.toy_data = "moons"
        args.steps, args.snapshot_every, args.eval_n, args.sample_steps = 600, 150, 2000, 30
        args.width, args.batch = 64, 256
        args.fp_grid, args.fp_steps, args.reference_size = 65, 16, 256
        args.mem_data = "photos32:1"
        args.mem_steps, args.mem_snapshot_every, args.mem_batch, args.mem_width = 150, 50, 8, 8
        args.mem_eval_n, args.mem_sample_steps = 4, 20
        args.digits_steps, args.digits_snapshot_every, args.digits_eval_n = 400, 100, 500
        args.digits_width, args.digits_batch = 128, 128
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    bad = [x for x in args.parts if x not in ("toy", "memorise", "digits")]
    if bad:
        p.error(f"--parts: unknown {bad}; choose from toy, memorise, digits")
    args.toy_data = [d.strip() for d in args.toy_data.split(",") if d.strip()]
    args.methods = list(dict.fromkeys(["dsm"] + [m.strip() for m in args.methods.split(",") if m.strip()]))
    if [m for m in args.methods if m not in TOY_METHODS]:
        p.error(f"--methods: choose from {', '.join(TOY_METHODS)}")
    args.digits_methods = list(dict.fromkeys(["dsm"] + [m.strip() for m in args.digits_methods.split(",")
                                                          if m.strip()]))
    if [m for m in args.digits_methods if m not in TOY_METHODS]:
        p.error(f"--digits-methods: choose from {', '.join(TOY_METHODS)}")
    args.mem_methods = list(dict.fromkeys(["dsm"] + [m.strip() for m in args.mem_methods.split(",") if m.strip()]))
    if [m for m in args.mem_methods if m not in MEM_VARIANTS]:
        p.error(f"--mem-methods: choose from {', '.join(MEM_VARIANTS)}")
    try:
        args.mem_data = parse_mem_data(args.mem_data)
        args.ssim_targets = sorted(float(t) for t in args.ssim_targets.split(",") if t.strip())
    except ValueError:
        p.error("--mem-data NAME:N,... / --ssim-targets numbers")
    if args.reuse and args.runs_dir is None:
        p.error("--reuse needs --runs-dir (the default runs directory is temporary)")
    for name in ("seeds", "steps", "snapshot_every", "eval_n", "sample_steps", "mem_seeds", "mem_steps",
                 "mem_snapshot_every", "mem_eval_n", "mem_sample_steps", "digits_seeds", "digits_steps",
                 "digits_snapshot_every", "digits_eval_n"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def report_part(name: str, part: dict, args, out: Path, say) -> list[str]:
    """The tables and the picture of one part (toy, memorise or digits); returns its verdict lines."""
    say()
    if name == "toy":
        for data, res in part.items():
            for line in toy_table(data, res["summary"], args):
                say(line)
            say()
        plot_curves(part, out / "toy_swd_vs_wallclock.png", "method", "SWD to the true distribution",
                    True, "SWD vs wall-clock (seed 0 solid; dotted: DSM's final = targets)")
        return toy_verdict(part, args)
    if name == "memorise":
        for key, res in part.items():
            for line in mem_table(key, res["summary"], args):
                say(line)
            say()
        plot_curves(part, out / "memorise_ssim_vs_wallclock.png", "variant",
                    "mean best-match SSIM to the training images", False,
                    "SSIM vs wall-clock (seed 0 solid; dotted: targets)", hlines=args.ssim_targets)
        return mem_verdict(part, args)
    for line in toy_table("digits (digits Frechet distance, clamped samples)", part["digits"]["summary"], args,
                          metric="FD"):
        say(line)
    say()
    plot_curves(part, out / "digits_fd_vs_wallclock.png", "method", "digits Frechet distance", True,
                "digits FD vs wall-clock (dotted: DSM's final = targets)")
    return digits_verdict(part, args)


def retime_part(name: str, part: dict, args, say) -> None:
    """The times to the targets, the speed-ups and the summaries of a stored part, again from its curves."""
    for res in part.values():
        records = res["records"]
        if name == "memorise":
            for rec in records:
                if "curve" in rec:
                    mem_times(rec, args.ssim_targets)
            mem_ratios(records, args.ssim_targets)
            res["summary"] = summarise_mem(records, args)
            continue
        for seed in sorted({r["seed"] for r in records}):
            recs = {r["method"]: r for r in records if r["seed"] == seed and "curve" in r}
            if "dsm" in recs:
                say(f"  {records[0]['data']} seed {seed}:")
                time_to_dsm(recs, name, say)
        res["summary"] = summarise_toy(records, args.methods if name == "toy" else args.digits_methods)


def write_results(out: Path, out_json: dict, say) -> None:
    (out / "embedding.json").write_text(json.dumps(json_safe(out_json), indent=1, default=str))
    say(f"raw numbers: {out / 'embedding.json'}; pictures: {out}/*.png")
    (out / "report.txt").write_text("\n".join(say.lines) + "\n")


def report_only(args: argparse.Namespace, command: str) -> int:
    """The report of a stored embedding.json, its times to the targets recomputed from its curves (with the
    arguments of the run that wrote it; nothing is trained or evaluated)."""
    out_json = stored_results(args.report_only)
    stored_args = argparse.Namespace(**out_json["args"])
    say = Report()
    say(f"command: {command}")
    say(f"report regenerated from the curves stored in {args.report_only}, written by: {out_json['command']}")
    out_json["verdicts"] = []
    for name, part in out_json["parts"].items():
        say(f"\n== part {name}")
        retime_part(name, part, stored_args, say)
        out_json["verdicts"] += report_part(name, part, stored_args, args.out, say)
    for line in out_json["verdicts"]:
        say(line)
    out_json["report_only"] = {"command": command, "source": str(args.report_only)}
    write_results(args.out, out_json, say)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line(__file__, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only is not None:
        return report_only(args, command)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    tmp = None
    if args.runs_dir is None:
        tmp = tempfile.mkdtemp(prefix="bench-embedding-")
        runs_dir = Path(tmp)
    else:
        runs_dir = args.runs_dir
    say = Report()
    machine = machine_info(threads=torch.get_num_threads(), device=str(device))
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    say(f"command: {command}")
    say(f"machine: {machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']} with "
        f"{machine['threads']} thread(s) on {device}{' (' + machine['gpu'] + ')' if 'gpu' in machine else ''}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['loadavg_start'])}")
    say(f"runs in: {runs_dir}{' (temporary)' if tmp else ''}")
    say("wall-clock of a run = the trainer's 'wall': the loss factory's precomputation (FP solve, reference set) "
        "+ optimiser steps; evaluation and checkpoints excluded. Curves: EMA snapshots, ONE fixed-seed evaluator "
        "per part.")
    results: dict = {}
    verdicts: list[str] = []
    out_json = {"command": command, "machine": machine,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "parts": results, "verdicts": verdicts}
    runners = {"toy": run_part_toy, "memorise": run_part_memorise, "digits": run_part_digits}
    t_all = time.perf_counter()
    try:
        for name in ("toy", "memorise", "digits"):
            if name in args.parts:
                results[name] = runners[name](args, runs_dir, device, say)
                verdicts += report_part(name, results[name], args, args.out, say)
    except Exception:
        say("benchmark stopped by an error:\n" + traceback.format_exc())
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        machine["loadavg_end"] = os.getloadavg()
        out_json["total_seconds"] = time.perf_counter() - t_all
        for line in verdicts:
            say(line)
        say(f"\ntotal {out_json['total_seconds']:.0f} s; load average at end "
            f"{', '.join(f'{x:.2f}' for x in machine['loadavg_end'])}")
        write_results(args.out, out_json, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
