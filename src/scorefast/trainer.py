"""The trainer and the run directory.

One loop trains one score network on a time range [t_min, t_max]; every method plugs into it rather
than forking it:
- score embedding supplies the loss (a target provider) through ``methods.embedding.make_loss``;
- shorter diffusion times set t_max = T < 1 and fit an auxiliary prior at T (``methods.truncation``);
- parallel score matching runs the loop once per interval (queued here, or side by side on
  torch.distributed, see ``distributed``) and assembles a piecewise model (``methods.parallel``).

A run directory holds everything needed to resume, sample, evaluate and re-plot:

    config.json      the resolved configuration (and the scorefast version that wrote it)
    metrics.jsonl    one JSON object per log line: step, wall (training seconds, precomputation
                     included: FP solve, a prior fitted before training; evaluation excluded), loss,
                     and the periodic metric
    checkpoints/     net-K.pt per network (weights, EMA, optimiser, RNG, step, wall), prior.pt
    snapshots/       net-K-STEP.pt: EMA weights every --snapshot-every steps (for quality-vs-time curves)
    samples.npy / samples.png / metrics.png / summary.json
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .data import Dataset, load_data
from .errors import UserError
from .losses import WEIGHTINGS, DSMLoss
from .nets import PARAMETERISATIONS, make_model
from .sampling import SAMPLERS, sample
from .sde import SDE, SDES, make_sde

RUN_FORMAT = 1
METHODS = ("dsm", "fp-embed", "fp-regress", "empirical")
PRIORS = ("standard", "gaussian", "gmm", "flow")
PRIOR_FIT = ("before", "alongside", "after")
PARTITIONS = ("logsnr", "equal")
# Fields that define what a run IS: a resumed run may not change them.
LOCKED = ("data", "n_data", "sde", "T", "eps", "param", "arch", "width", "depth", "method", "weighting",
          "prior", "intervals", "edges", "partition", "per_time_point", "fp_variant")


@dataclass
class TrainConfig:
    """Everything a training run needs; every field is a CLI flag of ``scorefast train``."""

    data: str = "moons"
    out: str = "runs/run"
    steps: int | None = 2000
    time_budget: float | None = None
    sde: str = "vp"
    T: float = 1.0
    eps: float = 1e-3
    seed: int = 0
    n_data: int | None = None
    batch_size: int = 512
    lr: float = 1e-3
    warmup: int = 0
    ema: float = 0.999
    grad_clip: float | None = 1.0
    param: str = "eps"
    arch: str = "auto"
    width: int | None = None
    depth: int = 3
    weighting: str = "epsilon"
    method: str = "dsm"
    eval_every: int = 500
    eval_samples: int = 2000
    eval_steps: int = 100
    sampler: str = "ode"
    ckpt_every: int = 500
    snapshot_every: int = 0
    threads: int | None = None
    device: str = "auto"
    # score embedding
    fp_grid: int = 129
    fp_steps: int = 48
    bandwidth: float | None = None
    fp_variant: str = "sound"
    reference_size: int = 1024
    # shorter diffusion times
    prior: str = "standard"
    prior_fit: str = "alongside"
    prior_steps: int = 2000
    # parallel score matching
    intervals: int = 1
    edges: str | None = None
    partition: str = "logsnr"
    per_time_point: int = 0
    workers: int = 1
    max_restarts: int = 0
    warm_start: int = 0
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise UserError (one line) for any value out of range, before anything is written."""
        def bad(msg):
            raise UserError(msg)
        if self.steps is None and self.time_budget is None:
            bad("give --steps or --time-budget")
        if self.steps is not None and self.steps < 1:
            bad(f"--steps must be >= 1, got {self.steps}")
        if self.time_budget is not None and self.time_budget <= 0:
            bad(f"--time-budget must be > 0 seconds, got {self.time_budget}")
        base = self.sde.split("-")[0]
        if base not in SDES:
            bad(f"unknown SDE '{self.sde}'; choose one of vp, subvp, ve, vp-psm, ve-power")
        if not (0 < self.eps < 0.1):
            bad(f"--eps must be in (0, 0.1), got {self.eps}")
        if not (self.eps < self.T <= 1.0):
            bad(f"--T must be in ({self.eps}, 1], got {self.T}")
        if self.batch_size < 1:
            bad(f"--batch-size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad(f"--lr must be > 0, got {self.lr}")
        if not (0 <= self.ema < 1):
            bad(f"--ema must be in [0, 1), got {self.ema}")
        choices_of = [("param", self.param, PARAMETERISATIONS), ("weighting", self.weighting, WEIGHTINGS),
                      ("method", self.method, METHODS), ("sampler", self.sampler, SAMPLERS),
                      ("prior", self.prior, PRIORS), ("prior-fit", self.prior_fit, PRIOR_FIT),
                      ("partition", self.partition, PARTITIONS), ("arch", self.arch, ("auto", "mlp", "unet")),
                      ("fp-variant", self.fp_variant, ("sound", "paper"))]
        for name, value, choices in choices_of:
            if value not in choices:
                bad(f"unknown --{name} '{value}'; choose one of {', '.join(sorted(choices))}")
        for name in ("eval_every", "ckpt_every", "eval_samples", "eval_steps", "intervals", "workers"):
            if getattr(self, name) < 1:
                bad(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("per_time_point", "warm_start", "warmup", "max_restarts", "snapshot_every"):
            if getattr(self, name) < 0:
                bad(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            bad(f"--threads must be >= 1, got {self.threads}")

    @property
    def piecewise(self) -> bool:
        return self.intervals > 1 or self.edges is not None or self.per_time_point > 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown configuration key(s): {', '.join(unknown)}")
        return cls(**d)


# -- run directory --------------------------------------------------------------------------------

def _read_config(run: Path) -> dict:
    path = run / "config.json"
    if not path.is_file():
        raise UserError(f"run directory '{run}': no config.json (not a scorefast run, or it never started)")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"run directory '{run}': config.json is corrupt ({exc.msg if hasattr(exc, 'msg') else exc})") \
            from None
    if saved.get("run_format") != RUN_FORMAT:
        raise UserError(f"run directory '{run}': written by an incompatible scorefast "
                        f"(run format {saved.get('run_format')}, this version reads {RUN_FORMAT})")
    return saved


def prepare_run(cfg: TrainConfig, resume: bool, given: set[str] | None = None) -> TrainConfig:
    """Create a fresh run directory, or check that a resumed one is compatible.

    A fresh run refuses an existing run directory (nothing is overwritten); a resumed run keeps its
    saved configuration, and may only change budgets and logging (``given`` = fields set by the user).
    """
    run = Path(cfg.out)
    if resume:
        saved = _read_config(run)
        saved_cfg = TrainConfig.from_dict(saved["config"])
        for name in sorted(given or ()):
            if name in LOCKED and getattr(cfg, name) != getattr(saved_cfg, name):
                raise UserError(f"--resume: --{name.replace('_', '-')} {getattr(cfg, name)} differs from the run's "
                                f"saved {getattr(saved_cfg, name)}; start a new run with another --out")
        merged = saved_cfg.to_dict()
        merged.update({k: getattr(cfg, k) for k in (given or ()) if k not in LOCKED})
        merged["out"] = str(run)
        cfg = TrainConfig.from_dict(merged)
        cfg.validate()
        write_json(run / "config.json", {"run_format": RUN_FORMAT, "scorefast_version": __version__,
                                         "config": cfg.to_dict()})
        return cfg
    if (run / "config.json").exists() or (run.is_dir() and any(run.iterdir())):
        raise UserError(f"run directory '{run}' already exists and is not empty; use --resume to continue it "
                        "or choose another --out")
    return cfg


def _write_config(cfg: TrainConfig) -> None:
    write_json(Path(cfg.out) / "config.json", {"run_format": RUN_FORMAT, "scorefast_version": __version__,
                                               "config": cfg.to_dict()})


def _append_metrics(run: Path, row: dict) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


# -- building blocks ------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device '{name}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    return dev


def build_sde(cfg: TrainConfig) -> SDE:
    return make_sde(cfg.sde, T=cfg.T, eps=cfg.eps)


def load_dataset(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """The data set split into train and held-out parts (the split is seeded, so reproducible)."""
    ds = load_data(cfg.data, n=cfg.n_data, seed=cfg.seed)
    if len(ds) < 10:  # memorisation runs: train and evaluate on the same few examples
        train, test = ds, ds
    else:
        train, test = ds.split(0.2, seed=cfg.seed)
    if cfg.batch_size > len(train):
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training examples of "
                        f"'{cfg.data}'")
    return train, test


def metric_name(ds: Dataset) -> str:
    return "digits_fd" if ds.name == "digits" else "swd"


def quality(name: str, samples: torch.Tensor, reference: torch.Tensor) -> float:
    """The cheap periodic metric: digits Frechet distance for digits, sliced Wasserstein otherwise."""
    from . import metrics
    if name == "digits_fd":
        return float(metrics.digits_frechet(samples.clamp(-1, 1), reference))  # pixels live in [-1, 1]
    return float(metrics.sliced_wasserstein(samples.flatten(1), reference.flatten(1), seed=0))


def _make_loss(cfg: TrainConfig, sde: SDE, x: torch.Tensor, t_min: float, t_max: float, progress: bool = True):
    """The loss object for one network on [t_min, t_max], and what its precomputation cost."""
    if cfg.method == "dsm":
        return DSMLoss(sde, cfg.weighting, t_min, t_max), {"precompute_seconds": 0.0}
    from .methods.embedding import make_loss
    return make_loss(cfg.method, sde, x, t_min=t_min, t_max=t_max, weighting=cfg.weighting, grid=cfg.fp_grid,
                     fp_steps=cfg.fp_steps, bandwidth=cfg.bandwidth, variant=cfg.fp_variant,
                     reference_size=cfg.reference_size, seed=cfg.seed, progress=progress)


def _new_model(cfg: TrainConfig, sde: SDE, shape, time_conditioned: bool = True):
    return make_model(sde, tuple(shape), cfg.param, arch=cfg.arch, width=cfg.width, depth=cfg.depth,
                      time_conditioned=time_conditioned)


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def edges_for(cfg: TrainConfig, sde: SDE) -> list[float]:
    """Interval edges of a piecewise run (one interval [eps, T] otherwise)."""
    if not cfg.piecewise:
        return [sde.eps, sde.T]
    from .methods import parallel
    if cfg.edges is not None:
        edges = parallel.parse_edges(cfg.edges, sde.eps, sde.T)
    elif cfg.per_time_point:
        edges = parallel.partition("equal", cfg.per_time_point, sde.eps, sde.T, sde)
    else:
        edges = parallel.partition(cfg.partition, cfg.intervals, sde.eps, sde.T, sde)
    if cfg.steps is not None:
        parallel.check_partition(edges, cfg.steps)
    return edges


class LossModule(torch.nn.Module):
    """model + loss as one module, so that DistributedDataParallel sees the whole step in forward."""

    def __init__(self, model: torch.nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, x0)


def _group_max(value: float, job: NetworkJob) -> float:
    """The largest value over a data-parallel group, so that all its ranks stop at the same step."""
    if job.group_size == 1:
        return value
    import torch.distributed as dist
    v = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(v, op=dist.ReduceOp.MAX, group=job.group)
    return float(v)


# -- one network ----------------------------------------------------------------------------------

@dataclass
class NetworkJob:
    """One network to train: its index, its time range, and (under torch.distributed) its group."""

    index: int | str
    t_min: float
    t_max: float
    group: object = None
    rank_in_group: int = 0
    group_size: int = 1
    fixed_t: float | None = None
    init_state: dict | None = None


def train_network(cfg: TrainConfig, job: NetworkJob, train_ds: Dataset, test_ds: Dataset | None,
                  progress: bool = True) -> dict:
    """Train (or resume) one network on [job.t_min, job.t_max]; returns its summary.

    Checkpoints go to checkpoints/net-{index}.pt every ``ckpt_every`` steps and at the end; the
    periodic metric (needs a whole model) is computed only for single-network runs.
    """
    run = Path(cfg.out)
    device = resolve_device(cfg.device)
    sde = build_sde(cfg)
    ckpt_path = run / "checkpoints" / f"net-{job.index}.pt"
    is_writer = job.rank_in_group == 0
    net_seed = job.index if isinstance(job.index, int) else 997  # the shared warm-start network
    torch.manual_seed(cfg.seed * 1000 + net_seed * 17 + job.rank_in_group)
    x_train = train_ds.x.to(device)
    t_wall0 = time.perf_counter()
    if job.fixed_t is not None:
        from .methods.parallel import interval_loss
        loss_fn, info = interval_loss(sde, [job.t_min, job.t_max], 0, cfg.weighting, fixed_t=job.fixed_t), {}
    else:
        loss_fn, info = _make_loss(cfg, sde, x_train, job.t_min, job.t_max, progress and is_writer)
    precompute = time.perf_counter() - t_wall0
    prior_path = run / "checkpoints" / "prior.pt"
    if cfg.prior_fit == "before" and needs_prior(cfg) and prior_path.exists() and not cfg.piecewise:
        precompute += float(load_checkpoint(prior_path)["fit"].get("seconds", 0.0))

    model = _new_model(cfg, sde, train_ds.shape, time_conditioned=job.fixed_t is None).to(device)
    if job.init_state is not None:
        model.load_state_dict(job.init_state)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, wall, loss_avg = 0, precompute, None
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, wall, loss_avg = int(state["step"]), float(state["wall"]), state.get("loss_avg")
        torch.set_rng_state(state["rng"])
    start_step = step
    step_loss: torch.nn.Module = LossModule(model, loss_fn)
    if job.group_size > 1:
        step_loss = torch.nn.parallel.DistributedDataParallel(step_loss, process_group=job.group)

    def checkpoint(done: bool = False) -> None:
        if not is_writer:
            return
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "ema": ema.state_dict(),
                                    "optimizer": opt.state_dict(), "step": step, "wall": wall,
                                    "loss_avg": loss_avg, "rng": torch.get_rng_state(), "done": done,
                                    "t_min": job.t_min, "t_max": job.t_max, "fixed_t": job.fixed_t,
                                    "precompute": info})

    mname = metric_name(train_ds)
    single = not cfg.piecewise
    prior_cache: dict = {}
    per_rank_batch = max(1, cfg.batch_size // job.group_size)
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and is_writer), dynamic_ncols=True,
               desc=f"train net {job.index}" if cfg.piecewise else "train")
    last_good = step
    while True:
        if cfg.steps is not None and step >= cfg.steps:
            break
        if cfg.time_budget is not None and _group_max(wall, job) >= cfg.time_budget:
            break
        t0 = time.perf_counter()
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, x_train.shape[0], (per_rank_batch,), device=device)
        loss = step_loss(x_train[idx]).mean()
        if not torch.isfinite(loss):
            bar.close()
            raise UserError(f"training diverged at step {step + 1} (net {job.index}): the loss is {loss.item()}; "
                            f"the last good checkpoint (step {last_good}) is kept in {ckpt_path.parent}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        _ema_update(ema, model, min(cfg.ema, (1 + step) / (10 + step)))
        lv = loss.item()
        loss_avg = lv if loss_avg is None else 0.98 * loss_avg + 0.02 * lv
        wall += time.perf_counter() - t0
        bar.update()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss_avg:.4f}")
        done = cfg.steps is not None and step >= cfg.steps
        last = done or (cfg.time_budget is not None and _group_max(wall, job) >= cfg.time_budget)
        row = None
        if step % cfg.eval_every == 0 or last:
            row = {"step": step, "wall": round(wall, 4), "loss": loss_avg, "net": job.index, "time": time.time()}
            prior, ready = _prior_for_eval(cfg, sde, prior_cache)
            if single and test_ds is not None and is_writer and ready:
                row["metric"] = quality(mname, _eval_samples(cfg, ema, sde, train_ds.shape, device, prior),
                                        test_ds.x)
                row["metric_name"] = mname
                bar.set_postfix(loss=f"{loss_avg:.4f}", **{mname: f"{row['metric']:.4f}"})
        if cfg.snapshot_every and step % cfg.snapshot_every == 0 and is_writer:
            save_checkpoint(run / "snapshots" / f"net-{job.index}-{step:08d}.pt",
                            {"ema": ema.state_dict(), "step": step, "wall": wall, "time": time.time()})
        if step % cfg.ckpt_every == 0 or last:
            checkpoint(done=done)
            last_good = step
        if row is not None and is_writer:
            _append_metrics(run, row)
    bar.close()
    if step > start_step:
        checkpoint(done=cfg.steps is not None and step >= cfg.steps)
    return {"index": job.index, "step": step, "wall": wall, "loss": loss_avg, "precompute": info,
            "precompute_seconds": precompute}


