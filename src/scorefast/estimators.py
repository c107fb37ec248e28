"""Pre-computed score targets from the training data: the posterior mean over reference points.

For x_t = alpha_t x0 + sigma_t z and a Gaussian KDE of the data with bandwidth h, the diffused density
is (1/N) sum_j N(alpha_t x_j, v_t I), v_t = alpha_t^2 h^2 + sigma_t^2, and its score is

    s(x_t, t) = (alpha_t m(x_t) - x_t) / v_t,   m = sum_j w_j x_j,   w_j ∝ exp(-|x_t - alpha_t x_j|^2 / (2 v_t)).

The estimators here evaluate m self-normalised over a small set of points instead of all N:

- ``ReferenceBatchTarget``: Stable Target Field (Xu, Tong, Jaakkola, ICLR 2023): the set is the
  mini-batch's own clean examples plus random training points, drawn afresh every step and shared by
  the whole batch (the published code's form: every example sees every batch example). Each example's
  own x0 is in its set, so once sigma is small against the data's spacing the weights collapse onto it
  and the target is DSM's (alpha x0 - x_t) / sigma^2.
- ``NearestNeighbourTarget``: the k training points nearest to x_t / alpha_t (the weights depend on
  |x_t / alpha_t - x_j| only), found by an exact search (Niedoba et al., ICML 2024), so that the work
  after the search grows with k; optionally with ``tail`` uniform draws from the other N - k points.

Bias (h = 0, the empirical data p0; the regression's minimiser is E[target | x_t]): a self-normalised
mean over n points drawn from p0 alone is biased for the posterior mean, by O(1/n). With the own x0 in
the set and the other n - 1 points iid from p0 (independent of x0 and z), the target is exactly
unbiased given x_t: the estimator is symmetric in its n points, and the symmetrised law of the points,
(1/n) sum_i p(x_t | x_i) / p_t(x_t) prod_j p0(x_j), cancels the self-normalisation, so
E[target | x_t] = E_p0[p(x_t | x) s(x_t | x)] / p_t(x_t) = grad log p_t(x_t). This holds for STF's set
when the batch is drawn with replacement (as the trainer does); without the own x0 the O(1/n) bias
stays (tests/test_targets_math.py measures both). The plain nearest-neighbour target is deterministic
and truncated: it drops the posterior mass outside the k points (exact when k = N). With ``tail`` = n
the missing mass is estimated: n points uniform over the other N - k, each weighted by (N - k) / n,
the first of them replaced by the own x0 when x0 is not among the k; the same symmetrisation makes
that exactly unbiased too (Niedoba et al. use a proposal built from the k weights, flat at the k-th
weight over the rest, without the own example: consistent, but biased for a finite sample). Unbiased
is not closer: on the 2-D benchmark the tail draws add more variance than the truncation's bias
removes for t < 0.2, so ``tail`` = 0 is the default.

A sigma band [sigma_lo, sigma_hi] restricts the estimator to the noise levels where it gains: outside,
the target is DSM's -z / sigma_t = (alpha_t x0 - x_t) / sigma_t^2, which is unbiased there (at small
sigma the estimators equal it anyway, at large sigma the posterior spreads over the whole data); the
band then needs h = 0, the density DSM's target belongs to. Or outside the band the target is another
estimator's (``outside``): the nearest neighbours are near exact at small sigma and truncated at large
sigma, STF the other way round (benchmarks/targets.py measures both), so k-NN below a sigma and STF
above it is the better of the two at every noise level, each evaluated on its own rows only.

Both estimators use the global torch RNG, like the losses, so that seeding the trainer seeds them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial

import torch

from .analytic import augment_centres, kde_posterior, normalised_weights
from .errors import UserError
from .sde import SDE, as_time

Tensor = torch.Tensor

SEARCHES = ("auto", "tree", "brute")
TREE_MAX_DIM = 16  # 'auto' searches with a k-d tree up to this dimension (on CPU), by brute force above


class PosteriorMeanTarget(ABC):
    """The closed-form target (alpha m - x_t) / v with m estimated by a subclass (``posterior_mean``),
    inside an optional sigma band; outside it, DSM's target or the ``outside`` estimator's."""

    def __init__(self, sde: SDE, data: Tensor, bandwidth: float = 0.0, band: tuple[float, float] | None = None,
                 outside: PosteriorMeanTarget | None = None):
        if not (bandwidth >= 0 and math.isfinite(bandwidth)):
            raise UserError(f"the KDE bandwidth must be >= 0, got {bandwidth}")
        if len(data) < 1:
            raise UserError("the training data for a score target is empty")
        if band is not None:
            lo, hi = (float(b) for b in band)
            top = float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64)))
            if not lo < hi:
                raise UserError(f"sigma band [{lo:g}, {hi:g}] is inverted or empty: it needs sigma_lo < sigma_hi")
            if not (0 < lo and hi <= top):
                raise UserError(f"sigma band [{lo:g}, {hi:g}] must lie inside (0, {top:g}], the SDE's sigma range")
            if bandwidth > 0 and outside is None:
                raise UserError(f"a sigma band falls back to DSM's target, the score of the data itself: it needs "
                                f"bandwidth 0, got {bandwidth:g}")
            band = (lo, hi)
        if outside is not None and (band is None or outside.bandwidth != bandwidth):
            raise UserError("an 'outside' target needs a sigma band and the same KDE bandwidth as the band's target")
        self.sde, self.band, self.bandwidth, self.outside = sde, band, float(bandwidth), outside
        self.data = data.detach().flatten(1)

    @abstractmethod
    def posterior_mean(self, x0: Tensor, rows: Tensor | None, x: Tensor, a: Tensor, var: Tensor) -> Tensor:
        """sum_j w_j x_j (b, d) for flat x (b, d), alpha and v (b,); x0 is the whole flat batch (B, d) of
        training points and ``rows`` the examples that x holds (None: all of them)."""

    def target(self, x0: Tensor, xt: Tensor, t: Tensor | float) -> Tensor:
        """The score target for the batch x0 perturbed to xt at times t (scalar or one per example)."""
        x0f, xf = x0.flatten(1).to(xt.dtype), xt.flatten(1)
        t = as_time(t, xf).reshape(-1).expand(len(xf))
        a, s = self.sde.alpha(t), self.sde.sigma(t)
        var = a * a * self.bandwidth**2 + s * s
        if self.band is None:
            return ((a[:, None] * self.posterior_mean(x0f, None, xf, a, var) - xf) / var[:, None]).view_as(xt)
        out = (a[:, None] * x0f - xf) / var[:, None]
        inside = (s >= self.band[0]) & (s <= self.band[1])
        for est, rows in ((self, inside.nonzero()[:, 0]), (self.outside, (~inside).nonzero()[:, 0])):
            if est is not None and len(rows):
                x, ar, vr = xf[rows], a[rows], var[rows]
                out[rows] = (ar[:, None] * est.posterior_mean(x0f, rows, x, ar, vr) - x) / vr[:, None]
        return out.view_as(xt)

    def for_batch(self, x0: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """The target as a score function (x_t, t) of this batch (the ``provider`` protocol of the
        embedding losses)."""
        return partial(self.target, x0)


class ReferenceBatchTarget(PosteriorMeanTarget):
    """Stable Target Field: the posterior mean over the batch plus ``reference_size`` - B training points
    drawn with replacement every step, one set shared by the batch (see the module docstring); a batch
    of ``reference_size`` or more is its own set (still the own x0 plus B - 1 iid points: unbiased).

    With ``reference_size`` = N the set is the whole data: the exact score of the diffused KDE.
    """

    def __init__(self, sde: SDE, data: Tensor, reference_size: int = 1024, bandwidth: float = 0.0,
                 band: tuple[float, float] | None = None, outside: PosteriorMeanTarget | None = None):
        super().__init__(sde, data, bandwidth, band, outside)
        if not 1 <= reference_size <= len(self.data):
            raise UserError(f"reference size {reference_size} must be between 1 and the data size ({len(self.data)})")
        self.reference_size = int(reference_size)
        self.aug = augment_centres(self.data)

    def reference(self, x0: Tensor) -> Tensor:
        """``augment_centres`` of this step's reference set: the batch x0 (flat) and fresh data points."""
        if self.reference_size == len(self.data):
            return self.aug
        idx = torch.randint(0, len(self.data), (max(0, self.reference_size - len(x0)),), device=self.data.device)
        return torch.cat([augment_centres(x0), self.aug[idx]])

    def posterior_mean(self, x0, rows, x, a, var):
        return kde_posterior(x, a, var, self.reference(x0).to(x.dtype))[0]


