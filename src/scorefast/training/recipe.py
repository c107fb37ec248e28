"""The one place that composes the plug-ins into a run: jobs -> launcher -> fit -> assemble -> finish.

    summary = train(Config(data="moons", out="runs/moons", steps=4000))

The run is checked before anything is written (``context``). The partition says which networks to train (one
per interval; a single network is one interval); each is trained by ``loop.fit`` on its ``objective.Objective``
(the target's goal, the time sampler, the weighting and the coupling), with the hooks of ``hooks``. A prior at T
is fitted before, alongside or after training, as the prior plug-in says (``prior_fit``). Networks run one after
another here, or side by side under torchrun (``launcher``; the worker is ``scorefast.distributed``), and are
assembled by the partition into the model that is sampled and evaluated at the end."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__, fid
from ..checkpoint import atomic_write, load_checkpoint
from ..choices import DATASETS
from ..config import Config
from ..config.recipes import RECIPES
from ..data import to_model
from ..errors import UserError
from ..evaluate import Evaluator, metric_name, sample_steps
from ..methods.partitions import Job
from ..run import RunDir, new_model
from ..time_sampling import FixedTime
from . import launcher
from .context import RunContext, context
from .hooks import AdaptTimes, Checkpointer, MetricsLog, PeriodicMetric, PostHocEMA, Progress, Snapshots, TensorBoard
from .interrupt import Interrupt, Interrupted
from .loop import Budget, Diverged, RandomBatches, TrainState, fit, rng_state, set_rng_state
from .optim import EMA, Optimiser, posthoc_emas
from .prior_fit import PriorFit, prior_for_eval
from .systems import training_step


@dataclass
class Group:
    """The data-parallel process group that trains one network under torch.distributed."""

    handle: object
    rank: int
    size: int

    @property
    def device(self) -> torch.device:
        """Where the group's collectives run: nccl reduces CUDA tensors only (this rank's device), gloo CPU ones."""
        import torch.distributed as dist
        nccl = dist.get_backend(self.handle) == "nccl"
        return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def agree(self, wall: float, stop: bool) -> tuple[float, bool]:
        """The group's largest wall-clock and whether any rank was asked to stop."""
        import torch.distributed as dist
        v = torch.tensor([wall, float(stop)], dtype=torch.float64, device=self.device)
        dist.all_reduce(v, op=dist.ReduceOp.MAX, group=self.handle)
        return float(v[0]), bool(v[1])

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of ``values`` over the group's ranks (on the device ``values`` are on)."""
        import torch.distributed as dist
        out = values.to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.handle)
        return out.to(values.device)

    def gather(self, value: object) -> list:
        """Every rank's ``value`` (any picklable state), in rank order: what differs between ranks (random
        states, a time sampler's local draw counts) is checkpointed per rank, so that a resumed group draws what
        it would have."""
        import torch.distributed as dist
        states: list = [None] * self.size
        dist.all_gather_object(states, value, group=self.handle)
        return states