def _prior_for_eval(cfg: TrainConfig, sde: SDE, cache: dict):
    """(prior, ready): the fitted prior at T once it exists; the periodic metric waits for it, since
    samples from the reference prior at T < 1 would misstate the quality."""
    if not needs_prior(cfg):
        return None, True
    if "prior" not in cache:
        if not (Path(cfg.out) / "checkpoints" / "prior.pt").exists():
            return None, False
        cache["prior"] = load_prior(cfg, Path(cfg.out), sde)
    return cache["prior"], True


def sample_steps(steps_at_T1: int, sde: SDE) -> int:
    """Steps for [eps, T] at the step size that ``steps_at_T1`` steps have on [eps, 1]: a truncated
    diffusion samples in about T of the steps."""
    return max(1, round(steps_at_T1 * (sde.T - sde.eps) / (1.0 - sde.eps)))


def _eval_samples(cfg: TrainConfig, model, sde: SDE, shape, device, prior=None) -> torch.Tensor:
    """Fixed-seed samples for the periodic metric (its own generator: training RNG is untouched)."""
    g = torch.Generator(device=device).manual_seed(12345)
    model.eval()
    out = sample(model, sde, cfg.eval_samples, tuple(shape), sampler="ode", steps=sample_steps(cfg.eval_steps, sde),
                 prior=prior, generator=g, device=device, progress=False)
    model.train()
    return out.cpu()