class NearestNeighbourTarget(PosteriorMeanTarget):
    """The posterior mean over the k training points nearest to x_t / alpha_t, plus ``tail`` uniform draws
    from the rest (0: the plain truncated form; see the module docstring).

    ``search``: 'tree' (scipy's exact k-d tree, O(k log N) a query in low dimension, on CPU), 'brute'
    (one (B, N) product and top-k, O(N d) a query, any device), 'auto' (the tree up to d = 16 on CPU).
    """

    def __init__(self, sde: SDE, data: Tensor, k: int = 32, tail: int = 0, bandwidth: float = 0.0,
                 band: tuple[float, float] | None = None, search: str = "auto",
                 outside: PosteriorMeanTarget | None = None):
        super().__init__(sde, data, bandwidth, band, outside)
        n = len(self.data)
        if not 1 <= k <= n:
            raise UserError(f"k = {k} nearest neighbours must be between 1 and the data size ({n})")
        if tail < 0:
            raise UserError(f"tail draws must be >= 0, got {tail}")
        if search not in SEARCHES:
            raise UserError(f"unknown neighbour search '{search}'; choose one of {', '.join(SEARCHES)}")
        if search == "auto":
            search = "tree" if self.data.shape[1] <= TREE_MAX_DIM and self.data.device.type == "cpu" else "brute"
        self.k, self.tail, self.search = int(k), int(tail) if k < n else 0, search
        if search == "tree":
            from scipy.spatial import cKDTree

            self.tree = cKDTree(self.data.detach().cpu().double().numpy())
        self.sq = self.data.pow(2).sum(1)

    def neighbours(self, q: Tensor) -> Tensor:
        """Indices (b, k) of the k data points nearest to each row of q (b, d), exactly."""
        if self.search == "tree":
            _, idx = self.tree.query(q.detach().cpu().double().numpy(), k=self.k)
            return torch.as_tensor(idx, device=self.data.device).reshape(len(q), self.k)
        scores = torch.addmm(self.sq.to(q.dtype), q, self.data.to(q.dtype).T, alpha=-2)  # |x|^2 - 2 q.x
        return scores.topk(self.k, dim=1, largest=False, sorted=False).indices

    def tail_indices(self, near: Tensor) -> Tensor:
        """``tail`` indices per row drawn uniformly from the data points not in ``near`` (b, k): the u-th
        point outside is u + #{i : sorted(near)_i - i <= u}."""
        shifted = near.sort(1).values - torch.arange(self.k, device=near.device)
        u = torch.randint(0, len(self.data) - self.k, (len(near), self.tail), device=near.device)
        return u + (shifted[:, None, :] <= u[:, :, None]).sum(-1)

    def posterior_mean(self, x0, rows, x, a, var):
        data = self.data.to(x.dtype)
        near = self.neighbours(x / a[:, None])
        idx = torch.cat([near, self.tail_indices(near)], 1) if self.tail else near
        pts, sq = data[idx], self.sq.to(x.dtype)[idx]
        if self.tail:  # the first tail draw becomes the own x0 where x0 is not among the k nearest
            own = x0 if rows is None else x0[rows]
            outside = ~(pts[:, : self.k] == own[:, None]).all(-1).any(-1)
            pts[outside, self.k], sq[outside, self.k] = own[outside], own[outside].pow(2).sum(1)
        # -|x - a c|^2 / (2 v) up to a per-row constant, from one batched product
        logits = torch.bmm(pts, x[:, :, None])[..., 0] * (a / var)[:, None] - sq * (0.5 * a * a / var)[:, None]
        if self.tail:
            logits[:, self.k :] += math.log((len(self.data) - self.k) / self.tail)
        return torch.bmm(normalised_weights(logits)[:, None], pts)[:, 0]


__all__ = ["NearestNeighbourTarget", "PosteriorMeanTarget", "ReferenceBatchTarget", "SEARCHES"]
