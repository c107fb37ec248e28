"""Time samplers: where in [t_min, t_max] the training times of a loss are drawn, as registered plug-ins.

A plug-in (``--time-sampler NAME`` and its options) is bound to an SDE and a time range - the whole
[eps, T], one interval of a partition - and gives a :class:`TimeSampler`, a small object
``sampler(n, device, dtype) -> t (n,)``. Every sampler maps u in [0, 1) through the inverse of its
distribution function; with ``stratified`` the n values of u are one per stratum of [0, 1), the strata
spread over the data-parallel ranks that train one network (rank r of W takes strata r n .. r n + n - 1
of W n), so a group's whole batch is stratified. A stateful sampler checkpoints itself (``state_dict``).

- ``uniform``: t ~ U[t_min, t_max] (plain DSM).
- ``lognormal``: ln(sigma_t / alpha_t) ~ N(p_mean, p_std), truncated to the range (EDM's noise
  distribution, Karras et al. 2022; for VP / sub-VP, x_t / alpha_t is a VE variable of that noise level).
- ``likelihood``: density proportional to g(t)^2 / sigma_t^2, the likelihood weighting as an importance
  density (Song, Durkan, Murray, Ermon 2021): with the 'epsilon' weighting it trains on the ELBO. For VP
  this is uniform in log-SNR, since d log-SNR / dt = -g^2 / sigma^2.
- ``bins``: a piecewise-constant density - given shares of the draws in given time bins.
- ``adaptive``: bins in log-SNR whose shares follow the measured decrease of a held-out bound
  (``AdaptiveTimes``).

This module imports torch only when a sampler is bound or used, so that the command line can list the
plug-ins and their options without importing it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UserError
from .registry import Plugin, Registry, option

if TYPE_CHECKING:
    from torch import Tensor

    from .sde import SDE

TIME_SAMPLERS = Registry("time sampler", flag="time_sampler", title="training times", default="uniform")
GRID = 4097  # points of a tabulated distribution function (log-spaced in t)


class TimeSampler:
    """Draws n times in [t_min, t_max] by inverting its distribution function at n values of u."""

    def __init__(self, t_min: float, t_max: float, stratified: bool = False):
        self.t_min, self.t_max = float(t_min), float(t_max)
        if not (0 < self.t_min <= self.t_max):
            raise ValueError(f"need 0 < t_min <= t_max, got [{self.t_min}, {self.t_max}]")
        self.stratified = stratified
        self.rank, self.world = 0, 1
        self.copies: dict = {}

    def tables_on(self, device, *names: str) -> list[Tensor]:
        """The CPU tables ``names`` (attributes) on ``device``, copied there once: a copy per draw would be a
        host-to-device transfer, and a host sync, every training step. A sampler whose tables change clears
        ``copies``."""
        key = (str(device), names)
        if key not in self.copies:
            self.copies[key] = [getattr(self, name).to(device) for name in names]
        return self.copies[key]

    def spread(self, rank: int, world: int) -> TimeSampler:
        """Stratify across the ``world`` ranks of a data-parallel group (this one is ``rank``)."""
        self.rank, self.world = int(rank), int(world)
        return self

    def uniforms(self, n: int, device=None, dtype=None) -> Tensor:
        """n values of u in [0, 1): independent, or one per stratum of this rank's share."""
        import torch
        u = torch.rand(n, device=device, dtype=dtype)
        if self.stratified:
            u = (self.rank * n + torch.arange(n, device=device, dtype=u.dtype) + u) / (self.world * n)
        return u

    def quantile(self, u: Tensor) -> Tensor:
        """The inverse distribution function: t with P(T <= t) = u."""
        raise NotImplementedError

    def __call__(self, n: int, device=None, dtype=None) -> Tensor:
        return self.quantile(self.uniforms(n, device, dtype))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (nothing for a stateless sampler)."""


class UniformTimes(TimeSampler):
    """t ~ U[t_min, t_max]."""

    def __init__(self, t_min: float, t_max: float, stratified: bool = False):
        super().__init__(t_min, t_max, stratified)
        if not self.t_min < self.t_max:
            raise ValueError(f"need t_min < t_max, got [{self.t_min}, {self.t_max}]")

    def quantile(self, u):
        return self.t_min + (self.t_max - self.t_min) * u


class FixedTime(TimeSampler):
    """Every time is t (the per-time-point networks of parallel score matching)."""

    def __init__(self, t: float):
        super().__init__(t, t)

    def __call__(self, n, device=None, dtype=None):
        import torch
        return torch.full((n,), self.t_min, device=device, dtype=dtype)

    def quantile(self, u):
        return u * 0 + self.t_min


def log_grid(t_min: float, t_max: float, points: int = GRID) -> Tensor:
    """``points`` times from t_min to t_max, log-spaced (dense where densities like 1/t are steep), float64."""
    import torch
    return torch.logspace(math.log10(t_min), math.log10(t_max), points, dtype=torch.float64)


class TabulatedTimes(TimeSampler):
    """A distribution given by its (unnormalised, increasing) distribution function ``cdf`` on a log-spaced
    grid of [t_min, t_max], inverted by linear interpolation (a piecewise-constant density per cell)."""

    def __init__(self, t_min: float, t_max: float, cdf: Callable[[Tensor], Tensor], stratified: bool = False):
        super().__init__(t_min, t_max, stratified)
        self.grid = log_grid(self.t_min, self.t_max)
        values = cdf(self.grid)
        values = values - values[0]
        if not (values[-1] > 0) or bool((values[1:] < values[:-1]).any()):
            raise UserError(f"time sampler: the distribution function on [{t_min}, {t_max}] is not increasing "
                            "(no mass in the range?)")
        self.cdf = values / values[-1]

    def quantile(self, u):
        import torch
        u64 = u.double().clamp(0, 1)
        cdf, grid = self.tables_on(u64.device, "cdf", "grid")
        i = torch.searchsorted(cdf, u64, right=True).clamp(1, len(cdf) - 1)
        lo, hi = cdf[i - 1], cdf[i]
        frac = torch.where(hi > lo, (u64 - lo) / (hi - lo).clamp_min(1e-300), torch.zeros_like(u64))
        t = grid[i - 1] + frac * (grid[i] - grid[i - 1])
        return t.to(u.dtype).clamp(self.t_min, self.t_max)

    def pdf(self, t: Tensor) -> Tensor:
        """The normalised density of the tabulated distribution at t (for tests and pictures)."""
        import torch
        t64 = t.double()
        grid, cdf = self.tables_on(t64.device, "grid", "cdf")
        i = torch.searchsorted(grid, t64, right=True).clamp(1, len(grid) - 1)
        return ((cdf[i] - cdf[i - 1]) / (grid[i] - grid[i - 1])).to(t.dtype)


class PiecewiseTimes(TimeSampler):
    """Shares ``weights`` of the draws in the bins between ``edges`` (increasing, from t_min to t_max),
    uniform in t inside a bin. The weights may change during training (``set_weights``)."""

    def __init__(self, edges, weights, stratified: bool = False):
        import torch
        self.edges = torch.as_tensor(edges, dtype=torch.float64)
        super().__init__(float(self.edges[0]), float(self.edges[-1]), stratified)
        if len(self.edges) < 2 or bool((self.edges[1:] <= self.edges[:-1]).any()):
            raise UserError(f"time bins must be increasing, got {self.edges.tolist()}")
        self.set_weights(weights)

    def set_weights(self, weights, normalise: bool = True) -> None:
        """Use ``weights`` as the bins' shares, divided by their sum unless ``normalise`` is False (a checkpoint's
        shares: dividing them again by a sum 1 ulp off 1 would change their last bits, and a resumed run's draws)."""
        import torch
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(self.edges) - 1,) or not bool(torch.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise UserError(f"time-bin shares must be {len(self.edges) - 1} non-negative numbers with a positive "
                            f"sum, got {w.tolist()}")
        self.weights = w / w.sum() if normalise else w.clone()
        self.cum = torch.cat([w.new_zeros(1), self.weights.cumsum(0)])
        self.cum[-1] = 1.0
        self.copies = {}

    def quantile(self, u):
        import torch
        u64 = u.double().clamp(0, 1)
        cum, edges = self.tables_on(u64.device, "cum", "edges")
        k = (torch.searchsorted(cum, u64, right=True) - 1).clamp(0, len(edges) - 2)
        share = (cum[k + 1] - cum[k]).clamp_min(1e-300)
        frac = ((u64 - cum[k]) / share).clamp(0, 1)
        return (edges[k] + frac * (edges[k + 1] - edges[k])).to(u.dtype)

    def bin_of(self, t: Tensor) -> Tensor:
        import torch
        return torch.bucketize(t.double(), self.tables_on(t.device, "edges")[0][1:-1], right=True)

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone()}

    def load_state_dict(self, state: dict) -> None:
        if "weights" in state:
            self.set_weights(state["weights"], normalise=False)


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x (xp increasing), constant beyond the ends."""
    import torch
    k = torch.searchsorted(xp, x, right=True).clamp(1, len(xp) - 1)
    frac = ((x - xp[k - 1]) / (xp[k] - xp[k - 1])).clamp(0, 1)
    return fp[k - 1] + frac * (fp[k] - fp[k - 1])


# -- the plug-ins ----------------------------------------------------------------------------------

@dataclass
class TimePlugin(Plugin):
    """Base of the time samplers: ``bind`` gives the sampler of one time range."""

    stratified: bool = option(False, "one time per stratum of the batch (strata spread over the DDP ranks of a "
                              "group) instead of independent draws")

    def bind(self, sde: SDE, t_min: float, t_max: float) -> TimeSampler:
        return TabulatedTimes(t_min, t_max, lambda t: self.cdf(sde, t), self.stratified)

    def cdf(self, sde: SDE, t: Tensor) -> Tensor:
        """An unnormalised, increasing distribution function of the times on [eps, T] (float64 t)."""
        raise NotImplementedError


@TIME_SAMPLERS.register("uniform")
@dataclass
class Uniform(TimePlugin):
    """t ~ U[t_min, t_max]."""

    def bind(self, sde, t_min, t_max):
        return UniformTimes(t_min, t_max, self.stratified)

    def cdf(self, sde, t):
        return t


@TIME_SAMPLERS.register("lognormal")
@dataclass
class LogNormal(TimePlugin):
    """ln(sigma_t / alpha_t) ~ N(p_mean, p_std), truncated to the time range (EDM)."""

    p_mean: float = option(-1.2, "lognormal time sampler: mean of ln(sigma_t / alpha_t) (EDM images -1.2, EDM2's "
                           "2-D toy -2.3)")
    p_std: float = option(1.2, "lognormal time sampler: std of ln(sigma_t / alpha_t) (EDM images 1.2, EDM2's 2-D "
                          "toy 1.5)", above=0)

    def cdf(self, sde, t):
        import torch
        z = (-0.5 * sde.log_snr(t) - self.p_mean) / self.p_std
        return torch.special.ndtr(z)


@TIME_SAMPLERS.register("likelihood")
@dataclass
class LikelihoodTimes(TimePlugin):
    """Density proportional to g^2 / sigma^2 (the likelihood weighting as an importance density)."""

    def cdf(self, sde, t):
        import torch
        density = sde.g2(t) / sde.sigma(t) ** 2
        steps = (t[1:] - t[:-1]) * 0.5 * (density[1:] + density[:-1])
        return torch.cat([t.new_zeros(1), steps.cumsum(0)])


def parse_numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} '{text}': expected comma-separated numbers") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UserError(f"{what} '{text}': expected finite comma-separated numbers")
    return values


@TIME_SAMPLERS.register("bins")
@dataclass
class Bins(TimePlugin):
    """Given shares of the draws between given times, uniform inside each bin."""

    time_edges: str = option("0.1", "bins time sampler: inner bin edges in t, e.g. 0.02,0.1 (the bins split [eps, T])")
    time_shares: str = option("0.5,0.5", "bins time sampler: share of the draws in each bin, e.g. 0.3,0.3,0.4")

    def validate(self):
        edges = parse_numbers(self.time_edges, "--time-edges")
        shares = parse_numbers(self.time_shares, "--time-shares")
        if len(shares) != len(edges) + 1:
            raise UserError(f"--time-shares needs {len(edges) + 1} shares for {len(edges)} inner edges, got "
                            f"{len(shares)}")
        if any(s < 0 for s in shares) or sum(shares) <= 0:
            raise UserError(f"--time-shares must be non-negative with a positive sum, got {self.time_shares}")
        if any(b <= a for a, b in zip(edges[:-1], edges[1:])) or any(not 0 < e < 1 for e in edges):
            raise UserError(f"--time-edges must be increasing and inside (0, 1), got {self.time_edges}")

    def density_bins(self, sde: SDE, t_min: float, t_max: float) -> tuple[list[float], list[float]]:
        """The bins of [eps, T] and their shares, restricted to [t_min, t_max] (in proportion to the overlap)."""
        inner = [e for e in parse_numbers(self.time_edges, "--time-edges") if sde.eps < e < sde.T]
        shares = parse_numbers(self.time_shares, "--time-shares")
        full = [sde.eps, *inner, sde.T]
        edges, weights = [t_min], []
        for (a, b), s in zip(zip(full[:-1], full[1:]), shares):
            lo, hi = max(a, t_min), min(b, t_max)
            if hi > lo:
                weights.append(s * (hi - lo) / (b - a))
                edges.append(hi)
        return edges, weights

    def bind(self, sde, t_min, t_max):
        edges, weights = self.density_bins(sde, t_min, t_max)
        if sum(weights) <= 0:
            raise UserError(f"--time-shares give no draws in [{t_min:g}, {t_max:g}]")
        return PiecewiseTimes(edges, weights, self.stratified)

    def cdf(self, sde, t):
        import torch
        edges, weights = self.density_bins(sde, float(t[0]), float(t[-1]))
        cum = torch.cat([t.new_zeros(1), torch.tensor(weights, dtype=t.dtype).cumsum(0)])
        return interp(t, torch.tensor(edges, dtype=t.dtype), cum)


class AdaptiveTimes(PiecewiseTimes):
    """Bins of equal width in log-SNR whose shares follow where a held-out bound still falls fastest.

    ``update(bound)`` takes the held-out bound per bin for the current model (the ELBO's score term
    restricted to the bin: W_k x the mean epsilon-MSE on a fixed probe set, W_k = int_bin g^2 / sigma^2 dt),
    compares it with the previous one, and divides the decrease by the draws the bin received since:
    the gain per draw, smoothed over updates (factor ``smoothing``). The shares become proportional to the
    positive smoothed gains, mixed with ``floor`` of shares uniform in log-SNR (so no bin starves and
    the estimate stays alive everywhere). Until the first measured decrease the shares are the uniform
    log-SNR ones. This tracks what the allocation is for - lowering the held-out bound - rather than the
    loss itself, which is largest where it is irreducible.
    """

    def __init__(self, sde: SDE, t_min: float, t_max: float, bins: int = 16, floor: float = 0.2,
                 smoothing: float = 0.5, power: float = 1.0, stratified: bool = False):
        import torch
        lam = sde.log_snr(torch.tensor([t_min, t_max], dtype=torch.float64))
        levels = torch.linspace(float(lam[0]), float(lam[1]), bins + 1, dtype=torch.float64)
        grid = log_grid(t_min, t_max)
        edges = interp(-levels, -sde.log_snr(grid), grid)  # -log-SNR increases with t
        edges[0], edges[-1] = t_min, t_max
        self.floor, self.smoothing, self.power = float(floor), float(smoothing), float(power)
        self.base = torch.full((bins,), 1.0 / bins, dtype=torch.float64)
        super().__init__(edges, self.base, stratified)
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.previous: Tensor | None = None
        self.gain = torch.zeros(bins, dtype=torch.float64)

    def __call__(self, n, device=None, dtype=None):
        import torch
        t = super().__call__(n, device, dtype)
        self.counts += torch.bincount(self.bin_of(t).cpu(), minlength=len(self.counts)).double()
        return t

    def bound(self, model, sde: SDE, probe: Tensor, seed: int = 0) -> Tensor:
        """The held-out bound per bin: W_k x mean over the probe examples of ||eps_theta(x_t, t) - z||^2, each
        example at one time per bin (stratified inside the bin) with noise fixed by ``seed`` (a paired
        measurement: between two calls only the model changes)."""
        import torch
        edges = self.edges.to(probe.device)
        k, n = len(edges) - 1, probe.shape[0]
        g = torch.Generator(device=probe.device).manual_seed(seed)
        z = torch.randn((k, *probe.shape), generator=g, device=probe.device, dtype=probe.dtype)
        frac = (torch.arange(n, device=probe.device, dtype=torch.float64) + 0.5) / n
        out = torch.empty(k, dtype=torch.float64)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for b in range(k):
                t = (edges[b] + frac * (edges[b + 1] - edges[b])).to(probe.dtype)
                xt = sde.perturb(probe, t, z[b])
                out[b] = (model.eps(xt, t) - z[b]).pow(2).flatten(1).mean(1).double().mean()
        model.train(was_training)
        return out * self.bin_weights(sde)

    def bin_weights(self, sde: SDE) -> Tensor:
        """W_k = int over bin k of g^2 / sigma^2 dt (trapezoid on a fine log grid)."""
        import torch
        out = torch.empty(len(self.edges) - 1, dtype=torch.float64)
        for b, (lo, hi) in enumerate(zip(self.edges[:-1].tolist(), self.edges[1:].tolist())):
            t = log_grid(lo, hi, 257)
            density = sde.g2(t) / sde.sigma(t) ** 2
            out[b] = ((t[1:] - t[:-1]) * 0.5 * (density[1:] + density[:-1])).sum()
        return out

    def update(self, bound: Tensor) -> None:
        """Move the shares after measuring ``bound`` (K,) on the probe set; the draw counts restart."""
        import torch
        bound = bound.detach().double().cpu()
        if self.previous is not None:
            gain = (self.previous - bound) / self.counts.clamp_min(1.0)
            self.gain = self.smoothing * self.gain + (1 - self.smoothing) * gain
            positive = self.gain.clamp_min(0) ** self.power
            if positive.sum() > 0:
                self.set_weights((1 - self.floor) * positive / positive.sum() + self.floor * self.base)
        self.previous = bound
        self.counts = torch.zeros_like(self.counts)

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone(), "counts": self.counts.clone(), "gain": self.gain.clone(),
                "previous": None if self.previous is None else self.previous.clone()}

    def load_state_dict(self, state: dict) -> None:
        if "gain" not in state:
            return
        self.set_weights(state["weights"], normalise=False)
        self.counts, self.gain = state["counts"].clone(), state["gain"].clone()
        self.previous = None if state["previous"] is None else state["previous"].clone()


@TIME_SAMPLERS.register("adaptive")
@dataclass
class Adaptive(TimePlugin):
    """Bins in log-SNR with shares that follow the measured decrease of a held-out bound (``AdaptiveTimes``)."""

    adapt_bins: int = option(16, "adaptive time sampler: bins of equal width in log-SNR", min=2)
    adapt_every: int = option(100, "adaptive time sampler: steps between measurements of the held-out bound", min=1)
    adapt_floor: float = option(0.2, "adaptive time sampler: share of the draws kept uniform in log-SNR", above=0,
                                max=1)
    adapt_probe: int = option(256, "adaptive time sampler: held-out examples of the probe set (kept out of "
                              "training)", min=1)
    adapt_smoothing: float = option(0.5, "adaptive time sampler: weight of the past in the smoothed gains")
    adapt_power: float = option(1.0, "adaptive time sampler: shares proportional to gain^power")

    def bind(self, sde, t_min, t_max):
        return AdaptiveTimes(sde, t_min, t_max, self.adapt_bins, self.adapt_floor, self.adapt_smoothing,
                             self.adapt_power, stratified=self.stratified)

    def cdf(self, sde, t):
        return -sde.log_snr(t)  # before any measurement: uniform in log-SNR


__all__ = ["AdaptiveTimes", "FixedTime", "PiecewiseTimes", "TIME_SAMPLERS", "TabulatedTimes", "TimePlugin",
           "TimeSampler", "UniformTimes", "interp", "log_grid"]