# -- the whole run --------------------------------------------------------------------------------

def _fit_prior(cfg: TrainConfig, sde: SDE, train_ds: Dataset, progress: bool):
    from .methods.truncation import make_prior
    prior = make_prior(cfg.prior, train_ds.dim, sde)
    info = prior.fit(train_ds.x.flatten(1), sde, steps=cfg.prior_steps, seed=cfg.seed, progress=progress)
    save_checkpoint(Path(cfg.out) / "checkpoints" / "prior.pt",
                    {"prior": cfg.prior, "dim": train_ds.dim, "config": prior.config(), "state": prior.state_dict(),
                     "fit": info})
    return prior, info


def needs_prior(cfg: TrainConfig) -> bool:
    return cfg.prior != "standard" or cfg.T < 1.0


def train(cfg: TrainConfig | dict, resume: bool = False, given: set[str] | None = None,
          progress: bool = True) -> dict:
    """Train a model as configured and write its run directory; returns the summary dict.

    ``resume`` continues from the latest checkpoints of an existing run (``given`` names the fields
    the caller set explicitly; only budgets and logging may change on resume).
    """
    if isinstance(cfg, dict):
        cfg = TrainConfig.from_dict(cfg)
    cfg.validate()
    cfg = prepare_run(cfg, resume, given)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, resume, progress)
    finally:
        torch.set_num_threads(threads)


