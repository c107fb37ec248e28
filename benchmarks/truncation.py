"""Shorter diffusion times bridged by an auxiliary prior: NLL against T per prior, at equal training steps.

    python benchmarks/truncation.py --quick          # smoke test: 25 s on a quiet 2-core CPU, ~1.5 min loaded
    python benchmarks/truncation.py --report-only benchmarks/results/truncation/truncation.json --out /tmp/t
        # the tables and pictures again from a stored truncation.json (its curves), nothing trained
    python benchmarks/truncation.py --threads 2 --runs-dir runs/bench-truncation
        # the real run with the defaults: 2-D MLP 128, batch 512, 3000 steps, 3 seeds; digits MLP 256,
        # batch 512, 3000 steps, 2 seeds; T 0.2,0.3,0.4,0.6,1; all four priors. Estimated ~15 min on a
        # quiet 2-core CPU (from measured per-step / per-sample costs); --reuse re-evaluates without
        # retraining. To cut it: --sample-steps 50, --timing-repeats 0, or fewer --Ts.

Digits use an MLP (width 256): about 4 ms per step here against ~0.15-0.5 s for the U-Net. It learns
T <= 0.6 reasonably (digits Frechet distance 50-90 against a data floor of 15-30), but at T = 1 its
PF-ODE samples diverge (a third to most of them leave [-2, 2]): the MLP's noise prediction is ~1 %
off at large t, and the large beta there amplifies that. The table's 'out>2' column and the verdict's
WARNING show it; on digits the T = 1 baseline is then a weak target for time-to-quality.

What it measures (METHODS.md sections 2 and 4), on the off-centre 2-D set and the 8x8 digits:
- for every T in --Ts and every prior in --priors (standard, gaussian, gmm, flow), at EQUAL training steps:
  test NLL (PF-ODE, exact divergence; digits in bits/dim with uniform dequantisation), the ELBO and its
  parts, the prior fit's seconds, the sampler steps and measured sampling seconds (same step size for
  every T), and the final sample quality (SWD for 2-D, digits Frechet distance for digits);
- time-to-quality: the wall-clock (score training + the prior fit) at which a run first reaches the
  sample quality that T = 1 / standard reaches at the end of its budget (same seed);
- a verdict on the goal: some T <= 0.5 with the flow prior whose NLL is no worse than T = 1 / standard,
  with at most half the sampling cost, and a lower wall-clock to the same sample quality.

How (read this before trusting a number):
- ONE score network per (data, T, seed). The score network does not depend on the prior, so every prior
  is fitted separately on that network's forward samples x_T, with the library's own pieces
  (``PRIORS.create(name).build(d, sde).fit(train_x, sde, steps=--prior-steps, seed=seed)``: the density and
  the call of the trainer's ``recipe.fit_prior``). The networks are trained by ``scorefast.train`` with
  prior='standard' and prior_fit='before'; the fit uses its own RNG, so training with another prior would
  give the very same network. This saves (#priors - 1) trainings per (data, T, seed).
- Accounting of the prior fit: as prior_fit='before' (fit, then train, serially): a run's wall-clock
  = the prior fit's seconds + the network's training seconds ('wall' of the trainer: optimiser steps,
  evaluation and checkpoints excluded; for T < 1 it includes the trainer's own fit of the standard prior,
  a no-op of about a millisecond). 'alongside' is not used: it shares the 2 cores with training.
- NLL: the PF-ODE from eps to T is integrated ONCE per network (RK4, --nll-steps over [eps, 1], scaled
  by T: the same step size for every T), returning the change of log-density and the end point x_T;
  each prior then adds its log nu(x_T). The same held-out points and the same dequantisation noise for
  every T and prior of a seed, so differences between them are paired.
- ELBO: ``methods.elbo.elbo`` on the same points (n_t = 128 stratified times, the same noise for
  every prior); reported as -ELBO (an upper bound on the NLL).
- Sample quality: ONE offline evaluator for every run and every snapshot: --eval-n samples from the
  prior at T and the PF-ODE (RK4, --sample-steps over [eps, 1] scaled by T), fixed sampling seed,
  against a fresh --eval-n-point draw from the generator (2-D toys) or the run's held-out split (digits).
  The trainer's own periodic metric is not used (it knows only the run's own prior, and on 2-D toys its
  2,000-point held-out reference puts the SWD's noise floor at the level of a well-trained model).
- Time-to-quality: EMA snapshots every --snapshot-every steps are evaluated in order until the target is
  reached (all of them with --full-curves); the time (and the step count) is ``evaluate.time_to``'s:
  linear between the last snapshot that misses the target and the first that meets it. The baseline gets
  the same rule (it reaches its own final value at the latest at its last snapshot). Curves are computed
  for the baseline and for T <= --ttq-max-T with the priors in --ttq-priors (all configurations with --ttq-priors all).

Outputs in --out: truncation.json (every raw number), nll_vs_T.png, quality_vs_wallclock.png, report.txt
(the tables, as printed).
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from common import Report, command_line, curve_of, fmt3, machine_info, mmm, stored_results, train_run

from scorefast import Config
from scorefast.bench.report import json_safe
from scorefast.checkpoint import load_checkpoint, save_checkpoint
from scorefast.data import BUILTIN_2D, load_data
from scorefast.evaluate import metric_name, quality, sample_steps, time_to
from scorefast.likelihood import bits_per_dim, dequantize, log_likelihood
from scorefast.methods.elbo import elbo
from scorefast.methods.priors import PRIORS
from scorefast.run import RunDir, resolve_device, split_data
from scorefast.sampling import sample

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "truncation"
ALL_PRIORS = ("standard", "gaussian", "gmm", "flow")
SAMPLE_SEED = 12345  # the sampling seed of every quality evaluation
NLL_SEED = 0  # dequantisation noise / Hutchinson probes
ELBO_SEED = 1
OUT_OF_RANGE = 2.0
REF_SEED = 1_000_000  # + seed: the fresh reference sample of a 2-D toy


@dataclass(frozen=True)
class DataSettings:
    name: str
    arch: str
    width: int
    depth: int
    batch: int
    steps: int
    snapshot_every: int
    seeds: int
    eval_n: int  # samples per quality evaluation
    nll_n: int  # held-out points for NLL / ELBO
    hutchinson: int  # 0: exact divergence
    images: bool


def data_settings(args: argparse.Namespace, name: str) -> DataSettings:
    if name in BUILTIN_2D or name == "gaussian2d":
        return DataSettings(name, "mlp", args.width, args.depth, args.batch, args.steps, args.snapshot_every,
                            args.seeds or 3, args.eval_n, args.nll_n, 0, False)
    return DataSettings(name, args.digits_arch, args.digits_width, args.depth, args.digits_batch, args.digits_steps,
                        args.digits_snapshot_every or args.snapshot_every, args.digits_seeds or args.seeds or 2,
                        args.digits_eval_n, args.digits_nll_n, args.digits_hutchinson, True)


def train_config(args: argparse.Namespace, ds: DataSettings, T: float, seed: int, out: Path) -> Config:
    """The score network's run: prior 'standard' fitted 'before' (a no-op fit for T < 1); the in-loop
    metric only at the end and on a small sample (it is not used here)."""
    return Config(data=ds.name, out=str(out), steps=ds.steps, sde=args.sde, T=T, eps=args.eps, seed=seed,
                  batch_size=ds.batch, lr=args.lr, ema=args.ema, arch=ds.arch, width=ds.width, depth=ds.depth,
                  eval_every=ds.steps, eval_samples=256, eval_steps=args.sample_steps, ckpt_every=ds.steps,
                  snapshot_every=ds.snapshot_every, threads=args.threads, device=args.device,
                  prior="standard", prior_fit="before")


# -- prior fits -----------------------------------------------------------------------------------

def fit_prior(name: str, cfg: Config, train_x: torch.Tensor, sde, device, prior_steps: int, reuse: bool,
              path: Path):
    """Fit prior ``name`` at the run's T on its training data (the density and the call of the trainer's
    ``recipe.fit_prior``); saved under the run, in the trainer's prior checkpoint format plus what it was
    fitted for, so that --reuse can skip it (the recorded fit seconds are reused with it)."""
    want = {"prior": name, "T": cfg.sde.T, "seed": cfg.optim.seed, "prior_steps": prior_steps, "sde": cfg.sde.name,
            "eps": cfg.sde.eps}
    plugin = PRIORS.create(name)
    dim = train_x[0].numel()
    prior = plugin.build(dim, sde).to(device)
    if reuse and path.is_file():
        state = load_checkpoint(path)
        if state.get("want") == want:
            prior.load_state_dict(state["state"])
            return prior.eval(), dict(state["fit"]), True
    info = prior.fit(train_x.flatten(1).to(device), sde, steps=prior_steps, seed=cfg.optim.seed, progress=False)
    save_checkpoint(path, {"want": want, "prior": plugin.to_dict(), "dim": dim, "state": prior.state_dict(),
                           "fit": info})
    return prior.eval(), info, False


# -- evaluation -----------------------------------------------------------------------------------

def timed_sample(model, sde, prior, shape, n: int, steps: int, device, sampler: str = "ode"):
    """(n fixed-seed samples, seconds): x_T ~ prior (its sampling counted), then the sampler from T."""
    g = torch.Generator(device=device).manual_seed(SAMPLE_SEED)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    x = sample(model, sde, n, tuple(shape), sampler=sampler, steps=steps, prior=prior, generator=g, device=device,
               progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return x.cpu(), time.perf_counter() - t0


def evaluate_quality(model, sde, prior, shape, n: int, steps: int, reference: torch.Tensor, mname: str,
                     device, sampler: str = "ode") -> tuple[float, float, float]:
    """(quality, sampling seconds, out-of-range fraction) of n fixed-seed samples. The fraction of
    samples with a coordinate beyond +-OUT_OF_RANGE is a diagnostic for images in [-1, 1] (diverged
    PF-ODE trajectories, which dominate a Frechet distance)."""
    x, seconds = timed_sample(model, sde, prior, shape, n, steps, device, sampler)
    out_of_range = float((x.flatten(1).abs().amax(1) > OUT_OF_RANGE).double().mean())
    return quality(mname, x, reference), seconds, out_of_range


def quality_reference(cfg: Config, ds: DataSettings, args, test_ds) -> torch.Tensor:
    """What samples are compared with: for 2-D toys a fresh draw of --ref-n (default --eval-n) points
    from the data generator (seed 1,000,000 + seed; the 2,000-point held-out split would put the SWD's
    noise floor at the level of a well-trained model); for images the run's held-out split."""
    if ds.images:
        return test_ds.x
    return load_data(ds.name, n=args.ref_n or ds.eval_n, seed=REF_SEED + cfg.optim.seed).x


