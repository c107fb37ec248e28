"""The prior at T of a truncated run: fitted before training, alongside it (a thread) or after it, as the prior
plug-in says, and loaded once it exists for the periodic metric and the final samples."""

from __future__ import annotations

import threading

import torch

from ..checkpoint import save_checkpoint
from .context import RunContext


def prior_for_eval(ctx: RunContext, cache: dict):
    """The fitted prior at T once it exists (None when the run samples from N(0, I)); False while it is
    still being fitted: the periodic metric waits, since samples from N(0, I) at T < 1 would misstate it."""
    cfg = ctx.cfg
    if not cfg.prior.needed(ctx.sde):
        return None
    if "prior" not in cache:
        if not ctx.run.prior_path.exists():
            return False
        cache["prior"] = ctx.run.load_prior(cfg, ctx.sde, ctx.train.dim, ctx.device)
    return cache["prior"]


def new_prior(ctx: RunContext):
    """The run's prior at T, initialised from its own seed (the training RNG is left where it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.cfg.optim.seed)
        return ctx.cfg.prior.build(ctx.train.dim, ctx.sde)


def fit_prior(ctx: RunContext, prior, progress: bool) -> dict:
    """Fit ``prior`` on forward samples of the training data at T and save it to checkpoints/prior.pt (it
    draws only from its own generators, so it can run in a thread beside training)."""
    cfg = ctx.cfg
    info = prior.fit(ctx.train.x.flatten(1), ctx.sde, seed=cfg.optim.seed, progress=progress,
                     **cfg.prior.fit_options())
    save_checkpoint(ctx.run.prior_path, {"prior": cfg.prior.to_dict(), "dim": ctx.train.dim,
                                         "state": prior.state_dict(), "fit": info})
    return info


class PriorFit:
    """Fits the prior when the plug-in says: before training, alongside it (a thread), or after it."""

    def __init__(self, ctx: RunContext, progress: bool):
        self.ctx, self.progress = ctx, progress
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def pending(self) -> bool:
        cfg = self.ctx.cfg
        return cfg.prior.needed(self.ctx.sde) and not self.ctx.run.prior_path.exists()

    def start(self) -> None:
        if not self.pending():
            return
        if self.ctx.cfg.prior.fit == "before":
            fit_prior(self.ctx, new_prior(self.ctx), self.progress)
        elif self.ctx.cfg.prior.fit == "alongside":
            self.thread = threading.Thread(target=self._work, args=(new_prior(self.ctx),), daemon=True)
            self.thread.start()

    def _work(self, prior) -> None:
        try:
            fit_prior(self.ctx, prior, False)
        except BaseException as exc:  # re-raised in the main thread by finish()
            self.error = exc

    def finish(self) -> None:
        if self.thread is not None:
            self.thread.join()
            if self.error is not None:
                raise self.error
        if self.pending():
            fit_prior(self.ctx, new_prior(self.ctx), self.progress)


__all__ = ["PriorFit", "fit_prior", "new_prior", "prior_for_eval"]