def prepare(cfg: TrainConfig) -> tuple[SDE, list[float], Dataset, Dataset]:
    """Check everything a run needs (data, partition, worker layout) and write its config.json."""
    sde = build_sde(cfg)
    edges = edges_for(cfg, sde)
    train_ds, test_ds = load_dataset(cfg)
    if cfg.workers > 1:
        from .distributed import layout
        layout(cfg.workers, len(edges) - 1)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    _write_config(cfg)
    return sde, edges, train_ds, test_ds


def _train(cfg: TrainConfig, resume: bool, progress: bool) -> dict:
    sde, edges, train_ds, test_ds = prepare(cfg)
    run = Path(cfg.out)
    t_start = time.perf_counter()
    warm_start(cfg, edges, train_ds, progress)
    prior_thread, prior_box = None, {}
    prior_path = run / "checkpoints" / "prior.pt"
    if needs_prior(cfg) and not prior_path.exists():
        if cfg.prior_fit == "before":
            _fit_prior(cfg, sde, train_ds, progress)
        elif cfg.prior_fit == "alongside":
            def work():
                try:
                    prior_box["result"] = _fit_prior(cfg, sde, train_ds, False)
                except BaseException as exc:  # re-raised in the main thread
                    prior_box["error"] = exc
            prior_thread = threading.Thread(target=work, daemon=True)
            prior_thread.start()
    if cfg.workers > 1:
        from .distributed import launch
        launch(cfg)
    else:
        for job in jobs_for(cfg, edges):
            train_network(cfg, job, train_ds, test_ds, progress)
    if prior_thread is not None:
        prior_thread.join()
        if "error" in prior_box:
            raise prior_box["error"]
    if needs_prior(cfg) and not prior_path.exists():
        _fit_prior(cfg, sde, train_ds, progress)
    return finish_run(cfg, train_ds, test_ds, progress, elapsed=time.perf_counter() - t_start)