def nll_points(cfg: Config, ds: DataSettings, test) -> torch.Tensor:
    """The held-out points of a seed, dequantised for digits (the same for every T and prior)."""
    x = test.x[:ds.nll_n]
    if test.levels:
        x = dequantize(x, test.levels, generator=torch.Generator().manual_seed(NLL_SEED))
    return x


def flow_to_T(model, sde, x: torch.Tensor, steps: int, hutchinson: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta, x_T): the PF-ODE's change of log-density from eps to T, and the end point; the NLL of any
    prior is then -(log nu(x_T) + delta)."""
    g = torch.Generator().manual_seed(NLL_SEED + 7)
    deltas, ends = [], []
    for xb in x.split(500):
        d, xT = log_likelihood(model, sde, xb.to(device), steps=steps, hutchinson=hutchinson,
                               prior_logp=lambda z: torch.zeros(z.shape[0], dtype=z.dtype, device=z.device),
                               generator=g if device.type == "cpu" else None, return_endpoint=True)
        deltas.append(d.detach().cpu())
        ends.append(xT.detach().cpu())
    return torch.cat(deltas), torch.cat(ends)


def evaluate_network(args, ds: DataSettings, cfg: Config, train_summary: dict, priors: list[str],
                     device, say) -> list[dict]:
    """Every measurement of one score network: one record per prior."""
    run = RunDir(cfg.log.out)
    sde = cfg.sde.build()
    train_ds, test_ds = split_data(cfg)
    shape = tuple(train_ds.shape)
    mname = metric_name(train_ds)
    model = run.load_model(cfg, sde, shape).to(device)
    final_wall = float(load_checkpoint(run.checkpoint(0))["wall"])
    steps_sample = sample_steps(args.sample_steps, sde)
    steps_nll = sample_steps(args.nll_steps, sde)
    reference = quality_reference(cfg, ds, args, test_ds)
    x = nll_points(cfg, ds, test_ds)
    t0 = time.perf_counter()
    delta, xT = flow_to_T(model, sde, x, steps_nll, ds.hutchinson, device)
    flow_seconds = time.perf_counter() - t0
    records = []
    for name in priors:
        prior, fit, reused = fit_prior(name, cfg, train_ds.x, sde, device, args.prior_steps, args.reuse,
                                       run.path / "priors" / f"{name}.pt")
        fit_seconds = 0.0 if (name == "standard") else float(fit["seconds"])
        with torch.no_grad():
            logp = (prior.log_prob(xT.to(device)).cpu().double() + delta.double())
        parts = elbo(model, sde, x.to(device), prior, generator=torch.Generator().manual_seed(ELBO_SEED))
        parts = {k: float(v.double().mean()) for k, v in parts.items()}
        q, secs, oor = evaluate_quality(model, sde, prior, shape, ds.eval_n, steps_sample, reference, mname,
                                        device, sampler=args.sampler)
        rec = {"data": ds.name, "T": cfg.sde.T, "prior": name, "seed": cfg.optim.seed, "run": str(run.path),
               "nll_nats": float(-logp.mean()), "nll_sem": float(logp.std() / len(logp) ** 0.5),
               "logp": logp.tolist(), "nll_n": len(logp), "nll_steps": steps_nll,
               "divergence": "exact" if ds.hutchinson == 0 else f"hutchinson-{ds.hutchinson}",
               "nll_ode_seconds": flow_seconds, "neg_elbo_nats": -parts["elbo"], "elbo_parts": parts,
               "prior_fit": fit, "prior_fit_seconds": fit_seconds, "prior_reused": reused,
               "sample_steps": steps_sample, "sample_seconds": secs, "sample_seconds_all": [secs], "eval_n": ds.eval_n,
               "metric_name": mname, "final_quality": q, "out_of_range": oor, "train_seconds": final_wall,
               "train_summary": {k: train_summary.get(k) for k in ("steps", "train_seconds", "elapsed_seconds")}}
        if test_ds.levels:
            rec["bpd"] = float(bits_per_dim(logp, x[0].numel(), test_ds.levels).mean())
            rec["neg_elbo_bpd"] = float(bits_per_dim(torch.tensor(parts["elbo"]), x[0].numel(), test_ds.levels))
        rec["_prior"], rec["_model"], rec["_shape"] = prior, model, shape
        records.append(rec)
        bpd = f" ({rec['bpd']:.3f} bpd)" if "bpd" in rec else ""
        say(f"    {name:<9} NLL {rec['nll_nats']:8.3f} nats{bpd}, "
            f"-ELBO {rec['neg_elbo_nats']:8.3f}, fit {fit_seconds:5.1f} s{' (reused)' if reused else ''}, "
            f"{mname} {q:.4f}{f', {oor:.1%} of samples beyond +-{OUT_OF_RANGE:g}' if ds.images else ''}, "
            f"sampling {steps_sample} steps {secs:.2f} s")
    return records


def snapshot_list(run: Path) -> list[tuple[int, Path]]:
    snaps = sorted((int(p.stem.split("-")[-1]), p) for p in (run / "snapshots").glob("net-0-*.pt"))
    return snaps


def quality_curve(args, ds: DataSettings, rec: dict, target: float | None, device) -> list[dict]:
    """Quality of the EMA snapshots of a run with the record's prior, in step order; stops at the first
    snapshot at or below ``target`` unless --full-curves. The last point is the final weights."""
    run = RunDir(rec["run"])
    cfg = run.read_config()
    sde = cfg.sde.build()
    train_ds, test_ds = split_data(cfg)
    shape = tuple(train_ds.shape)
    reference = quality_reference(cfg, ds, args, test_ds)
    steps = sample_steps(args.sample_steps, sde)
    fit = rec["prior_fit_seconds"]
    curve = []
    snaps = snapshot_list(run.path)
    final_step = int(cfg.budget.steps)
    for step, path in snaps:
        wall = float(load_checkpoint(path)["wall"])
        if step == final_step:  # the final EMA weights: already evaluated (identical sampling)
            q = rec["final_quality"]
        else:
            model = run.load_model(cfg, sde, shape, step=step).to(device)
            q, _, _ = evaluate_quality(model, sde, rec["_prior"], shape, ds.eval_n, steps, reference,
                                       rec["metric_name"], device, sampler=args.sampler)
        curve.append({"step": step, "train_wall": wall, "wall": wall + fit, "quality": q})
        if target is not None and q <= target and not args.full_curves:
            return curve
    if not snaps or snaps[-1][0] != final_step:
        curve.append({"step": final_step, "train_wall": rec["train_seconds"], "wall": rec["train_seconds"] + fit,
                      "quality": rec["final_quality"]})
    return curve


def time_to_target(records: list[dict], say) -> None:
    """Every curve's wall-clock (prior fit included) and optimiser steps to the target of its seed (the
    baseline's), by ``evaluate.time_to``; None = never reached."""
    targets = {r["seed"]: r["target"] for r in records if "target" in r}
    for r in records:
        if not r.get("curve"):
            continue
        target = targets[r["seed"]]
        r["ttq"] = time_to(curve_of(r["curve"], "wall", "quality"), target)
        r["ttq_steps"] = time_to(curve_of(r["curve"], "step", "quality"), target)
        say(f"  time-to-quality seed {r['seed']} T={r['T']:g} {r['prior']:<9}: target {r['metric_name']} "
            f"{target:.4f}, reached at {'never' if r['ttq'] is None else format(r['ttq'], '.1f') + ' s'} "
            f"(fit {r['prior_fit_seconds']:.1f} s + training), {len(r['curve'])} snapshot(s)")


