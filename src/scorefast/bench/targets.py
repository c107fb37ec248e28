"""The training target that only a benchmark needs: fp-embed with the embedding switched off.

``fp-embed-off`` keeps everything of ``fp-embed`` - its precomputation (timed the same way), its
stratified time bins shared by the batch, its weighting - and replaces every pre-computed score by
zero, so that fp-embed against fp-embed-off isolates the embedding itself (METHODS.md 1.3's control).
It is registered when ``scorefast.bench`` is imported; a run trained with it reopens in any process
that imported the package.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..methods.targets import TARGETS, FPEmbed


class ZeroScore:
    """A score provider whose every pre-computed score is zero."""

    def for_batch(self, x0):
        import torch
        return lambda x, t: torch.zeros_like(x)


@TARGETS.register("fp-embed-off")
@dataclass
class FPEmbedOff(FPEmbed):
    """fp-embed with every pre-computed score replaced by zero (the 'embedding switched off' control)."""

    def build(self, sde, x, times, **kwargs):
        loss, info = super().build(sde, x, times, **kwargs)
        loss.provider = ZeroScore()
        return loss, {**info, "embedding": "off"}


__all__ = ["FPEmbedOff", "ZeroScore"]