def warm_start(cfg: TrainConfig, edges: list[float], train_ds: Dataset, progress: bool) -> None:
    """Train the shared network of a warm-started piecewise run (once; it is split into the intervals)."""
    if not (cfg.piecewise and cfg.warm_start and not cfg.per_time_point):
        return
    warm = Path(cfg.out) / "checkpoints" / "net-warm.pt"
    if warm.exists() and load_checkpoint(warm).get("done"):
        return
    shared = dataclasses.replace(cfg, steps=cfg.warm_start, time_budget=None, intervals=1, edges=None)
    train_network(shared, NetworkJob(index="warm", t_min=edges[0], t_max=edges[-1]), train_ds, None, progress)


def jobs_for(cfg: TrainConfig, edges: list[float], indices: list[int] | None = None):
    """The networks of a run (all, or the given interval indices), warm-started if asked."""
    init = None
    if cfg.piecewise and cfg.warm_start and not cfg.per_time_point:
        init = load_checkpoint(Path(cfg.out) / "checkpoints" / "net-warm.pt")["ema"]
    for k in indices if indices is not None else range(len(edges) - 1):
        fixed = edges[k + 1] if cfg.per_time_point else None
        yield NetworkJob(index=k, t_min=edges[k], t_max=edges[k + 1], fixed_t=fixed, init_state=init)