def time_sampling(args, ds: DataSettings, records: list[dict], device) -> None:
    """Re-time the final sampling of every (T, prior) of a seed, round-robin (--timing-repeats rounds),
    so that a change of machine load hits every configuration alike; the fastest draw is kept."""
    for _ in range(args.timing_repeats):
        for r in records:
            sde = Config(sde=args.sde, T=r["T"], eps=args.eps).sde.build()
            _, secs = timed_sample(r["_model"], sde, r["_prior"], r["_shape"], ds.eval_n, r["sample_steps"], device,
                                   args.sampler)
            r["sample_seconds_all"].append(secs)
    for r in records:
        r["sample_seconds"] = min(r["sample_seconds_all"])


# -- summary, verdict, tables ---------------------------------------------------------------------

def summarise(ds: DataSettings, records: list[dict], Ts: list[float], priors: list[str], args,
              data_reference: dict) -> dict:
    by = {(r["T"], r["prior"], r["seed"]): r for r in records}
    seeds = sorted({r["seed"] for r in records})
    base = {s: by[(1.0, "standard", s)] for s in seeds}
    rows = []
    for T in Ts:
        for p in priors:
            rs = [by[(T, p, s)] for s in seeds]
            row = {"T": T, "prior": p, "seeds": seeds,
                   "nll_nats": mmm(r["nll_nats"] for r in rs),
                   "nll_vs_base": mmm(r["nll_nats"] - base[r["seed"]]["nll_nats"] for r in rs),
                   "nll_vs_base_sem": [float(np.std(np.array(r["logp"]) - np.array(base[r["seed"]]["logp"]))
                                             / math.sqrt(r["nll_n"])) for r in rs],
                   "neg_elbo_nats": mmm(r["neg_elbo_nats"] for r in rs),
                   "prior_fit_seconds": mmm(r["prior_fit_seconds"] for r in rs),
                   "sample_steps": rs[0]["sample_steps"],
                   "sample_steps_ratio": rs[0]["sample_steps"] / base[seeds[0]]["sample_steps"],
                   "sample_seconds": mmm(r["sample_seconds"] for r in rs),
                   "sample_seconds_ratio": mmm(r["sample_seconds"] / base[r["seed"]]["sample_seconds"] for r in rs),
                   "final_quality": mmm(r["final_quality"] for r in rs),
                   "out_of_range": mmm(r["out_of_range"] for r in rs),
                   "train_seconds": mmm(r["train_seconds"] for r in rs)}
            if ds.images:
                row["bpd"] = mmm(r["bpd"] for r in rs)
                row["neg_elbo_bpd"] = mmm(r["neg_elbo_bpd"] for r in rs)
            rows.append(row)
    add_times(rows, records)
    return {"data": ds.name, "seeds": seeds, "metric_name": records[0]["metric_name"], "rows": rows,
            "targets": {s: base[s]["target"] for s in seeds}, "data_reference": data_reference,
            "verdict": verdict(ds, rows, args)}


