"""The run directory, in both directions, and the Python API over a trained run.

    config.json      {"run_format", "scorefast_version", "data": the kind and per-example shape of the data
                     the configuration was resolved for, "config": the nested configuration}
    metrics.jsonl    one JSON object per log line: step, wall (training seconds, precomputation included:
                     FP solve, a prior fitted before training; evaluation excluded), loss, net, time, and
                     the periodic metric
    .lock            held by the one process writing the run (``RunDir.lock``)
    checkpoints/     net-K.pt per network (weights, EMA, optimiser, RNG, step, wall), prior.pt
    snapshots/       net-K-STEP.pt: EMA weights every --snapshot-every steps (for quality-vs-time curves)
    posthoc/         net-K-STEP.pt: power EMAs of sigma_rel 0.05 and 0.10 every --posthoc-ema-every steps
    ema/             net-K-sigmaS.pt: an EMA of relative width S rebuilt from them (``scorefast ema``)
    samples.npy / samples.png / metrics.png / summary.json

:class:`RunDir` owns this format (create, resume, read, write); :class:`Run` is a trained run's model
with ``sample``, ``nll`` and ``evaluate``, which the CLI's commands are thin layers over:

    run = scorefast.open_run("runs/moons")
    x = run.sample(1000)                # (1000, 2)
    run.nll("moons")                    # {'nll_nats': ..., 'n': ..., 'seconds': ...}
    run.evaluate("moons")               # {'swd': ..., 'mmd': ...}
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .checkpoint import (
    append_jsonl,
    check_path,
    error_reason,
    load_checkpoint,
    read_json,
    read_jsonl,
    remove_stale_temporaries,
    write_json,
)
from .config import Config
from .data import Dataset, load_data
from .errors import UserError
from .sde import SDE

RUN_FORMAT = 2
MAX_STEPS = 100_000  # sampler and probability-flow ODE steps: far past every measured gain (a few hundred at most)
MAX_PROBES = 1_000  # Hutchinson probes of the NLL: one backward pass each at every ODE evaluation
LOCK = ".lock"  # held (flock) by the one process that writes the run


def _data_record(saved: dict) -> dict:
    """config.json's record of the data the configuration was resolved for: its kind and per-example shape ({} for
    a run written before config.json held it)."""
    return saved["data"] if isinstance(saved.get("data"), dict) else {}


class RunDir:
    """The files of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def checkpoint(self, index: int | str) -> Path:
        return self.path / "checkpoints" / f"net-{index}.pt"

    def snapshot(self, index: int | str, step: int) -> Path:
        return self.path / "snapshots" / f"net-{index}-{step:08d}.pt"

    def posthoc_snapshot(self, index: int | str, step: int) -> Path:
        return self.path / "posthoc" / f"net-{index}-{step:08d}.pt"

    def posthoc_ema(self, index: int | str, sigma_rel: float) -> Path:
        """Where ``scorefast ema --sigma-rel`` writes the reconstructed EMA weights of one network."""
        return self.path / "ema" / f"net-{index}-sigma{sigma_rel:g}.pt"

    @property
    def prior_path(self) -> Path:
        return self.path / "checkpoints" / "prior.pt"

    def inputs(self) -> list[Path]:
        """What the commands that read a trained run read: no command may write over them."""
        return [self.config_path, self.path / "summary.json", self.prior_path.parent, self.path / "snapshots",
                self.posthoc_ema(0, 1).parent]

    # -- config ---------------------------------------------------------------------------------------
    def read_config(self) -> Config:
        """The saved configuration; one clear error for a missing, corrupt or old-format config.json."""
        if not self.config_path.exists():
            raise UserError(f"run directory '{self.path}': no config.json (not a scorefast run, or it never started)")
        saved = read_json(self.config_path, "config.json")
        version = saved.get("run_format")
        if version != RUN_FORMAT:
            hint = ("it was written by scorefast 0.1 (run format 1): open it with scorefast 0.1, or train it again "
                    "with this version" if version == 1 else "it was not written by this scorefast")
            raise UserError(f"run directory '{self.path}': run format {version} cannot be read by this scorefast "
                            f"(which reads format {RUN_FORMAT}); {hint}")
        if not isinstance(saved.get("config"), dict):
            raise UserError(f"run directory '{self.path}': config.json has no 'config' section")
        data = saved["config"].get("data")
        if isinstance(data, dict):  # written before --xflip and --dequantise existed: it trained without them
            data.setdefault("xflip", False)
            data.setdefault("dequantise", False)
        kind = _data_record(saved).get("kind")
        return Config.from_dict(saved["config"], where=f"run directory '{self.path}': config.json",
                                data_kind=kind if kind in ("points", "image") else None)

    def write_config(self, cfg: Config, data: Dataset) -> None:
        """config.json: the resolved configuration and the kind and per-example shape of the data it was
        resolved for."""
        self.mkdir()
        write_json(self.config_path, {"run_format": RUN_FORMAT, "scorefast_version": __version__,
                                      "data": {"kind": data.kind, "shape": list(data.shape)},
                                      "config": cfg.to_dict()})

    def check_new(self) -> None:
        """A fresh run refuses an existing, non-empty directory (nothing is ever overwritten) and a path that
        cannot become a directory (a file, a path under a file, an unwritable place, a name too long)."""
        check_path(self.path, "--out")
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out '{self.path}' is a file, not a run directory")
        if self.config_path.exists() or (self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir())):
            raise UserError(f"run directory '{self.path}' already exists and is not empty; use --resume to continue "
                            "it or choose another --out")
        parent = next((p for p in self.path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise UserError(f"--out '{self.path}': '{parent}' is a file, so the run directory cannot be created")
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"--out '{self.path}': cannot create it in '{parent}' (permission denied)")

    def mkdir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run directory '{self.path}': {exc.strerror or exc}") from None

    @contextmanager
    def lock(self, new: bool = False) -> Iterator[None]:
        """Hold the directory for one writer while the block runs: an exclusive ``flock`` on its ``.lock`` file.

        The kernel drops the lock when the process ends, however it ends (SIGKILL included), so it never goes
        stale; a second writer (a second ``train`` or ``--resume`` on the same directory) gets one line naming
        the holder, which the file records (pid, host, start) for that line only. A ``new`` run checks again,
        holding the lock, that nobody started it in the meantime. Without ``fcntl`` (Windows) nothing is held."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        self.mkdir()
        path = self.path / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK, 0o644)
        except OSError as err:
            raise UserError(f"run directory '{self.path}': cannot open its lock file ({error_reason(err)})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                raise UserError(f"run directory '{self.path}' is in use by another scorefast process ({holder}); "
                                "wait for it to end, or choose another --out") from None
            if new:
                self.check_new()
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def resume(self, cfg: Config) -> Config:
        """The saved configuration with the budgets, logging and launch flags that ``cfg`` was given.

        A resumed run may not change what defines it (data, SDE, network, target, prior, partition)."""
        if not self.path.is_dir():
            raise UserError(f"--resume: run directory '{self.path}' does not exist")
        saved = self.read_config()
        changed = cfg.locked_changes(saved)
        if changed:
            flag = changed[0]
            raise UserError(f"--resume: --{flag.replace('_', '-')} {cfg.flags().get(flag)} differs from the run's "
                            f"saved {saved.flags().get(flag)}; start a new run with another --out")
        self.metrics()  # damage inside the log is refused now, before anything is written
        merged = saved.replace(**{k: v for k, v in cfg.flags().items() if k in cfg.given})
        return merged.replace(out=str(self.path))

    def check_weights(self, model: torch.nn.Module) -> None:
        """Refuse, before a resumed run writes anything, a checkpoint whose weights are not those of ``model``
        (the run's network, e.g. on the meta device): one copied from a run of another --width or --depth."""
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        for path in sorted(self.checkpoint("*").parent.glob("net-*.pt")):
            got = {k: tuple(v.shape) for k, v in load_checkpoint(path).get("model", {}).items()}
            if got != want:
                key = next(k for k in sorted({*got, *want}) if got.get(k) != want.get(k))
                raise UserError(f"checkpoint '{path}' does not hold this run's network ({key}: "
                                f"{got.get(key, 'missing')} where the configuration needs {want.get(key, 'none')}); "
                                "was it copied from another run?")

    # -- metrics and summary --------------------------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        append_jsonl(self.path / "metrics.jsonl", row, "metrics log")

    def metrics(self, repair: bool = False) -> list[dict]:
        """The rows of metrics.jsonl; a line torn by a kill is dropped (and cut off the file with ``repair``)."""
        path = self.path / "metrics.jsonl"
        return read_jsonl(path, "metrics log", repair=repair) if path.exists() else []

    def tidy(self) -> None:
        """Before a resumed run writes: remove temporary files a killed writer left, repair a torn log line."""
        remove_stale_temporaries(self.path)
        self.metrics(repair=True)

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / "summary.json", summary)

    def shape(self) -> tuple[int, ...]:
        """The per-example shape of the run's data, as config.json records it (for a run written before it did,
        as its summary.json does): the network is rebuilt without reading the data."""
        shape, where = _data_record(read_json(self.config_path, "config.json")).get("shape"), "config.json"
        summary = self.path / "summary.json"
        if shape is None and summary.exists():
            shape, where = read_json(summary, "summary.json").get("shape"), "summary.json"
        if shape is None:
            raise UserError(f"run directory '{self.path}': config.json records no data shape (it was written before "
                            "it did) and the run has no summary.json to read it from; train it again")
        if not (isinstance(shape, list) and shape and all(type(v) is int and v > 0 for v in shape)):
            raise UserError(f"run directory '{self.path}': {where} records a data shape {shape!r}, expected a list "
                            "of positive integers")
        return tuple(shape)

    # -- weights --------------------------------------------------------------------------------------
    def load_model(self, cfg: Config, sde: SDE, shape, step: int | None = None,
                   sigma_rel: float | None = None) -> torch.nn.Module:
        """The EMA model: one network, or the networks assembled by the run's partition; with ``step``,
        the EMA weights of the snapshots taken at that step; with ``sigma_rel``, the post-hoc EMA of that
        relative width (written by ``scorefast ema``)."""
        edges = cfg.edges(sde)
        nets = []
        for k in range(len(edges) - 1):
            path = self.checkpoint(k) if step is None else self.snapshot(k, step)
            if sigma_rel is not None:
                path = self.posthoc_ema(k, sigma_rel)
                if not path.exists():
                    raise UserError(f"run directory '{self.path}' has no post-hoc EMA of sigma_rel {sigma_rel:g}: "
                                    f"make it with scorefast ema --run {self.path} --sigma-rel {sigma_rel:g}")
            net = new_model(cfg, sde, shape, cfg.partition.time_conditioned)
            try:
                ema = load_checkpoint(path)["ema"]
                net.load_state_dict(ema)
            except (RuntimeError, KeyError) as exc:
                raise UserError(f"checkpoint '{path}': weights do not fit the run's network "
                                f"({str(exc).splitlines()[0][:120]})") from None
            bad = next((k for k, v in ema.items() if v.is_floating_point() and not bool(v.isfinite().all())), None)
            if bad is not None:
                raise UserError(f"checkpoint '{path}': its EMA weights hold NaN or infinite values ({bad}); "
                                "the model cannot be used")
            nets.append(net.eval())
        return cfg.partition.assemble(nets, edges).eval()

    def load_prior(self, cfg: Config, sde: SDE, dim: int, device: torch.device | str = "cpu"):
        """The run's fitted prior at T on ``device`` (where the model samples: the samplers draw x_T with the
        model's generator), or None for the SDE's reference prior."""
        if not cfg.prior.needed(sde):
            return None
        state = load_checkpoint(self.prior_path)
        prior = cfg.prior.build(dim, sde)
        prior.load_state_dict(state["state"])
        return prior.to(device).eval()


def new_model(cfg: Config, sde: SDE, shape, time_conditioned: bool = True, sigma_data: float = 0.5) -> torch.nn.Module:
    """A fresh network of the run's architecture, wrapped in its parameterisation (``sigma_data`` is EDM's; a
    trained model's comes from its checkpoint)."""
    from .nets import make_model
    return make_model(sde, tuple(shape), cfg.net.param, sigma_data=sigma_data, time_conditioned=time_conditioned,
                      **cfg.net.options())


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when present, or the environment's SCOREFAST_DEVICE), 'cpu', 'cuda', 'cuda:N'; one clear
    error for anything else."""
    if name == "auto":
        name = os.environ.get("SCOREFAST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device '{name}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    return dev


def split_data(cfg: Config) -> tuple[Dataset, Dataset]:
    """The run's data split into train and held-out parts (seeded, so the same every time)."""
    ds = load_data(cfg.data.spec, n=cfg.data.n, seed=cfg.optim.seed)
    if ds.memorised:  # train and evaluate on the same few examples, batches with replacement
        return ds, ds
    train, test = ds.split(0.2, seed=cfg.optim.seed)
    if cfg.optim.batch_size > len(train):
        raise UserError(f"--batch-size {cfg.optim.batch_size} is larger than the {len(train)} training examples of "
                        f"'{cfg.data.spec}'")
    return train, test


@dataclass
class Run:
    """A trained run directory: its configuration, SDE, EMA model and prior at T."""

    path: Path
    config: Config
    sde: SDE
    model: torch.nn.Module
    prior: object
    shape: tuple[int, ...]
    device: torch.device

    def evaluator(self, n: int, sampler: str | None, steps: int | None, seed: int, schedule: str | None):
        """The run's evaluation protocol with the given overrides (None: the run's own)."""
        from .evaluate import Evaluator
        for flag, value in (("--sampler", sampler), ("--schedule", schedule)):
            if value is not None and not value.strip():
                raise UserError(f"{flag} is empty; leave it out for the run's own, or name one")
        self.check_sizes(n, steps)
        if sampler is not None:  # another sampler than the run's: it must suit the run's objective too
            self.config.objective.check(sampler=sampler, fitted_prior=False, batch_size=0)
        return Evaluator.of_run(self.config.log, n, sampler, steps, schedule, seed=seed)

    def check_sizes(self, n: int, steps: int | None, probes: int | None = None) -> None:
        """Refuse, before anything is allocated, steps or Hutchinson probes past their stated limits
        (``MAX_STEPS``, ``MAX_PROBES``) and ``n`` examples whose memory (float32, twice: the result and its copy
        out, plus one per probe) exceeds this machine's."""
        from .datafiles import physical_memory
        for flag, value, limit in (("--steps", steps, MAX_STEPS), ("--hutchinson", probes, MAX_PROBES)):
            if value is not None and value > limit:
                raise UserError(f"{flag} {value} is more than the limit of {limit:,}")
        need, memory = 4 * max(n, 0) * (2 + (probes or 0)) * torch.Size(self.shape).numel(), physical_memory()
        if memory is not None and need > memory:
            raise UserError(f"--n {n}: would need about {need / 2**30:.3g} GiB, more than this machine's "
                            f"{memory / 2**30:.3g} GiB of memory; ask for fewer")

    def sample(self, n: int, sampler: str | None = None, steps: int | None = None, seed: int = 0,
               progress: bool = True, schedule: str | None = None) -> torch.Tensor:
        """n samples; ``steps`` defaults to the training-time evaluation grid (which already spans only
        [eps, T], so a truncated run takes about T of the steps of a T = 1 run at the same step size).
        Samplers: ode, em, pc, dpmpp-2m, heun, euler-a; schedules: uniform, karras, logsnr."""
        ev = self.evaluator(n, sampler, steps, seed, schedule)
        return ev.samples(self.model, self.sde, self.shape, self.prior, self.device, progress=progress)

    def denoiser(self):
        """The model as a k-diffusion denoiser ``D(x, sigma) = E[x0 | x]`` in the variable x = x_t / alpha_t
        (noise level sigma = sigma_t / alpha_t), so k-diffusion's own samplers run on it unchanged;
        ``.sigma_min`` / ``.sigma_max`` are the levels at eps and T. Starting noise: a prior sample at T
        divided by alpha_T (``self.prior`` or N(0, prior_std^2 I))."""
        from .ksampling import Denoiser
        return Denoiser(self.model, self.sde)

    def heldout(self, spec: str | None = None, n: int | None = None) -> Dataset:
        """The data to evaluate on: the run's own held-out split when ``spec`` is the training data or None."""
        cfg = self.config
        spec = cfg.data.spec if spec is None else spec
        ds = split_data(cfg)[1] if spec == cfg.data.spec else load_data(spec, seed=cfg.optim.seed + 1)
        if tuple(ds.shape) != tuple(self.shape):
            raise UserError(f"data '{spec}': examples of shape {tuple(ds.shape)} do not match the run's "
                            f"{tuple(self.shape)}")
        if n is not None:
            if n < 1:
                raise UserError(f"--n must be >= 1, got {n}")
            ds = ds.subset(slice(0, n))
        return ds

    def nll(self, spec: str | None = None, n: int | None = 1000, steps: int = 100, hutchinson: int | None = None,
            batch_size: int = 1000, seed: int = 0, progress: bool = True) -> dict:
        """Test NLL in nats per example (PF-ODE + the prior at T), and bits/dim for discrete images
        (uniformly dequantised), on ``spec`` (None: the run's held-out split). See
        :func:`scorefast.evaluate.test_nll`."""
        from .evaluate import test_nll
        self.check_sizes(min(n or batch_size, batch_size), steps, hutchinson)
        out = test_nll(self.model, self.sde, self.heldout(spec, n), self.prior, self.device, steps=steps,
                       hutchinson=hutchinson, batch_size=batch_size, seed=seed, progress=progress,
                       with_elbo=self.prior is not None)
        return {**out, "prior": self.config.prior.name}

    def sample_levels(self, ds: Dataset) -> int | None:
        """The levels this run's samples are scored at (``Evaluator.levels``): those of ``ds`` for a model of
        dequantised pixels, whose samples stand for the discrete images of their bins; None otherwise."""
        return ds.levels if self.config.data.dequantise else None

    def evaluate(self, spec: str | None = None, n: int = 2000, sampler: str | None = None, steps: int | None = None,
                 seed: int = 0, progress: bool = True, schedule: str | None = None,
                 metrics: Sequence[str] | None = None) -> dict:
        """Sample quality of ``n`` samples against held-out data (``spec``; None: the run's own): ``metrics``
        (names of ``evaluate.METRICS``; default SWD and MMD, plus the digits Frechet distance for digits), checked
        before sampling."""
        from .evaluate import check_metric
        ds = self.heldout(spec)
        for name in metrics or ():
            check_metric(name, ds)
        ev = dataclasses.replace(self.evaluator(n, sampler, steps, seed, schedule), levels=self.sample_levels(ds))
        t0 = time.perf_counter()
        x = ev.samples(self.model, self.sde, self.shape, self.prior, self.device, progress=progress)
        seconds = time.perf_counter() - t0
        return {**ev.scores(x, ds, seed=seed, names=metrics), "n": n, "n_reference": len(ds), "sampler": ev.sampler,
                "schedule": ev.schedule, "sample_seconds": seconds}


def open_run(path: str | Path, device: str | None = None, step: int | None = None,
             sigma_rel: float | None = None) -> Run:
    """Open a run directory written by ``scorefast.train``; one clear error if it is not one.
    ``step`` opens the EMA snapshot taken at that step instead of the final weights, ``sigma_rel`` the
    post-hoc EMA of that relative width (``posthoc_ema.reconstruct``)."""
    rd = RunDir(path)
    if not rd.path.is_dir():
        raise UserError(f"run directory '{rd.path}' does not exist")
    cfg = rd.read_config()
    dev = resolve_device(device or cfg.launch.device)
    sde = cfg.sde.build()
    shape = rd.shape()
    model = rd.load_model(cfg, sde, shape, step=step, sigma_rel=sigma_rel).to(dev)
    prior = rd.load_prior(cfg, sde, int(torch.Size(shape).numel()), dev)
    return Run(rd.path, cfg, sde, model, prior, shape, dev)


__all__ = ["RUN_FORMAT", "Run", "RunDir", "new_model", "open_run", "resolve_device", "split_data"]