def run_shape(run: Path, cfg: TrainConfig) -> tuple[int, ...]:
    """Per-example data shape of a run (from summary.json, else from its data set)."""
    if (run / "summary.json").exists():
        return tuple(json.loads((run / "summary.json").read_text())["shape"])
    return tuple(load_data(cfg.data, n=cfg.n_data, seed=cfg.seed).shape)


def load_model(cfg: TrainConfig, run: Path, sde: SDE | None = None, shape=None, step: int | None = None):
    """The EMA model of a run: one network, or the assembled piecewise model; with ``step``, the
    EMA weights of the snapshots taken at that step (``--snapshot-every``)."""
    sde = sde or build_sde(cfg)
    shape = tuple(shape) if shape is not None else run_shape(run, cfg)
    edges = edges_for(cfg, sde)
    nets = []
    for k in range(len(edges) - 1):
        path = run / "checkpoints" / f"net-{k}.pt" if step is None else run / "snapshots" / f"net-{k}-{step:08d}.pt"
        state = load_checkpoint(path)
        m = _new_model(cfg, sde, shape, time_conditioned=not cfg.per_time_point)
        try:
            m.load_state_dict(state["ema"])
        except (RuntimeError, KeyError) as exc:
            raise UserError(f"checkpoint '{path}': weights do not fit the run's network "
                            f"({str(exc).splitlines()[0][:120]})") from None
        nets.append(m.eval())
    if not cfg.piecewise:
        return nets[0]
    from .methods.parallel import assemble
    return assemble(nets, edges, per_time_point=bool(cfg.per_time_point)).eval()


