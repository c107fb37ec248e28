"""The Python API over a finished run: sample, likelihood, sample quality.

    run = scorefast.open_run("runs/moons")
    x = run.sample(1000)                # (1000, 2)
    run.nll("moons")                    # {'nll_nats': ..., 'n': ..., 'seconds': ...}
    run.evaluate("moons")               # {'swd': ..., 'mmd': ...}

The CLI's ``sample``, ``nll`` and ``evaluate`` commands are thin layers over these methods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import Dataset, load_data
from .errors import UserError
from .likelihood import bits_per_dim, dequantize, log_likelihood
from .sampling import SAMPLERS, sample
from .sde import SDE
from .trainer import (
    TrainConfig,
    _read_config,
    build_sde,
    load_model,
    load_prior,
    resolve_device,
    run_shape,
    sample_steps,
)


@dataclass
class Run:
    """A trained run directory: its configuration, SDE, EMA model and prior at T."""

    path: Path
    config: TrainConfig
    sde: SDE
    model: torch.nn.Module
    prior: object
    shape: tuple[int, ...]
    device: torch.device

    def sample(self, n: int, sampler: str = "ode", steps: int | None = None, seed: int = 0,
               progress: bool = True) -> torch.Tensor:
        """n samples; ``steps`` defaults to the training-time evaluation grid (which already spans only
        [eps, T], so a truncated run takes about T of the steps of a T = 1 run at the same step size)."""
        if n < 1:
            raise UserError(f"--n must be >= 1, got {n}")
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler '{sampler}'; choose one of {', '.join(sorted(SAMPLERS))}")
        steps = steps or sample_steps(self.config.eval_steps, self.sde)
        if steps < 1:
            raise UserError(f"--steps must be >= 1, got {steps}")
        g = torch.Generator(device=self.device).manual_seed(seed)
        return sample(self.model, self.sde, n, self.shape, sampler=sampler, steps=steps, prior=self.prior,
                      generator=g, device=self.device, progress=progress).cpu()

    def heldout(self, spec: str, n: int | None = None) -> Dataset:
        """The data to evaluate on: the run's own held-out split when ``spec`` is the training data."""
        cfg = self.config
        if spec == cfg.data:
            from .trainer import load_dataset
            ds = load_dataset(cfg)[1]
        else:
            ds = load_data(spec, seed=cfg.seed + 1)
        if tuple(ds.shape) != tuple(self.shape):
            raise UserError(f"data '{spec}': examples of shape {tuple(ds.shape)} do not match the run's "
                            f"{tuple(self.shape)}")
        if n is not None:
            ds = Dataset(ds.x[:n], ds.name, ds.kind, ds.levels)
        return ds

    def nll(self, spec: str, n: int | None = 1000, steps: int = 100, hutchinson: int | None = None,
            batch_size: int = 1000, seed: int = 0, progress: bool = True) -> dict:
        """Test NLL in nats per example (PF-ODE + the prior at T), and bits/dim for discrete images
        (uniformly dequantised). Exact divergence for d <= 64 unless ``hutchinson`` probes are asked for.
        ``steps`` RK4 steps would span [eps, 1]: a truncated run uses the same step size, so about T of them.
        The ELBO (truncated or fitted-prior runs) bounds the reverse-SDE model, the NLL is the PF-ODE model's:
        the two are different models, so -ELBO can fall below the NLL."""
        ds = self.heldout(spec, n)
        g = torch.Generator().manual_seed(seed)
        x = ds.x
        if ds.levels:
            x = dequantize(x, ds.levels, generator=g)
        probes = hutchinson if hutchinson is not None else (0 if ds.dim <= 64 else 1)
        prior_logp = self.prior.log_prob if self.prior is not None else None
        t0 = time.perf_counter()
        parts = []
        for xb in x.split(batch_size):
            gen = g if self.device.type == "cpu" else None
            parts.append(log_likelihood(self.model, self.sde, xb.to(self.device), steps=sample_steps(steps, self.sde),
                                        hutchinson=probes, prior_logp=prior_logp, generator=gen,
                                        progress=progress).detach().cpu())
        logp = torch.cat(parts)
        out = {"nll_nats": float(-logp.mean()), "nll_nats_sem": float(logp.std() / len(logp) ** 0.5),
               "n": len(logp), "dim": ds.dim, "T": self.sde.T, "prior": self.config.prior,
               "divergence": "exact" if probes == 0 else f"hutchinson-{probes}"}
        if ds.levels:
            out["bpd"] = float(bits_per_dim(logp, ds.dim, ds.levels).mean())
        if self.config.T < 1.0 or self.config.prior != "standard":
            from .methods.truncation import elbo
            parts = elbo(self.model, self.sde, x[:batch_size].to(self.device), self.prior,
                         generator=g if self.device.type == "cpu" else None)
            out["elbo"] = {k: float(v.mean()) for k, v in parts.items()}
        out["seconds"] = time.perf_counter() - t0
        return out

    def evaluate(self, spec: str, n: int = 2000, sampler: str = "ode", steps: int | None = None, seed: int = 0,
                 progress: bool = True) -> dict:
        """Sample quality against held-out data: SWD and MMD (plus the digits Frechet distance)."""
        from . import metrics
        ds = self.heldout(spec)
        t0 = time.perf_counter()
        x = self.sample(n, sampler=sampler, steps=steps, seed=seed, progress=progress)
        seconds = time.perf_counter() - t0
        ref = ds.x
        out = {"swd": metrics.sliced_wasserstein(x.flatten(1), ref.flatten(1), seed=seed),
               "mmd": metrics.mmd(x.flatten(1), ref.flatten(1)), "n": n, "n_reference": len(ref),
               "sampler": sampler, "sample_seconds": seconds}
        if ds.name == "digits":
            out["digits_fd"] = metrics.digits_frechet(x, ref)
        return out


def open_run(path: str | Path, device: str | None = None, step: int | None = None) -> Run:
    """Open a run directory written by ``scorefast.train``; one clear error if it is not one.
    ``step`` opens the EMA snapshot taken at that step instead of the final weights."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory '{path}' does not exist")
    saved = _read_config(path)
    cfg = TrainConfig.from_dict(saved["config"])
    dev = resolve_device(device or cfg.device)
    sde = build_sde(cfg)
    shape = run_shape(path, cfg)
    model = load_model(cfg, path, sde, shape, step=step).to(dev)
    prior = load_prior(cfg, path, sde)
    return Run(path, cfg, sde, model, prior, shape, dev)
