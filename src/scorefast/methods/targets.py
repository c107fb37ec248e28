"""Training targets: what the score network regresses on, one registered plug-in each.

``--method NAME`` selects one; its options are the dataclass fields below (flags of ``scorefast train``).
A target says only what the network regresses onto: its ``precompute`` (timed by the recipe, so that a
time-to-quality comparison counts it) returns the goal of ``objective.Objective``, which draws the times,
the noise and the perturbation and weights the loss:

- ``dsm``: plain denoising score matching, target -z / sigma_t (noisy, unbiased).
- ``fp-regress``: regression onto the Fokker-Planck grid score of the data's KDE (d <= 3): a
  zero-variance target (Na et al. 2024, made consistent; docs/methods.md 1.4).
- ``empirical``: regression onto the closed-form score of the diffused KDE over a reference batch
  (Stable Target Field, Xu et al. 2023), any dimension, optionally only inside a sigma band.
- ``knn``: the same over the k nearest training points of x_t (Niedoba et al. 2024).
- ``fp-embed``: the score-embedding paper's transport embedding (its published form, see
  ``embedding.Embedding``); ``--fp-variant paper`` reproduces the published per-image construction.

Heavy modules (torch, the solvers) are imported when a target precomputes, not when this module is
imported, so the command line can list the targets and their options instantly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..errors import UserError
from ..registry import Plugin, Registry, option

if TYPE_CHECKING:
    import torch

    from ..objective import Goal
    from ..sde import SDE

TARGETS = Registry("target", flag="method", title="training target", default="dsm")
MAX_GRID_DIM = 3  # the FP grid solver's dimensions (fokker_planck.MAX_DIM; checked by a test)


class Target(Plugin):
    """Base of the training targets; a subclass overrides ``precompute`` (and ``check`` for data it refuses)."""

    draws_own_times: ClassVar[bool] = False

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise UserError if this target cannot train on examples of ``shape`` (before anything is written)."""

    def precompute(self, sde: SDE, x: torch.Tensor, *, progress: bool) -> tuple[Goal, dict]:
        """(the objective's goal, info about the precomputation) for training data ``x`` (N, ...)."""
        raise NotImplementedError


@TARGETS.register("dsm")
@dataclass
class DSM(Target):
    """Plain denoising score matching."""

    def precompute(self, sde, x, *, progress):
        from ..objective import Goal
        return Goal(), {}


def _reference(sde, x, bandwidth: float | None, reference_size: int, band=None):
    """The reference-batch (Stable Target Field) provider; bandwidth 0 unless given: the empirical distribution."""
    from ..estimators import ReferenceBatchTarget
    h = 0.0 if bandwidth is None else float(bandwidth)
    size = min(reference_size, len(x))
    info = {"source": "reference batch", "bandwidth": h, "reference_size": size, "band": band}
    return ReferenceBatchTarget(sde, x, size, bandwidth=h, band=band), info


def _grid(sde, x, grid: int, steps: int, bandwidth: float | None, progress: bool):
    """The FP grid solution's score as a fixed target provider (d <= 3)."""
    from ..objective import FixedField
    from .fokker_planck import scott_bandwidth, solve_fp
    flat = x.flatten(1)
    h = scott_bandwidth(flat.detach().cpu().double().numpy()) if bandwidth is None else float(bandwidth)
    stats: dict = {}
    sol = solve_fp(flat, sde, grid=grid, steps=steps, bandwidth=h, progress=progress, stats=stats)
    info = {"source": "grid", "bandwidth": h, "grid": grid, "fp_steps": steps,
            "box": [[float(a[0]), float(a[-1])] for a in sol.axes], "factorizations": stats["factorizations"]}
    return FixedField(sol.score_at), info


def _regression(provider):
    """Regression onto a provider's score (one fixed field, or a field per batch)."""
    from ..objective import ScoreGoal
    return ScoreGoal(provider)


@dataclass
class BandOptions:
    """Options of the targets that can be restricted to a band of noise levels (DSM's target outside)."""

    sigma_lo: float | None = option(None, "lower end of the sigma band where the target is used (DSM's target "
                                    "outside; default: no band)", above=0)
    sigma_hi: float | None = option(None, "upper end of the sigma band (default: the SDE's sigma at T)", above=0)

    def validate(self) -> None:
        super().validate()
        if None not in (self.sigma_lo, self.sigma_hi) and not self.sigma_lo < self.sigma_hi:
            raise UserError(f"--sigma-lo {self.sigma_lo} must be below --sigma-hi {self.sigma_hi}")

    def band(self, sde) -> tuple[float, float] | None:
        if self.sigma_lo is None and self.sigma_hi is None:
            return None
        import torch
        top = float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64)))
        return (1e-12 if self.sigma_lo is None else self.sigma_lo, top if self.sigma_hi is None else self.sigma_hi)


@dataclass
class GridOptions:
    """Options of the targets that solve the Fokker-Planck equation on a grid."""

    fp_grid: int = option(129, "Fokker-Planck grid points per dimension", min=3)
    fp_steps: int = option(48, "Fokker-Planck time steps", min=1)
    bandwidth: float | None = option(None, "KDE bandwidth of the initial density (default: Scott's rule for the "
                                     "grid methods, 0 - the data's own distribution - for empirical)", min=0)