def _per_step(rec: dict) -> float:
    return rec["train_seconds"] / rec["train_summary"]["steps"][0]


def _ratio(t: float | None, t_base: float | None) -> float | None:
    """t / t_base for times to the target: None if t is never reached, 0 if only the baseline never is."""
    if t is None:
        return None
    return 0.0 if t_base is None else t / t_base


def _charged(r: dict, base: dict) -> float | None:
    """Load-normalised time to the target: the same per-step cost for every T (same network and batch), so
    the prior fit + the steps to the target x the baseline's seconds per step (the baseline's fit is 0)."""
    return None if r["ttq_steps"] is None else r["prior_fit_seconds"] + r["ttq_steps"] * _per_step(base)


def add_times(rows: list[dict], records: list[dict]) -> None:
    """The time-to-target columns of every row, from its records' times (``time_to_target``): None for
    the whole column when the curves of the row were not computed (--ttq-priors / --ttq-max-T)."""
    by = {(r["T"], r["prior"], r["seed"]): r for r in records}
    for row in rows:
        rs = [by[(row["T"], row["prior"], s)] for s in row["seeds"]]
        base = {s: by[(1.0, "standard", s)] for s in row["seeds"]}
        if not all(r.get("curve") for r in rs):
            row.update(dict.fromkeys(("ttq_seconds", "ttq_ratio", "ttq_steps", "ttq_norm_ratio")))
            continue
        pairs = [(r, base[r["seed"]]) for r in rs]
        row.update({"ttq_seconds": mmm(r["ttq"] for r in rs),
                    "ttq_ratio": mmm(_ratio(r["ttq"], b["ttq"]) for r, b in pairs),
                    "ttq_steps": mmm(r["ttq_steps"] for r in rs),
                    "ttq_norm_ratio": mmm(_ratio(_charged(r, b), _charged(b, b)) for r, b in pairs)})


def verdict(ds: DataSettings, rows: list[dict], args) -> dict:
    """The goal, per candidate T <= 0.5 with the flow prior, judged on medians over seeds of the paired
    (same seed) comparison with T = 1 / standard:
    (a) NLL: median of NLL(T, flow) - NLL(1, standard) <= 0 (nats);
    (b) sampling: sampler steps ratio <= 0.5 AND median measured sampling-seconds ratio <= 0.5;
    (c) time-to-quality: median of (fit + training seconds to the target) / (the baseline's) < 1."""
    cands = [r for r in rows if r["prior"] == "flow" and r["T"] <= args.goal_max_T]
    out = {"candidates": []}
    for r in cands:
        a = r["nll_vs_base"][1] <= 0
        b = r["sample_steps_ratio"] <= 0.5 and r["sample_seconds_ratio"][1] <= 0.5
        c = None if r["ttq_ratio"] is None else r["ttq_ratio"][1] is not None and r["ttq_ratio"][1] < 1
        out["candidates"].append({"T": r["T"], "nll": a, "sampling": b, "ttq": c,
                                  "all": bool(a and b and c)})
    met = [c for c in out["candidates"] if c["all"]]
    out["met"] = bool(met)
    out["met_at"] = [c["T"] for c in met]
    return out