def train_network(ctx: RunContext, job: Job, group: Group | None = None, *, steps: int | None = None,
                  init: dict | None = None, evaluate: bool = True, progress: bool = True,
                  interrupt: Interrupt | None = None) -> dict:
    """Train (or resume) the network of ``job``; returns its summary.

    ``steps`` overrides the run's budget (the shared warm-start network), ``init`` is a state dict to
    start from. Checkpoints go to checkpoints/net-{index}.pt; the periodic metric needs a whole model, so
    it is computed only for a run's single network, by the rank that writes. When it is evaluated after
    the budget's last step, its samples are the final model's under the final protocol, so the summary keeps
    them (``final``: samples, seconds, metric) for :func:`finish` to reuse. With ``interrupt``, a signal
    stops the loop after its current step, whose checkpoint is saved, and raises :class:`Interrupted`."""
    interrupt = interrupt or Interrupt()
    cfg, run, sde = ctx.cfg, ctx.run, ctx.sde
    rank, size = (group.rank, group.size) if group else (0, 1)
    writer = rank == 0
    torch.manual_seed(cfg.optim.seed * 1000 + (job.index if isinstance(job.index, int) else 997) * 17 + rank)
    data = ctx.train.data.to(ctx.device)  # as stored (uint8 images stay uint8): converted one batch at a time
    began = time.perf_counter()
    times = FixedTime(job.fixed_t) if job.fixed_t is not None else \
        cfg.time_sampler.bind(sde, job.t_min, job.t_max).spread(rank, size)
    probe = None
    if hasattr(times, "update"):  # a sampler that learns from a held-out bound: keep its probe set out of training
        data, probe = probe_split(data, cfg.time_sampler.adapt_probe, cfg.optim.seed)
        probe = to_model(probe, ctx.train.levels)
    started = time.perf_counter()
    goal, info = cfg.target.precompute(sde, to_model(data, ctx.train.levels), progress=progress and writer)
    info = {"method": cfg.target.name, **info, "precompute_seconds": time.perf_counter() - started}
    precompute = time.perf_counter() - began
    single = not cfg.partition.piecewise and steps is None
    if single and cfg.prior.fit == "before" and run.prior_path.exists():
        precompute += float(load_checkpoint(run.prior_path)["fit"].get("seconds", 0.0))

    model = new_model(cfg, sde, ctx.train.shape, cfg.partition.time_conditioned, ctx.sigma_data).to(ctx.device)
    if init is not None:
        model.load_state_dict(init)
    state = TrainState(model, EMA(model, cfg.ema_profile), wall=precompute)
    optimiser = Optimiser(model.parameters(), cfg.optim.lr, cfg.optim.warmup, cfg.optim.grad_clip, cfg.lr_schedule,
                          steps or cfg.budget.max_steps, beta2=cfg.optim.adam_beta2)
    path = run.checkpoint(job.index)
    if path.exists():
        saved = load_checkpoint(path)
        state.load_state_dict(saved)
        optimiser.load_state_dict(saved["optimizer"])
        per_rank = size > 1 and len(saved.get("rng_ranks", ())) == size
        times.load_state_dict(saved["times_ranks"][rank] if per_rank and "times_ranks" in saved
                              else saved.get("times", {}))
        if per_rank:
            set_rng_state(saved["rng_ranks"][rank], model)
    objective: torch.nn.Module = cfg.objective.build(model, sde, goal, times, cfg.weighting.bind(ctx.sigma_data))
    if size > 1:
        objective = torch.nn.parallel.DistributedDataParallel(objective, process_group=group.handle)
    objective = training_step(objective, ctx.device, cfg.launch.precision, cfg.launch.compile)
    budget = Budget(steps=steps or cfg.budget.max_steps, seconds=None if steps else cfg.budget.time_budget,
                    stop=lambda: interrupt.requested, agree=group.agree if size > 1 else None)

    def collect(done: bool) -> dict:
        extra = {"rng_ranks": group.gather(rng_state(model)),
                 "times_ranks": group.gather(times.state_dict())} if size > 1 else {}
        return {**state.state_dict(), **extra, "optimizer": optimiser.state_dict(), "times": times.state_dict(),
                "hooks": {type(h).__name__: h.state_dict() for h in hooks}, "done": done, "t_min": job.t_min,
                "t_max": job.t_max, "fixed_t": job.fixed_t, "precompute": info}

    def periodic() -> dict | None:
        prior = prior_for_eval(ctx, cache)
        if prior is False:
            return None
        ev = evaluator(ctx)
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            began = time.perf_counter()
            samples = ev.samples(state.ema.model, sde, ctx.test.shape, prior, ctx.device)
            seconds = time.perf_counter() - began
            row = ev.score(samples, ctx.test)
        if budget.complete(state):
            final.update(samples=samples, seconds=seconds, **row)
        return row

    cache: dict = {}
    final: dict = {}
    checkpointer = Checkpointer(path, cfg.log.ckpt_every, collect, budget.complete, writer)
    adapt = [] if probe is None else \
        [AdaptTimes(times, lambda: times.bound(model, sde, probe, cfg.optim.seed), cfg.time_sampler.adapt_every,
                    group.total if size > 1 else None)]
    hooks = [*adapt, PeriodicMetric(cfg.log.eval_every, periodic if (single and evaluate and writer) else lambda: None,
                                    cfg.log.eval_budget),
             Snapshots(lambda s: run.snapshot(job.index, s), cfg.log.snapshot_every, writer),
             *([PostHocEMA(posthoc_emas(model), lambda s: run.posthoc_snapshot(job.index, s), cfg.log.posthoc_ema_every,
                           writer)] if cfg.log.posthoc_ema_every else []),
             checkpointer,
             MetricsLog(run.append_metrics, cfg.log.eval_every, job.index, writer),
             *([TensorBoard(run.path / "tensorboard", cfg.log.eval_every, job.index, writer)]
               if cfg.log.tensorboard else []),
             Progress(budget.steps, f"train net {job.index}" if cfg.partition.piecewise else "train",
                      progress and writer, budget.seconds, cfg.log.eval_budget)]
    for hook in hooks:
        hook.load_state_dict(saved.get("hooks", {}).get(type(hook).__name__, {}) if path.exists() else {})
    batches = map(ctx.to_model, RandomBatches(data, max(1, cfg.optim.batch_size // size)))
    try:
        with interrupt.deferred():
            fit(state, objective, batches, optimiser, budget, hooks)
    except Diverged as exc:
        kept = "no checkpoint was written yet" if checkpointer.saved_step is None else \
            f"the last good checkpoint (step {checkpointer.saved_step}) is kept in {path.parent}"
        raise UserError(f"{exc} (net {job.index}); {kept}") from None
    if interrupt.requested and not budget.complete(state):
        raise Interrupted(interrupt.signum, f"the checkpoint of step {state.step} is saved in {path.parent}")
    return {"index": job.index, "step": state.step, "wall": state.wall, "loss": state.loss, "precompute": info,
            "precompute_seconds": precompute, "final": final or None}


def evaluator(ctx: RunContext) -> Evaluator:
    """The run's evaluation protocol, one for the periodic metric and the final samples (so that the first's samples
    after the last step are the second's); its metric is named for the training data, whose held-out part may be
    too small to tell (``evaluate.metric_name``)."""
    return Evaluator.of_run(ctx.cfg.log, metric=metric_name(ctx.train, ctx.cfg.log.eval_metric),
                            levels=ctx.to_model.sample_levels)


def probe_split(x: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training part, probe set): ``size`` examples (at most a tenth) set aside by a seeded permutation."""
    n = min(size, max(1, x.shape[0] // 10))
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 4242)).to(x.device)
    return x[order[n:]], x[order[:n]]


def warm_start(ctx: RunContext, progress: bool, interrupt: Interrupt | None = None) -> dict | None:
    """The EMA weights of the shared network of a warm-started piecewise run (trained once, then split)."""
    partition = ctx.cfg.partition
    if not (partition.piecewise and partition.warm_start):
        return None
    path = ctx.run.checkpoint("warm")
    if not (path.exists() and load_checkpoint(path).get("done")):
        train_network(ctx, Job("warm", ctx.edges[0], ctx.edges[-1]), steps=partition.warm_start, progress=progress,
                      interrupt=interrupt)
    return load_checkpoint(path)["ema"]


def jobs(ctx: RunContext, indices: list[int] | None = None) -> list[Job]:
    """The networks of a run (all, or those of the given interval indices)."""
    every = ctx.cfg.partition.jobs(ctx.edges)
    return every if indices is None else [every[k] for k in indices]


def train(cfg: Config | dict, resume: bool = False, given: set[str] | None = None, progress: bool = True) -> dict:
    """Train a model as configured and write its run directory; returns the summary dict.

    ``resume`` continues the run in ``cfg.log.out`` from its latest checkpoints; only the flags the caller
    gave (``cfg.given``, or ``given``) are taken from ``cfg``, and only budgets, logging and launch may change.
    """
    if isinstance(cfg, dict):
        cfg = Config(**cfg)
    if given is not None:
        cfg = cfg.replace()
        cfg.given = frozenset(given)
    cfg.validate()
    run = RunDir(cfg.log.out)
    if resume:
        cfg = run.resume(cfg)
    else:
        run.check_new()
    threads = torch.get_num_threads()
    if cfg.launch.threads:
        torch.set_num_threads(cfg.launch.threads)
    try:
        ctx = context(cfg, run)
        with run.lock(new=not resume):
            return _train(ctx, resume, progress)
    finally:
        torch.set_num_threads(threads)


def _train(ctx: RunContext, resume: bool, progress: bool) -> dict:
    """The steps of :func:`train` that write, once the run is checked and its directory held."""
    cfg, run = ctx.cfg, ctx.run
    if resume:
        run.tidy()
    run.write_config(cfg, ctx.train)
    if progress:
        print(f"scorefast: recipe '{cfg.recipe.name}': {RECIPES[cfg.recipe.name].description}", file=sys.stderr)
    began = time.perf_counter()
    trained: list[dict] = []
    with Interrupt() as interrupt:
        init = warm_start(ctx, progress, interrupt)
        prior = PriorFit(ctx, progress)
        prior.start()
        if cfg.launch.workers > 1:
            launcher.launch(cfg, run.path)
        else:
            trained = [train_network(ctx, job, init=init, progress=progress, interrupt=interrupt) for job in jobs(ctx)]
        prior.finish()
    drawn = trained[0]["final"] if len(trained) == 1 else None
    return finish(ctx, progress, elapsed=time.perf_counter() - began, drawn=drawn)


def prepare(cfg: Config) -> Path:
    """Check a new run and write its directory without training (for an external torchrun)."""
    cfg.validate()
    run = RunDir(cfg.log.out)
    run.check_new()
    ctx = context(cfg, run)
    with run.lock(new=True):
        run.write_config(ctx.cfg, ctx.train)
    return run.path


def finish(ctx: RunContext, progress: bool = True, elapsed: float | None = None, drawn: dict | None = None) -> dict:
    """Assemble the trained model, sample with it, evaluate, plot, and write summary.json. ``drawn`` (samples,
    seconds, metric) are the samples the periodic metric drew after the last step, from the same model under the
    same protocol: they are used as they are, not drawn again."""
    from ..plots import plot_metrics, plot_samples
    cfg, run, sde = ctx.cfg, ctx.run, ctx.sde
    states = [load_checkpoint(run.checkpoint(k)) for k in range(len(ctx.edges) - 1)]
    if drawn is None:
        model = run.load_model(cfg, sde, ctx.train.shape).to(ctx.device)
        ev = evaluator(ctx)
        t0 = time.perf_counter()
        samples = ev.samples(model, sde, ctx.train.shape, prior_for_eval(ctx, {}), ctx.device)
        drawn = {"samples": samples, "seconds": time.perf_counter() - t0, **ev.score(samples, ctx.test)}
    samples, name = drawn["samples"], drawn["metric_name"]
    summary = {"run": str(run.path), "data": cfg.data.spec, "shape": list(ctx.train.shape), "method": cfg.target.name,
               "sde": cfg.sde.name, "T": cfg.sde.T, "prior": cfg.prior.name, "partition": cfg.partition.name,
               "networks": len(states), "steps": [int(s["step"]) for s in states],
               "train_seconds": sum(float(s["wall"]) for s in states),
               "max_network_seconds": max(float(s["wall"]) for s in states), "elapsed_seconds": elapsed,
               "metric_name": name, "metric": drawn["metric"], "sample_seconds": drawn["seconds"],
               "eval_samples": cfg.log.eval_samples, "eval_steps": sample_steps(cfg.log.eval_steps, sde),
               "scorefast_version": __version__}
    if note := fid.note(name, cfg.log.eval_samples):
        summary["metric_note"] = note
    summary.update(final_fid(ctx, samples, name, progress))
    if run.prior_path.exists():
        summary["prior_fit"] = load_checkpoint(run.prior_path).get("fit")
    atomic_write(run.path / "samples.npy", lambda f: np.save(f, samples.numpy()), what="samples")
    plot_samples(samples.numpy(), run.path / "samples.png", title=f"{cfg.data.spec}: {cfg.target.name}, T={cfg.sde.T}",
                 reference=ctx.test.x.numpy() if ctx.train.kind == "points" else None)
    plot_metrics(run.metrics(), run.path / "metrics.png")
    run.write_summary(summary)
    return summary


def final_fid(ctx: RunContext, samples: torch.Tensor, metric: str, progress: bool = True) -> dict:
    """The standard FID of the first final samples against as many held-out images, as many as the built-in data set
    declares (``fid_samples`` in ``choices.DATASETS``: mnist), for the summary ('fid', 'fid_samples',
    'fid_seconds', 'fid_note' below 2,048 samples); without the FID extra only a note saying how to get it. Nothing
    for other data, or when the periodic metric is the FID already."""
    spec = ctx.cfg.data.spec
    declared = DATASETS.tag(spec, "fid_samples") if spec in DATASETS else None
    n = min(declared or 0, len(samples), len(ctx.test))
    if n < 2 or metric == "fid":
        return {}
    if not fid.available():
        return {"fid_note": f"no standard FID: it needs the Inception network, {fid.INSTALL}"}
    if progress:
        print(f"scorefast: the standard FID of {n} samples (Inception: about 0.2 s an image on 2 CPU cores; the "
              "held-out images' features are cached after the first run)", file=sys.stderr)
    began = time.perf_counter()
    value = fid.fid(samples[:n], ctx.test.x[:n], progress=progress and sys.stderr.isatty())
    out = {"fid": value, "fid_samples": n, "fid_seconds": time.perf_counter() - began}
    note = fid.note("fid", n)
    return {**out, "fid_note": note} if note else out


__all__ = ["Group", "finish", "jobs", "prepare", "train", "train_network"]
