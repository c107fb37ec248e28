"""Training on pre-computed scores (score embedding, Na et al. 2024; docs/methods.md 1): score providers and the
transport embedding, as goals of ``objective.Objective``.

The training-target plug-ins in ``targets`` build them. A provider's ``for_batch(x0)`` is the score field s*
for a batch; ``objective.ScoreGoal`` regresses onto it:

- ``fp-regress``: onto the Fokker-Planck grid score (d <= 3):
  w(t) || sigma_t (s_theta(x_t, t) - s_grid(x_t, t)) ||^2, x_t = alpha_t x0 + sigma_t z.
- ``empirical`` / ``knn``: onto the posterior-mean targets of ``estimators`` (a reference batch, the
  nearest neighbours).
- ``fp-embed``: the paper's transport embedding (:class:`Embedding`). Per batch, ``bins`` stratified times
  t_1 < ... < t_N (one per equal bin of [t_min, t_max]) are drawn, every example gets a bin n
  (stratified over the batch), and x0 is carried by forward Euler steps of the probability-flow ODE
  with the pre-computed score s*:  x^0 = x0,  x^k = x^(k-1) + (t_k - t_(k-1)) [f(t_k) x^(k-1) -
  g(t_k)^2/2 s*(x^(k-1), t_k)]  (t_0 = 0; for f = 0 this is the paper's x^(k-1) - dt/2 g^2 s*).
  The network sees y = x^n + sigma(t_n) z at time t_n and the loss is DSM, w(t_n) || sigma s_theta(y,
  t_n) + z ||^2. Exactly what that learns: E[-z / sigma | y] = grad log q_n(y), the score of
  q_n = law(x^n) * N(0, sigma_n^2 I). If the transport were exact, law(x^n) = p_(t_n), so q_n is p_(t_n)
  smoothed once more by sigma_n (for VE: the marginal at the time where sigma^2 is 2 sigma_n^2), not
  p_(t_n): the embedded loss does not target the diffusion's score. It is kept because it is the
  published method; ``fp-regress`` / ``empirical`` are the consistent uses of a pre-computed score.
  Score sources: the grid (d <= 3), the closed-form mixture (d > 3), or, with variant 'paper', the
  published per-image feature ``paper_image_score`` (which depends on the image only, not on x).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..objective import Goal
from ..sde import SDE, ScoreFn, append_dims
from ..time_sampling import TimeSampler
from .fokker_planck import paper_image_score

Tensor = torch.Tensor


class ZeroScore:
    """A score provider whose every pre-computed score is zero (fp-embed with the embedding switched off)."""

    def for_batch(self, x0: Tensor) -> ScoreFn:
        return lambda x, t: torch.zeros_like(x)


class PaperImageTarget:
    """The published per-image 'score' (``paper_image_score``) of each training image, looked up by
    the nearest training image to x0 and the nearest solve time; it ignores the point x."""

    def __init__(self, sde: SDE, images: Tensor, steps: int):
        feats = [paper_image_score(img.detach().cpu().numpy(), sde, steps) for img in images]
        self.images = images
        self.t = torch.as_tensor(feats[0][0], dtype=images.dtype, device=images.device)
        self.scores = torch.as_tensor(np.stack([f[1] for f in feats]), dtype=images.dtype, device=images.device)

    def for_batch(self, x0: Tensor) -> ScoreFn:
        which = torch.cdist(x0.flatten(1), self.images.flatten(1)).argmin(1)

        def score(x: Tensor, t: Tensor) -> Tensor:
            n = (torch.as_tensor(t, device=x.device).reshape(-1, 1) - self.t).abs().argmin(1)
            return self.scores[which, n.expand(len(x))].reshape(x.shape)

        return score


class Embedding(Goal):
    """DSM on transported samples (the paper's embedding, see the module docstring): it draws its own times,
    one stratified time per bin on the time sampler's [t_min, t_max], and perturbs the transported point."""

    def __init__(self, provider, bins: int = 10):
        if bins < 1:
            raise UserError(f"fp-embed needs at least one time bin, got {bins}")
        self.provider = provider
        self.bins = int(bins)

    def sample_bins(self, times: TimeSampler, n: int, device=None) -> tuple[Tensor, Tensor]:
        """One stratified time per bin (bins,), and a bin index per example, stratified over the batch."""
        u = torch.rand(self.bins, device=device)
        t = times.t_min + (times.t_max - times.t_min) * (torch.arange(self.bins, device=device) + u) / self.bins
        which = torch.randperm(n, device=device) % self.bins
        return t, which

    def transport(self, sde: SDE, x0: Tensor, times: Tensor, which: Tensor, score: ScoreFn) -> Tensor:
        """x^(which) by forward Euler PF-ODE steps from t = 0 through times[0..which], per example."""
        x, out, t_prev = x0, x0.clone(), 0.0
        for k in range(int(which.max()) + 1):
            tk = times[k].expand(len(x))
            x = x + (times[k] - t_prev) * sde.ode_drift(x, tk, score(x, tk))
            t_prev = times[k]
            out[which == k] = x[which == k]
        return out

    def draw(self, sde, times, x0, t):
        if t is not None:
            raise UserError("fp-embed draws its own times (one stratified time per bin); t cannot be given")
        bins, which = self.sample_bins(times, len(x0), x0.device)
        with torch.no_grad():
            moved = self.transport(sde, x0, bins, which, self.provider.for_batch(x0))
        return bins[which], moved

    def perturb(self, sde, start, t, noise):
        """y = x^n + sigma(t_n) z (the published form: the transported point is not scaled by alpha)."""
        return start + append_dims(sde.sigma(t), start.ndim) * noise


__all__ = ["Embedding", "PaperImageTarget", "ZeroScore"]