def load_prior(cfg: TrainConfig, run: Path, sde: SDE):
    """The run's fitted prior at T, or None for the SDE's reference prior."""
    if not needs_prior(cfg):
        return None
    from .methods.truncation import prior_from_config
    state = load_checkpoint(run / "checkpoints" / "prior.pt")
    prior = prior_from_config(state["config"], sde)
    prior.load_state_dict(state["state"])
    return prior.eval()


def finish_run(cfg: TrainConfig, train_ds: Dataset, test_ds: Dataset, progress: bool = True,
               elapsed: float | None = None) -> dict:
    """Assemble the trained model, sample with it, evaluate, plot, and write summary.json."""
    from .plots import plot_metrics, plot_samples
    run = Path(cfg.out)
    sde = build_sde(cfg)
    device = resolve_device(cfg.device)
    model = load_model(cfg, run, sde, train_ds.shape).to(device)
    prior = load_prior(cfg, run, sde) if (run / "checkpoints" / "prior.pt").exists() or not needs_prior(cfg) else None
    walls = [load_checkpoint(run / "checkpoints" / f"net-{k}.pt") for k in range(len(edges_for(cfg, sde)) - 1)]
    steps = [int(s["step"]) for s in walls]
    t0 = time.perf_counter()
    samples = _eval_samples(cfg, model, sde, train_ds.shape, device, prior)
    sample_seconds = time.perf_counter() - t0
    mname = metric_name(train_ds)
    summary = {"run": str(run), "data": cfg.data, "shape": list(train_ds.shape), "method": cfg.method,
               "sde": cfg.sde, "T": cfg.T, "prior": cfg.prior, "networks": len(walls), "steps": steps,
               "train_seconds": sum(float(s["wall"]) for s in walls),
               "max_network_seconds": max(float(s["wall"]) for s in walls), "elapsed_seconds": elapsed,
               "metric_name": mname, "metric": quality(mname, samples, test_ds.x),
               "sample_seconds": sample_seconds, "eval_samples": cfg.eval_samples,
               "eval_steps": sample_steps(cfg.eval_steps, sde),
               "scorefast_version": __version__}
    prior_path = run / "checkpoints" / "prior.pt"
    if prior_path.exists():
        summary["prior_fit"] = load_checkpoint(prior_path).get("fit")
    np.save(run / "samples.npy", samples.numpy())
    plot_samples(samples.numpy(), run / "samples.png", reference=test_ds.x.numpy() if train_ds.kind == "points"
                 else None, title=f"{cfg.data}: {cfg.method}, T={cfg.T}")
    if (run / "metrics.jsonl").exists():
        plot_metrics(run / "metrics.jsonl", run / "metrics.png")
    write_json(run / "summary.json", summary)
    return summary