@TARGETS.register("fp-regress")
@dataclass
class FPRegress(GridOptions, Target):
    """Regression onto the Fokker-Planck grid score (d <= 3)."""

    def check(self, shape):
        d = math.prod(shape)
        if d > MAX_GRID_DIM:
            raise UserError(f"--method fp-regress needs a grid, so d <= {MAX_GRID_DIM} (got d = {d}); --method "
                            "empirical regresses on the same closed-form score in any dimension")

    def precompute(self, sde, x, *, progress):
        provider, info = _grid(sde, x, self.fp_grid, self.fp_steps, self.bandwidth, progress)
        return _regression(provider), info


@TARGETS.register("empirical")
@dataclass
class Empirical(BandOptions, Target):
    """Regression onto the closed-form score of the diffused KDE over a reference batch - Stable Target Field
    (Xu et al. 2023) as published: the batch plus random training points, redrawn each step - any dimension."""

    reference_size: int = option(1024, "data points in the reference batch of the empirical target (the batch plus "
                                 "random others, redrawn each step; the whole data set when it is smaller)", min=1)
    bandwidth: float | None = option(None, "KDE bandwidth of the initial density (default: Scott's rule for the "
                                     "grid methods, 0 - the data's own distribution - for empirical)", min=0)

    def validate(self):
        super().validate()
        if self.bandwidth and (self.sigma_lo is not None or self.sigma_hi is not None):
            raise UserError("a sigma band falls back to DSM's target, the score of the data itself: it needs "
                            f"--bandwidth 0, got {self.bandwidth}")

    def precompute(self, sde, x, *, progress):
        provider, info = _reference(sde, x, self.bandwidth, self.reference_size, self.band(sde))
        return _regression(provider), info


@TARGETS.register("knn")
@dataclass
class KNN(BandOptions, Target):
    """Regression onto the posterior mean over the k training points nearest to x_t / alpha_t (Niedoba et al.
    2024), found by an exact search: the cost after the search grows with k, not with the data."""

    neighbours: int = option(32, "knn target: nearest training points in the target", min=1)
    knn_tail: int = option(0, "knn target: uniform draws from the other points, the own example included (exactly "
                           "unbiased, noisier)", min=0)
    knn_search: str = option("auto", "knn target: exact search: auto (k-d tree up to d = 16 on CPU), tree, brute",
                             choices=("auto", "tree", "brute"))
    knn_outside: int = option(0, "knn target: outside the sigma band use the reference-batch target of this size "
                              "instead of DSM's (0: DSM's)", min=0)

    def validate(self):
        super().validate()
        if self.knn_outside and self.sigma_lo is None and self.sigma_hi is None:
            raise UserError("--knn-outside needs a sigma band (--sigma-lo / --sigma-hi)")

    def precompute(self, sde, x, *, progress):
        from ..estimators import NearestNeighbourTarget, ReferenceBatchTarget
        if self.neighbours > len(x):
            raise UserError(f"--neighbours {self.neighbours} is more than the {len(x)} training examples")
        outside = ReferenceBatchTarget(sde, x, min(self.knn_outside, len(x))) if self.knn_outside else None
        est = NearestNeighbourTarget(sde, x, self.neighbours, self.knn_tail, band=self.band(sde),
                                     search=self.knn_search, outside=outside)
        return _regression(est), {"source": "nearest neighbours", "k": self.neighbours, "band": est.band}


@TARGETS.register("fp-embed")
@dataclass
class FPEmbed(GridOptions, Target):
    """The paper's transport embedding of a pre-computed score (grid for d <= 3, closed-form mixture above)."""

    draws_own_times: ClassVar[bool] = True
    fp_variant: str = option("sound", "sound (consistent scheme, default) or paper (the published construction, "
                             "defects included: images only)", choices=("sound", "paper"))
    embed_bins: int = option(10, "fp-embed: stratified time bins per batch (the published 10)", min=1)
    reference_size: int = option(1024, "data points in the reference batch of the empirical target (the batch plus "
                                 "random others, redrawn each step; the whole data set when it is smaller)", min=1)

    def check(self, shape):
        if self.fp_variant == "paper" and not (len(shape) == 3 and shape[-1] == shape[-2]):
            raise UserError("--fp-variant paper is the published per-image construction: it needs square images "
                            f"(C, H, W), got examples of shape {tuple(shape)}")

    def precompute(self, sde, x, *, progress):
        from .embedding import Embedding, PaperImageTarget
        if self.fp_variant == "paper":
            provider = PaperImageTarget(sde, x, self.embed_bins)
            info = {"source": "paper-image", "fp_steps": self.embed_bins}
        elif x[0].numel() > MAX_GRID_DIM:
            provider, info = _reference(sde, x, self.bandwidth, self.reference_size)
        else:
            provider, info = _grid(sde, x, self.fp_grid, self.fp_steps, self.bandwidth, progress)
        provider, info = self.embedded(provider, {"variant": self.fp_variant, **info})
        return Embedding(provider, bins=self.embed_bins), info

    def embedded(self, provider, info: dict) -> tuple[object, dict]:
        """The score provider the transport uses, and the info (the control switches it off)."""
        return provider, info


@TARGETS.register("fp-embed-off")
@dataclass
class FPEmbedOff(FPEmbed):
    """fp-embed with every pre-computed score replaced by zero: its precomputation (timed the same way), time
    bins and weighting are kept, so fp-embed against it isolates the embedding itself (docs/methods.md 1.3's
    control, 'the embedding switched off')."""

    def embedded(self, provider, info):
        from .embedding import ZeroScore
        return ZeroScore(), {**info, "embedding": "off"}


__all__ = ["DSM", "Empirical", "FPEmbed", "FPEmbedOff", "FPRegress", "KNN", "TARGETS", "Target"]