def table(summary: dict, ds: DataSettings, args) -> str:
    m = summary["metric_name"]
    lines = [f"== {summary['data']}: seeds {summary['seeds']}; min/median/max over seeds (one value: all equal); "
             f"NLL in nats{' and bits/dim' if ds.images else ''} on {ds.nll_n} held-out points "
             f"({'exact divergence' if ds.hutchinson == 0 else f'Hutchinson {ds.hutchinson}'}); "
             f"{m} from {ds.eval_n} fixed-seed samples ({args.sampler} sampler, {args.sample_steps} steps over "
             f"[eps, 1], scaled by T) =="]
    head = (f"{'T':>4} {'prior':<9} {'NLL nats':>23} "
            + (f"{'NLL bpd':>20} " if ds.images else "")
            + f"{'dNLL vs T=1 std':>23} {'-ELBO ' + ('bpd' if ds.images else 'nats'):>11} {'fit s':>15} "
            f"{'steps':>5} {'sample s':>15} {'x base':>5} {'final ' + m:>20} "
            + (f"{'out>2':>5} " if ds.images else "") + f"{'train s':>8} "
            f"{'t to target s':>19} {'x base':>14} {'steps to target':>17} {'x base@same s/step':>18}")
    lines += [head, "-" * len(head)]
    for r in summary["rows"]:
        ne = r["neg_elbo_bpd"][1] if ds.images else r["neg_elbo_nats"][1]
        lines.append(
            f"{r['T']:>4g} {r['prior']:<9} {fmt3(r['nll_nats']):>23} "
            + (f"{fmt3(r['bpd']):>20} " if ds.images else "")
            + f"{fmt3(r['nll_vs_base'], '+.3f'):>23} {ne:>11.3f} {fmt3(r['prior_fit_seconds'], '.1f'):>15} "
            f"{r['sample_steps']:>5} {fmt3(r['sample_seconds'], '.2f'):>15} {r['sample_seconds_ratio'][1]:>5.2f} "
            f"{fmt3(r['final_quality'], '.4f'):>20} "
            + (f"{r['out_of_range'][1]:>5.1%} " if ds.images else "") + f"{r['train_seconds'][1]:>8.1f} "
            f"{fmt3(r['ttq_seconds'], '.1f'):>19} {fmt3(r['ttq_ratio'], '.2f'):>14} "
            f"{fmt3(r['ttq_steps'], '.0f'):>17} {fmt3(r['ttq_norm_ratio'], '.2f'):>18}")
    tg = ", ".join(f"seed {s}: {v:.4f}" for s, v in summary["targets"].items())
    ref = ", ".join(f"seed {s}: {v:.4f}" for s, v in summary["data_reference"].items())
    lines += ["dNLL: paired difference to T=1/standard of the same seed (same points, same dequantisation; "
              "negative = better). -ELBO, train s: medians. x base (sampling): median per-seed ratio of sampling "
              "seconds to T=1/standard.",
              f"t to target: prior fit + training seconds (prior_fit='before' accounting) at which the EMA "
              f"snapshots' {m} first reaches {args.target_slack:g} x the T=1/standard final {m} of the same seed "
              f"({tg}), linear between snapshots (evaluate.time_to; steps to target likewise); "
              f"'-' = not evaluated "
              f"(see --ttq-priors / --ttq-max-T), never = not reached within the budget; x base = per-seed ratio "
              f"to T=1/standard's own time to the target (< 1 = faster); x base@same s/step: the same ratio with "
              f"every run's training charged at the baseline's seconds per step (removes load drift between runs; "
              f"the prior fit still counted as measured).",
              f"{m} of {ds.eval_n} training points against the same "
              f"{'held-out split' if ds.images else f'fresh {args.ref_n or ds.eval_n}-point reference'} "
              f"(the metric's floor at this sample size): "
              f"{ref}."
              + (f" out>2: median fraction of samples with a pixel beyond +-{OUT_OF_RANGE:g} (data lie in [-1, 1]; "
                 "diverged PF-ODE trajectories)." if ds.images else "")]
    return "\n".join(lines)


