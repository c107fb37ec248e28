"""One evaluator for every caller, and one rule for "time to reach a target".

:class:`Evaluator` fixes the protocol - the seed, the start law (a fitted prior at T or the SDE's
reference prior), the sampler, its steps on a grid that holds the model's edges - so that the periodic
metric of training, ``Run.evaluate`` and the benchmarks measure the same thing. :func:`test_nll` is
the held-out likelihood (PF-ODE plus the prior at T; bits/dim for discrete images) and
:func:`time_to` reads the wall-clock at which a quality curve first reaches a target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .choices import METRICS, SAMPLERS, SCHEDULES
from .data import Dataset, quantise
from .errors import UserError
from .sde import SDE

if TYPE_CHECKING:
    from .config.sections import LogSection

Tensor = torch.Tensor


INCEPTION_METRICS = tuple(METRICS.names(inception=True))


def metric_name(ds: Dataset, chosen: str = "auto") -> str:
    """``chosen``, or for 'auto' the cheap periodic metric of a data set: 1 - best-match SSIM for a few images to
    memorise, the digits Frechet distance for digits and mnist, sliced Wasserstein otherwise. (The standard FID
    costs minutes per thousand samples on a CPU: ask for it by name.)"""
    if chosen != "auto":
        return chosen
    if ds.kind == "image" and ds.memorised:
        return "ssim_gap"
    return "digits_fd" if ds.name in ("digits", "mnist") else "swd"


def check_metric(name: str, ds: Dataset) -> None:
    """One line, before anything is sampled, for a metric that does not exist, does not apply to the data, or
    needs an extra that is not installed (the Inception network is then loaded and checked)."""
    METRICS.get(name)
    if name in INCEPTION_METRICS:
        if ds.kind != "image":
            raise UserError(f"metric '{name}' scores images; '{ds.name}' holds points (use swd or mmd)")
        from .fid import inception
        inception()


def quality(name: str, samples: Tensor, reference: Tensor, seed: int = 0) -> float:
    """Sample quality (lower is better) of samples against reference data by a metric of ``choices.METRICS``."""
    from . import metrics
    if name == "ssim_gap":
        return 1.0 - float(metrics.best_match_ssim(samples.clamp(-1, 1), reference).mean())
    if name == "digits_fd":
        return float(metrics.digits_frechet(samples.clamp(-1, 1), reference))  # pixels live in [-1, 1]
    if name == "mmd":
        return float(metrics.mmd(samples.flatten(1), reference.flatten(1)))
    if name == "swd":
        return float(metrics.sliced_wasserstein(samples.flatten(1), reference.flatten(1), seed=seed))
    if name in INCEPTION_METRICS:
        from . import fid
        return fid.fid(samples.clamp(-1, 1), reference) if name == "fid" else \
            fid.kid(samples.clamp(-1, 1), reference, seed=seed)
    METRICS.get(name)
    raise NotImplementedError(f"metric '{name}' is declared but not computed here")


def sample_steps(steps_at_T1: int, sde: SDE) -> int:
    """Steps for [eps, T] at the step size that ``steps_at_T1`` steps have on [eps, 1]: a truncated
    diffusion samples in about T of the steps."""
    return max(1, round(steps_at_T1 * (sde.T - sde.eps) / (1.0 - sde.eps)))


@dataclass
class Evaluator:
    """Fixed-seed samples and their quality: ``n`` samples from the start law, ``sampler`` with ``steps``
    (scaled to [eps, T] when ``scale_steps``) on ``schedule``'s grid (None: the sampler's own), drawn from
    the evaluator's own generator (training RNG untouched), scored by ``metric`` (``metric_name``). With
    ``levels`` (a model of dequantised K-level pixels) each sample is the discrete image it stands for
    (``data.quantise``)."""

    n: int = 2000
    sampler: str = "ode"
    steps: int = 100
    seed: int = 12345
    scale_steps: bool = True
    schedule: str | None = None
    metric: str = "auto"
    levels: int | None = None

    def __post_init__(self):
        if self.n < 1:
            raise UserError(f"--n must be >= 1, got {self.n}")
        if self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")
        SAMPLERS.get(self.sampler)
        if self.schedule is not None:
            SCHEDULES.get(self.schedule)
        if self.metric != "auto":
            METRICS.get(self.metric)

    @classmethod
    def of_run(cls, log: LogSection, n: int | None = None, sampler: str | None = None, steps: int | None = None,
               schedule: str | None = None, **fields) -> Evaluator:
        """The evaluation protocol of a run's ``log`` settings, with ``n``, ``sampler``, ``steps`` and ``schedule``
        overriding the run's own where given: steps given are taken as they are (not scaled to [eps, T]), and
        another sampler than the run's keeps its own schedule unless one is named."""
        if schedule is None and (sampler is None or sampler == log.sampler):
            schedule = log.schedule
        return cls(n=log.eval_samples if n is None else n, sampler=log.sampler if sampler is None else sampler,
                   steps=log.eval_steps if steps is None else steps, scale_steps=steps is None, schedule=schedule,
                   **fields)

    def samples(self, model, sde: SDE, shape: tuple[int, ...], prior=None, device=None,
                progress: bool = False) -> Tensor:
        from .sampling import sample
        device = torch.device(device or "cpu")
        g = torch.Generator(device=device).manual_seed(self.seed)
        steps = sample_steps(self.steps, sde) if self.scale_steps else self.steps
        was_training = getattr(model, "training", False)
        model.eval()
        try:
            x = sample(model, sde, self.n, tuple(shape), sampler=self.sampler, steps=steps, schedule=self.schedule,
                       prior=prior, generator=g, device=device, progress=progress)
        finally:
            model.train(was_training)
        return x.cpu() if self.levels is None else quantise(x.cpu(), self.levels)

    def scores(self, samples: Tensor, ds: Dataset, seed: int = 0, names: Sequence[str] | None = None) -> dict:
        """The metrics ``names`` of samples against the held-out data (default: SWD, MMD and the data set's own
        periodic metric, ``metric_name``); an FID of fewer than 2,048 samples comes with a note that says so."""
        from .fid import note
        names = list(dict.fromkeys(names or ("swd", "mmd", metric_name(ds))))
        out = {name: quality(name, samples, ds.x, seed=seed) for name in names}
        notes = [text for text in (note(name, len(samples)) for name in names) if text]
        return {**out, "note": "; ".join(notes)} if notes else out

    def score(self, samples: Tensor, ds: Dataset) -> dict:
        """{'metric', 'metric_name'}: the periodic metric of ``samples`` against the held-out ``ds``."""
        name = metric_name(ds, self.metric)
        return {"metric": quality(name, samples, ds.x), "metric_name": name}

    def __call__(self, model, sde: SDE, ds: Dataset, prior=None, device=None) -> dict:
        """{'metric', 'metric_name'}: the periodic metric of fresh fixed-seed samples."""
        return self.score(self.samples(model, sde, ds.shape, prior, device), ds)


