"""Parallel score matching (Haxholli & Lorenzi 2023): the mathematics of one score network per time interval.

TPSM splits [t_min, t_max] at edges t_min = tau_0 < ... < tau_K = t_max; network k is trained by DSM
on t ~ U[tau_k, tau_{k+1}] only, independently of the others, and the composite score is
s(x, t) = s_k(x, t) on block k (no blending). DPSM is the extreme case: time-unconditioned networks,
network k trained at the single time tau_{k+1} and used, frozen at that time, on [tau_k, tau_{k+1}].

:class:`PiecewiseModel` is the composite. It speaks the engine's piecewise protocol (``edges`` and
``piece(k)``), so the samplers and the likelihood integrate it block by block, never stepping across
an edge, without knowing what is inside. Partitions: 'equal' in t, or 'logsnr', equally spaced in
the SDE's lambda(t) = log(alpha_t^2 / sigma_t^2), which puts more edges near t = 0 (the published unequal
partitions [0, 0.1, 1] and [0, 0.02, 0.1, 0.3, 1] are roughly of that kind). The plug-ins that choose a
partition for a run are in ``partitions``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError
from ..sde import SDE

Tensor = torch.Tensor

SPACINGS = ("logsnr", "equal")


def check_partition(edges: Sequence[float], steps: int | None = None, t_min: float | None = None,
                    t_max: float | None = None) -> list[float]:
    """Validate interval edges and return them as floats (ends snapped to t_min / t_max).

    Raises :class:`UserError` unless the edges are finite and strictly increasing, cover
    [t_min, t_max] when those are given, and leave every interval at least one of ``steps`` steps.
    """
    try:
        edges = [float(e) for e in edges]
    except (TypeError, ValueError):
        raise UserError(f"edges must be numbers, got {edges!r}") from None
    if len(edges) < 2:
        raise UserError(f"a partition needs at least two edges, got {edges}")
    if not all(math.isfinite(e) for e in edges):
        raise UserError(f"edges must be finite, got {edges}")
    for name, want, i in (("first", t_min, 0), ("last", t_max, -1)):
        if want is None:
            continue
        if not math.isclose(edges[i], want, rel_tol=1e-9, abs_tol=1e-12):
            raise UserError(f"edges must cover [{t_min}, {t_max}]: the {name} edge is {edges[i]}, not {want}")
        edges[i] = float(want)
    bad = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if not a < b]
    if bad:
        raise UserError(f"edges must be strictly increasing: {bad[0][0]} is followed by {bad[0][1]}")
    K = len(edges) - 1
    if steps is not None and steps < K:
        raise UserError(f"{K} intervals need at least {K} steps (one per interval), got {steps}")
    return edges


def partition(kind: str, K: int, t_min: float, t_max: float, sde: SDE | None = None) -> list[float]:
    """K + 1 edges from t_min to t_max, equally spaced in t ('equal') or in the SDE's log-SNR ('logsnr').

    The log-SNR edges solve lambda(t) = lambda_j by bisection on the monotone lambda (vectorised over
    the K - 1 inner edges, in float64).
    """
    if kind not in SPACINGS:
        raise UserError(f"unknown --partition '{kind}'; choose one of allocation, {', '.join(SPACINGS)}")
    try:
        K = operator.index(K)
    except TypeError:
        raise UserError(f"the number of intervals must be an integer, got {K!r}") from None
    if K < 1:
        raise UserError(f"the number of intervals must be at least 1, got {K}")
    t_min, t_max = float(t_min), float(t_max)
    if not t_min < t_max:
        raise UserError(f"need t_min < t_max, got [{t_min}, {t_max}]")
    if kind == "equal":
        edges = torch.linspace(t_min, t_max, K + 1, dtype=torch.float64).tolist()
    else:
        if sde is None:
            raise UserError("the 'logsnr' partition needs the SDE")
        ends = torch.tensor([t_min, t_max], dtype=torch.float64)
        lam_lo, lam_hi = sde.log_snr(ends).tolist()
        if not (math.isfinite(lam_lo) and math.isfinite(lam_hi) and lam_lo > lam_hi):
            raise UserError(f"log-SNR of {sde} is not finite and decreasing on [{t_min}, {t_max}] "
                            f"({lam_lo} to {lam_hi}); use the 'equal' partition")
        target = torch.linspace(lam_lo, lam_hi, K + 1, dtype=torch.float64)[1:-1]
        lo, hi = torch.full_like(target, t_min), torch.full_like(target, t_max)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            right = sde.log_snr(mid) > target
            lo, hi = torch.where(right, mid, lo), torch.where(right, hi, mid)
        edges = [t_min, *(0.5 * (lo + hi)).tolist(), t_max]
    edges[0], edges[-1] = t_min, t_max
    return check_partition(edges)


def parse_edges(text: str, t_min: float, t_max: float) -> list[float]:
    """Explicit edges such as '0,0.02,0.1,0.3,1'; a leading 0 stands for t_min (the SDE's eps),
    the last edge must be t_max."""
    items = [s.strip() for s in str(text).split(",")]
    if any(not s for s in items):
        raise UserError(f"empty entry in edges '{text}'; write them like '0,0.1,1'")
    try:
        edges = [float(s) for s in items]
    except ValueError:
        raise UserError(f"edges '{text}' are not comma-separated numbers") from None
    if edges[0] == 0.0 and t_min > 0:
        edges[0] = float(t_min)
    return check_partition(edges, t_min=t_min, t_max=t_max)


class FrozenTime(nn.Module):
    """A model evaluated at the fixed time ``t`` whatever time it is asked for (DPSM's frozen score)."""

    def __init__(self, model: nn.Module, t: float):
        super().__init__()
        self.model = model
        self.t = float(t)

    def _frozen(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return torch.full_like(t, self.t)

    def eps(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self.model.eps(x, self._frozen(x, t))

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self.model(x, self._frozen(x, t))

    def extra_repr(self) -> str:
        return f"t={self.t:g}"


class PiecewiseModel(nn.Module):
    """K score models on the blocks [edges[k], edges[k+1]), the last block closed, as one model.

    Samplers and the likelihood use ``edges`` and ``piece(k)``; ``forward`` / ``eps`` dispatch each
    example to the piece of its t (for losses and quick evaluation; a t outside the edges goes to
    the nearest piece).
    """

    def __init__(self, models: Sequence[nn.Module], edges: Sequence[float]):
        super().__init__()
        edges = check_partition(edges)
        if len(models) != len(edges) - 1:
            raise UserError(f"{len(edges) - 1} intervals need as many models, got {len(models)}")
        self.edges: tuple[float, ...] = tuple(edges)
        self.pieces = nn.ModuleList(models)

    @classmethod
    def per_time_point(cls, models: Sequence[nn.Module], edges: Sequence[float]) -> PiecewiseModel:
        """DPSM: model k (trained at t_k = edges[k+1]) is evaluated at t_k on all of [edges[k], edges[k+1]]."""
        edges = check_partition(edges)
        return cls([FrozenTime(m, t) for m, t in zip(models, edges[1:])], edges)

    def piece(self, k: int) -> nn.Module:
        return self.pieces[k]

    def index(self, t: Tensor) -> Tensor:
        """The piece of each time: k with edges[k] <= t < edges[k+1] (t = edges[-1] in the last)."""
        inner = torch.tensor(self.edges[1:-1], dtype=t.dtype, device=t.device)
        return torch.bucketize(t, inner, right=True)

    def _dispatch(self, method: str, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]).contiguous()
        idx = self.index(t)
        ks = idx.unique().tolist()
        if len(ks) == 1:
            return getattr(self.pieces[ks[0]], method)(x, t)
        out = None
        for k in ks:
            m = idx == k
            y = getattr(self.pieces[k], method)(x[m], t[m])
            if out is None:
                out = y.new_zeros((x.shape[0], *y.shape[1:]))
            out = out.index_put((m,), y)
        return out

    def eps(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self._dispatch("eps", x, t)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self._dispatch("forward", x, t)

    def extra_repr(self) -> str:
        shown = ", ".join(f"{e:.4g}" for e in self.edges[:6]) + (", ..." if len(self.edges) > 6 else "")
        return f"K={len(self.pieces)}, edges=[{shown}]"


def assemble(models: Sequence[nn.Module], edges: Sequence[float], per_time_point: bool = False) -> PiecewiseModel:
    """The composite of trained interval models (frozen at edges[k+1] for DPSM's per-time-point ones)."""
    if per_time_point:
        return PiecewiseModel.per_time_point(models, edges)
    return PiecewiseModel(models, edges)


__all__ = ["SPACINGS", "FrozenTime", "PiecewiseModel", "assemble", "check_partition", "parse_edges", "partition"]