def verdict_lines(summary: dict, ds: DataSettings, args) -> list[str]:
    rows = {(r["T"], r["prior"]): r for r in summary["rows"]}
    base = rows[(1.0, "standard")]
    v = summary["verdict"]
    unit = "nats"
    out = []
    if not v["candidates"]:
        return [f"VERDICT [{ds.name}]: no candidate (needs the flow prior and some T <= {args.goal_max_T:g})"]
    for c in v["candidates"]:
        r = rows[(c["T"], "flow")]
        ttq = ("not evaluated" if r["ttq_ratio"] is None else
               f"{fmt3(r['ttq_seconds'], '.1f')} s (prior fit {fmt3(r['prior_fit_seconds'], '.1f')} s incl.) vs "
               f"baseline {fmt3(base['ttq_seconds'], '.1f')} s, ratio {fmt3(r['ttq_ratio'], '.2f')} (steps to "
               f"target {fmt3(r['ttq_steps'], '.0f')} vs {fmt3(base['ttq_steps'], '.0f')}; ratio at the baseline's "
               f"s/step {fmt3(r['ttq_norm_ratio'], '.2f')})")
        mark = lambda ok: "met" if ok else ("n/a" if ok is None else "NOT met")  # noqa: E731
        out.append(f"  T={c['T']:g} flow: (a) NLL no worse: {mark(c['nll'])} -- {r['nll_nats'][1]:.3f} vs "
                   f"{base['nll_nats'][1]:.3f} {unit} (paired diff {fmt3(r['nll_vs_base'], '+.3f')}, "
                   f"per-point SEM ~{np.median(r['nll_vs_base_sem']):.3f})"
                   + (f", {r['bpd'][1]:.3f} vs {base['bpd'][1]:.3f} bpd" if ds.images else ""))
        out.append(f"               (b) <= half sampling cost: {mark(c['sampling'])} -- {r['sample_steps']} vs "
                   f"{base['sample_steps']} steps ({r['sample_steps_ratio']:.2f}x), sampling seconds "
                   f"{fmt3(r['sample_seconds'], '.2f')} vs {fmt3(base['sample_seconds'], '.2f')} "
                   f"(ratio {fmt3(r['sample_seconds_ratio'], '.2f')})")
        out.append(f"               (c) lower wall-clock to T=1/standard's final {summary['metric_name']}: "
                   f"{mark(c['ttq'])} -- {ttq}")
    head = (f"VERDICT [{ds.name}]: goal MET at T = {', '.join(f'{t:g}' for t in v['met_at'])} (flow prior; "
            "medians over seeds)"
            if v["met"] else f"VERDICT [{ds.name}]: goal NOT met (no T <= {args.goal_max_T:g} with the flow prior "
                             "meets (a), (b) and (c) together; see below)")
    m = summary["metric_name"]
    floor = float(np.median(list(summary["data_reference"].values())))
    if ds.images and base["out_of_range"][1] > 0.01:
        out.append(f"  WARNING: {base['out_of_range'][1]:.0%} of the T=1/standard samples have a pixel beyond "
                   f"+-{OUT_OF_RANGE:g} (diverged PF-ODE trajectories; the data lie in [-1, 1]): its final {m} "
                   f"({base['final_quality'][1]:.4g}) is a weak target, so (c) compares against a broken baseline.")
    elif base["final_quality"][1] > 3 * floor:
        out.append(f"  NOTE: the T=1/standard final {m} ({base['final_quality'][1]:.4g}) is over 3x the data's own "
                   f"({floor:.4g}): (c) is judged at a low quality level (undertrained baseline).")
    return [head] + out


# -- pictures -------------------------------------------------------------------------------------