def test_nll(model, sde: SDE, ds: Dataset, prior=None, device=None, *, steps: int = 100, hutchinson: int | None = None,
             batch_size: int = 1000, seed: int = 0, progress: bool = False, with_elbo: bool = False,
             schedule: str = "uniform") -> dict:
    """Held-out NLL in nats per example (PF-ODE + log nu(x_T)), and bits/dim for discrete images
    (uniformly dequantised). Exact divergence for d <= 64 unless ``hutchinson`` probes are asked for.
    ``steps`` RK4 steps would span [eps, 1]: a truncated run uses the same step size, so about T of them,
    on ``schedule``'s grid (``likelihood.log_likelihood``).
    ``with_elbo`` adds the ELBO's parts (which bound the reverse-SDE model, not the PF-ODE model whose NLL
    this is: -ELBO can fall below the NLL)."""
    from .likelihood import bits_per_dim, dequantize, log_likelihood
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    if hutchinson is not None and hutchinson < 0:
        raise UserError(f"--hutchinson must be >= 0 (0: exact divergence), got {hutchinson}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    device = torch.device(device or "cpu")
    g = torch.Generator().manual_seed(seed)
    x = dequantize(ds.x, ds.levels, generator=g) if ds.levels else ds.x
    # the probes (and the ELBO's noise) are drawn on the device: from g itself on CPU, else from that device's own
    # generator with the same seed, so that the result is seeded everywhere
    gen = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    probes = hutchinson if hutchinson is not None else (0 if ds.dim <= 64 else 1)
    prior_logp = prior.log_prob if prior is not None else None
    t0 = time.perf_counter()
    parts = []
    for xb in x.split(batch_size):
        parts.append(log_likelihood(model, sde, xb.to(device), steps=sample_steps(steps, sde), hutchinson=probes,
                                    prior_logp=prior_logp, generator=gen, progress=progress,
                                    schedule=schedule).detach().cpu())
    logp = torch.cat(parts)
    out = {"nll_nats": float(-logp.mean()), "nll_nats_sem": float(logp.std() / len(logp) ** 0.5), "n": len(logp),
           "dim": ds.dim, "T": sde.T, "divergence": "exact" if probes == 0 else f"hutchinson-{probes}"}
    if ds.levels:
        out["bpd"] = float(bits_per_dim(logp, ds.dim, ds.levels).mean())
    if with_elbo:
        from .methods.elbo import elbo
        terms = elbo(model, sde, x[:batch_size].to(device), prior, generator=gen)
        out["elbo"] = {k: float(v.mean()) for k, v in terms.items()}
    out["seconds"] = time.perf_counter() - t0
    return out


def time_to(curve: Sequence[tuple[float, float]], target: float, lower_is_better: bool = True, *,
            bounded: bool = False) -> float | None | tuple[float | None, bool]:
    """The wall-clock at which a quality curve first reaches ``target``.

    ``curve`` is [(seconds, value), ...] in increasing time (snapshots); lower values are better unless
    ``lower_is_better`` is False (SSIM). Linear interpolation between the last point that misses the target
    and the first point that meets it; the first point's time if it already meets the target (nothing
    earlier is known); None if the curve never reaches it (an explicit "not reached", never inf or NaN).
    Non-finite values never count as reaching. With ``bounded`` the answer is ``(seconds, exact)``: ``exact``
    is False when no earlier finite point misses the target, so that the time is only an upper bound.
    """
    if not lower_is_better:
        return time_to([(s, -v) for s, v in curve], -target, bounded=bounded)
    curve = list(curve)
    i = first_reach([v for _, v in curve], target)
    if i is None:
        return (None, True) if bounded else None
    if i == 0 or not math.isfinite(curve[i - 1][1]):
        return (float(curve[i][0]), False) if bounded else float(curve[i][0])
    (s0, v0), (s1, v1) = curve[i - 1], curve[i]
    found = float(s0 + (s1 - s0) * (v0 - target) / (v0 - v1))
    return (found, True) if bounded else found


def first_reach(values: Sequence[float], target: float) -> int | None:
    """The index of the first value that reaches ``target`` (finite and <= it; lower is better), None if none does:
    what reaching a target means for ``time_to`` and for the bench's narrowing of a crossing."""
    return next((i for i, v in enumerate(values) if math.isfinite(v) and v <= target), None)


__all__ = ["METRICS", "Evaluator", "check_metric", "first_reach", "metric_name", "quality", "sample_steps", "test_nll",
           "time_to"]