def plot_nll(results: dict, path: Path) -> None:
    """Top row: NLL against T per prior, full range (log scale); bottom row: zoomed on the priors near
    the T = 1 / standard baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8.5), squeeze=False)
    for col, name in enumerate(names):
        s = results[name]["summary"]
        images = results[name]["settings"]["images"]
        key = "bpd" if images else "nll_nats"
        base = next(r for r in s["rows"] if r["T"] == 1.0 and r["prior"] == "standard")
        for row, ax in enumerate(axes[:, col]):
            for p in dict.fromkeys(r["prior"] for r in s["rows"]):
                rr = sorted((r for r in s["rows"] if r["prior"] == p), key=lambda r: r["T"])
                med = np.array([r[key][1] for r in rr])
                lo = med - np.array([r[key][0] for r in rr])
                hi = np.array([r[key][2] for r in rr]) - med
                ax.errorbar([r["T"] for r in rr], med, yerr=[lo, hi], marker="o", capsize=3, label=p)
            ax.axhline(base[key][1], color="grey", ls=":", lw=0.9, label="T=1 standard (median)")
            ax.set_xlabel("diffusion time T (equal training steps)")
            ax.set_ylabel("test NLL (bits/dim)" if images else "test NLL (nats)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            if row == 0:
                if min(r[key][0] for r in s["rows"]) > 0:
                    ax.set_yscale("log")
                ax.set_title(f"{name}: NLL vs T per prior (median, min-max over seeds)")
            else:
                vals = [r[key][1] for r in s["rows"] if r["prior"] != "standard"] + [base[key][1]]
                lo_v, hi_v = min(vals), max(vals)
                pad = 0.15 * (hi_v - lo_v) + 1e-3
                ax.set_ylim(lo_v - pad, hi_v + pad)
                ax.set_title(f"{name}: zoom (the standard prior may be off the scale)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_quality(results: dict, path: Path) -> None:
    """Top row: sample quality against wall-clock (prior fit + training); bottom row: against optimiser
    steps (the load-free view)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8.5), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", "-.", ":"]
    for col, name in enumerate(names):
        res = results[name]
        colours: dict[str, str] = {}
        seeds = res["summary"]["seeds"]
        for r in res["records"]:
            if not r.get("curve"):
                continue
            label = f"T={r['T']:g} {r['prior']}"
            c = colours.setdefault(label, cycle[len(colours) % len(cycle)])
            ls = styles[seeds.index(r["seed"]) % len(styles)]
            for ax, xkey in zip(axes[:, col], ("wall", "step")):
                ax.plot([p[xkey] for p in r["curve"]], [p["quality"] for p in r["curve"]], marker="o", ms=3,
                        color=c, alpha=0.8, ls=ls, label=label if r["seed"] == seeds[0] else None)
        for ax, xlabel in zip(axes[:, col], ("wall-clock (s): prior fit + score training (prior_fit='before')",
                                              "optimiser steps of the score network")):
            for v in res["summary"]["targets"].values():
                ax.axhline(v, color="grey", lw=0.7, ls=":")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(res["summary"]["metric_name"] + " (lower = better)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0, col].set_title(f"{name}: quality vs wall-clock\n(line style = seed; grey dotted = targets; "
                               "curves stop at the target unless --full-curves)", fontsize=9)
        axes[1, col].set_title(f"{name}: quality vs optimiser steps (load-free view)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------

QUICK = {"Ts": "0.4,1.0", "priors": "standard,gaussian,flow", "seeds": 1, "digits_seeds": 1, "steps": 300,
         "digits_steps": 300, "snapshot_every": 100, "digits_snapshot_every": 100, "eval_n": 2000,
         "digits_eval_n": 500, "nll_n": 200, "digits_nll_n": 20, "nll_steps": 20, "sample_steps": 50,
         "prior_steps": 300, "width": 64, "digits_width": 128, "batch": 256, "digits_batch": 256}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke test: 1 seed, T 0.4 and 1, priors standard, gaussian, flow, 300 steps, small "
                        "networks and evaluations (changes the defaults below; explicit flags still win)")
    p.add_argument("--datasets", default="offcentre,digits", help="comma-separated data sets")
    p.add_argument("--Ts", default="0.2,0.3,0.4,0.6,1.0", help="diffusion end times (1.0 is always added)")
    p.add_argument("--priors", default=",".join(ALL_PRIORS),
                   help="priors at T ('standard' is always added: it is the baseline at T=1)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: 3 for 2-D, 2 for digits)")
    p.add_argument("--digits-seeds", type=int, default=None, help="seeds on images (default: --seeds, else 2)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps per score network (2-D)")
    p.add_argument("--digits-steps", type=int, default=3000, help="optimiser steps per score network (images)")
    p.add_argument("--snapshot-every", type=int, default=250, help="EMA snapshot (curve point) every N steps")
    p.add_argument("--digits-snapshot-every", type=int, default=None, help="same on images (default: --snapshot-every)")
    p.add_argument("--eval-n", type=int, default=5000, help="samples per quality (SWD) evaluation (2-D)")
    p.add_argument("--digits-eval-n", type=int, default=2000, help="samples per digits Frechet evaluation")
    p.add_argument("--nll-n", type=int, default=1000, help="held-out points for NLL and ELBO (2-D)")
    p.add_argument("--digits-nll-n", type=int, default=200, help="held-out digits for NLL and ELBO")
    p.add_argument("--digits-hutchinson", type=int, default=0, help="Hutchinson probes on images (0: exact)")
    p.add_argument("--nll-steps", type=int, default=50, help="RK4 steps of the NLL ODE over [eps, 1] (scaled by T)")
    p.add_argument("--sample-steps", type=int, default=100,
                   help="RK4 steps of the PF-ODE sampler over [eps, 1] (scaled by T: same step size)")
    p.add_argument("--sampler", default="ode", choices=("ode", "em", "pc"),
                   help="sampler of every quality evaluation (ode: RK4 probability flow, as the trainer's metric)")
    p.add_argument("--timing-repeats", type=int, default=1,
                   help="extra round-robin timings of every final sampling of a seed (the fastest draw is kept)")
    p.add_argument("--ref-n", type=int, default=None,
                   help="2-D: size of the fresh reference sample the SWD is computed against (default: --eval-n; "
                        "another size makes every SWD about 15x slower: POT's path for unequal sizes)")
    p.add_argument("--target-slack", type=float, default=1.0,
                   help="time-to-quality target = this x the T=1/standard final quality of the seed")
    p.add_argument("--prior-steps", type=int, default=2000, help="step budget of each prior fit (early stopping)")
    p.add_argument("--sde", default="vp", help="forward SDE (METHODS.md section 2: VP, beta 0.1..20)")
    p.add_argument("--eps", type=float, default=1e-3, help="smallest diffusion time")
    p.add_argument("--width", type=int, default=128, help="MLP width (2-D)")
    p.add_argument("--depth", type=int, default=3, help="MLP hidden layers")
    p.add_argument("--batch", type=int, default=512, help="batch (2-D)")
    p.add_argument("--digits-arch", default="mlp", choices=("mlp", "unet"), help="network on images")
    p.add_argument("--digits-width", type=int, default=256, help="MLP width / U-Net channels on images")
    p.add_argument("--digits-batch", type=int, default=512, help="batch on images")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the evaluated weights (with warm-up)")
    p.add_argument("--ttq-priors", default="flow",
                   help="priors whose truncated runs get time-to-quality curves ('all': every prior)")
    p.add_argument("--ttq-max-T", type=float, default=0.5, help="curves only for T <= this (and the baseline)")
    p.add_argument("--goal-max-T", type=float, default=0.5, help="the goal's largest candidate T")
    p.add_argument("--full-curves", action="store_true",
                   help="evaluate every snapshot (default: stop at the first that reaches the target)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. OMP_NUM_THREADS)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of truncation.json, PNGs, report.txt")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="where the score networks and fitted priors live (default: a temporary directory, removed)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse finished runs of identical configuration and fitted priors in --runs-dir")
    p.add_argument("--report-only", type=Path, default=None, metavar="TRUNCATION_JSON",
                   help="train nothing: regenerate the tables, verdicts and pictures from a stored truncation.json "
                        "(its curves) into --out")
    if p.parse_args(argv).quick:  # the quick sizes become defaults: flags given explicitly still win
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    try:
        Ts = sorted({float(t) for t in args.Ts.split(",") if t.strip()} | {1.0})
    except ValueError:
        p.error(f"--Ts '{args.Ts}': expected comma-separated numbers")
    if any(not (args.eps < t <= 1.0) for t in Ts):
        p.error(f"--Ts: every T must be in ({args.eps}, 1]")
    args.Ts = Ts
    priors = [q.strip() for q in args.priors.split(",") if q.strip()]
    bad = [q for q in priors if q not in ALL_PRIORS]
    if bad:
        p.error(f"--priors: unknown {bad}; choose from {', '.join(ALL_PRIORS)}")
    args.priors = list(dict.fromkeys(["standard"] + priors))
    args.ttq_priors = list(ALL_PRIORS) if args.ttq_priors.strip() == "all" else \
        [q.strip() for q in args.ttq_priors.split(",") if q.strip()]
    if args.ref_n is not None and args.ref_n < 2:
        p.error("--ref-n must be >= 2")
    if args.timing_repeats < 0 or args.target_slack <= 0:
        p.error("--timing-repeats must be >= 0 and --target-slack > 0")
    if args.reuse and args.runs_dir is None:
        p.error("--reuse needs --runs-dir (the default runs directory is temporary)")
    for name in ("steps", "digits_steps", "snapshot_every", "eval_n", "digits_eval_n", "nll_n", "digits_nll_n",
                 "nll_steps", "sample_steps", "prior_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def report_dataset(summary: dict, ds: DataSettings, args, say: Report) -> None:
    say()
    say(table(summary, ds, args))
    say()
    for line in verdict_lines(summary, ds, args):
        say(line)


def plot_results(results: dict, out: Path, say: Report) -> None:
    if results:
        plot_nll(results, out / "nll_vs_T.png")
        plot_quality(results, out / "quality_vs_wallclock.png")
        say(f"\npictures: {out / 'nll_vs_T.png'}, {out / 'quality_vs_wallclock.png'}")


def write_results(out: Path, out_json: dict, say: Report) -> None:
    """truncation.json and report.txt."""
    (out / "truncation.json").write_text(json.dumps(json_safe(out_json), indent=1))
    say(f"raw numbers: {out / 'truncation.json'}")
    (out / "report.txt").write_text("\n".join(say.lines) + "\n")


def report_only(args: argparse.Namespace, command: str) -> int:
    """The report of a stored truncation.json, its times to the target recomputed from its curves (with the
    arguments of the run that wrote it; nothing is trained or evaluated)."""
    out_json = stored_results(args.report_only)
    stored_args = argparse.Namespace(**out_json["args"])
    say = Report()
    say(f"command: {command}")
    say(f"report regenerated from the curves stored in {args.report_only}, written by: {out_json['command']}")
    for data, res in out_json["datasets"].items():
        ds = DataSettings(**res["settings"])
        say(f"\n[{data}]")
        time_to_target(res["records"], say)
        add_times(res["summary"]["rows"], res["records"])
        res["summary"]["verdict"] = verdict(ds, res["summary"]["rows"], stored_args)
        report_dataset(res["summary"], ds, stored_args, say)
    out_json["report_only"] = {"command": command, "source": str(args.report_only)}
    plot_results(out_json["datasets"], args.out, say)
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
        tmp = tempfile.mkdtemp(prefix="bench-truncation-")
        runs_dir = Path(tmp)
    else:
        runs_dir = args.runs_dir
    say = Report()
    machine = machine_info(threads=torch.get_num_threads(), device=str(device))
    say(f"command: {command}")
    say(f"machine: {machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']} with "
        f"{machine['threads']} thread(s) on {device}, load average at start "
        f"{', '.join(f'{x:.2f}' for x in machine['loadavg_start'])}")
    say(f"runs in: {runs_dir}{' (temporary)' if tmp else ''}")
    say("method: one score network per (data, T, seed), every prior fitted on it separately "
        "(the network does not depend on the prior); wall-clock = prior fit + training (prior_fit='before').")
    results: dict = {}
    out_json = {"command": command, "machine": machine,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "datasets": results}
    t_all = time.perf_counter()
    try:
        for data in args.datasets:
            ds = data_settings(args, data)
            say(f"\n[{data}] {ds.arch} width {ds.width} depth {ds.depth}, batch {ds.batch}, {ds.steps} steps per "
                f"network, snapshot every {ds.snapshot_every}, SDE {args.sde}, eps {args.eps}, seeds {ds.seeds}, "
                f"T {args.Ts}, priors {args.priors} (fit budget {args.prior_steps} steps)")
            records = []
            for seed in range(ds.seeds):
                seed_records = []
                for T in sorted(args.Ts, reverse=True):  # T = 1 first: the target of the seed
                    cfg = train_config(args, ds, T, seed, runs_dir / data / f"T={T:g}" / f"seed{seed}")
                    load = os.getloadavg()[0]
                    t0 = time.perf_counter()
                    summary, reused = train_run(cfg, args.reuse)
                    say(f"  seed {seed} T={T:g}: trained {summary['train_seconds']:.1f} s "
                        f"(elapsed {time.perf_counter() - t0:.1f} s, load {load:.2f}){' (reused)' if reused else ''}")
                    t0 = time.perf_counter()
                    recs = evaluate_network(args, ds, cfg, summary, args.priors, device, say)
                    for r in recs:
                        r["loadavg_before_training"] = load
                        r["train_reused"] = reused
                    seed_records += recs
                    say(f"    evaluated in {time.perf_counter() - t0:.1f} s")
                t0 = time.perf_counter()
                time_sampling(args, ds, seed_records, device)
                records += seed_records
                say(f"  seed {seed}: sampling re-timed round-robin ({args.timing_repeats} more round(s), fastest kept) "
                    f"in {time.perf_counter() - t0:.1f} s")
            # time-to-quality: the baseline first (its final quality is the target of its seed)
            t0 = time.perf_counter()
            n_eval = 0
            for seed in range(ds.seeds):
                base = next(r for r in records if r["seed"] == seed and r["T"] == 1.0 and r["prior"] == "standard")
                base["target"] = args.target_slack * base["final_quality"]
                for r in records:
                    timed = r is base or (r["T"] <= args.ttq_max_T and r["prior"] in args.ttq_priors)
                    if r["seed"] == seed and timed:
                        r["curve"] = quality_curve(args, ds, r, base["target"], device)
                        n_eval += len(r["curve"])
            time_to_target(records, say)
            say(f"  {n_eval} curve points in {time.perf_counter() - t0:.1f} s")
            data_reference = {}
            for seed in range(ds.seeds):
                ref_cfg = train_config(args, ds, 1.0, seed, runs_dir / "unused")
                tr, te = split_data(ref_cfg)
                data_reference[seed] = quality(metric_name(tr), tr.x[:ds.eval_n],
                                               quality_reference(ref_cfg, ds, args, te))
            summary = summarise(ds, records, args.Ts, args.priors, args, data_reference)
            for r in records:
                for k in ("_prior", "_model", "_shape", "logp"):  # per-point log-likelihoods: used above only
                    r.pop(k, None)
            results[data] = {"settings": asdict(ds), "records": records, "summary": summary}
            report_dataset(summary, ds, args, say)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    plot_results(results, args.out, say)
    machine["loadavg_end"] = os.getloadavg()
    out_json["total_seconds"] = time.perf_counter() - t_all
    say(f"total {out_json['total_seconds']:.0f} s; load average at end "
        f"{', '.join(f'{x:.2f}' for x in machine['loadavg_end'])}")
    write_results(args.out, out_json, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
