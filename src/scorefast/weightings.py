"""Loss weightings, all derived from the SDE's signal-to-noise ratio (``SDE.snr``), as registered plug-ins.

Every loss in scorefast is computed in the epsilon form, E || eps_theta(x_t, t) - z ||^2 with
x_t = alpha_t x0 + sigma_t z, whatever the network's parameterisation; a weighting is the factor w(t)
in front of it. With SNR(t) = alpha_t^2 / sigma_t^2, the errors of the other targets are fixed
multiples of the epsilon error: x0_hat - x0 = -(sigma/alpha)(eps_hat - z), so an x0-space weight v
is the epsilon-space weight v / SNR; score-space s_hat - s = -(eps_hat - z) / sigma_t; and the EDM
denoiser in the variable y = x / alpha (noise level s = sigma / alpha = SNR^-1/2) errs by s (eps_hat - z).

The objective a (time sampler p, weighting w) pair minimises is int p(t) w(t) E||eps_theta - z||^2 dt
(docs/methods.md 5 has the table): uniform t with 'likelihood', and the likelihood time sampler with
'epsilon', both minimise the ELBO's score term (Song, Durkan, Murray, Ermon 2021), with different
variance.

This module imports nothing heavy (the weights use tensor methods only), so that the command line can
list the weightings and their options without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UserError
from .registry import Plugin, Registry, option

if TYPE_CHECKING:
    from torch import Tensor

    from .sde import SDE

WEIGHTINGS = Registry("weighting", flag="weighting", title="loss weighting", default="epsilon")


class Weighting(Plugin):
    """w(t) on the epsilon-form loss; ``__call__(sde, t)`` has t's shape."""

    def bind(self, sigma_data: float) -> Weighting:
        """This weighting for data of standard deviation ``sigma_data`` (only EDM's depends on it)."""
        return self

    def __call__(self, sde: SDE, t: Tensor) -> Tensor:
        raise NotImplementedError


@WEIGHTINGS.register("epsilon")
@dataclass
class Epsilon(Weighting):
    """w = 1: the 'simple' loss of DDPM (lambda = sigma^2 in the score form)."""

    def __call__(self, sde, t):
        return t.new_ones(t.shape)


@WEIGHTINGS.register("likelihood")
@dataclass
class Likelihood(Weighting):
    """w = g^2 / sigma^2: the loss becomes the ELBO's score term (a bound on the NLL)."""

    def __call__(self, sde, t):
        return sde.g2(t) / sde.sigma(t) ** 2


@WEIGHTINGS.register("inv_g2")
@dataclass
class InvG2(Weighting):
    """w = 1 / (2 g^2): the score-embedding code's choice."""

    def __call__(self, sde, t):
        return 0.5 / sde.g2(t)


@WEIGHTINGS.register("min-snr")
@dataclass
class MinSNR(Weighting):
    """Min-SNR-gamma (Hang et al. 2023): x0-space weight min(SNR, gamma), i.e. min(SNR, gamma) / SNR on the
    epsilon loss (min(SNR, gamma) / (SNR + 1) on the v loss)."""

    snr_gamma: float = option(5.0, "gamma of the min-snr and soft-min-snr weightings", above=0)

    def __call__(self, sde, t):
        ratio = sde.snr(t)
        return ratio.clamp(max=self.snr_gamma) / ratio


@WEIGHTINGS.register("soft-min-snr")
@dataclass
class SoftMinSNR(Weighting):
    """The smooth minimum of min-SNR: x0-space weight SNR gamma / (SNR + gamma), i.e. gamma / (SNR + gamma) on
    the epsilon loss. k-diffusion's soft-min-snr is gamma = 1 with the SNR measured against sigma_data^2."""

    snr_gamma: float = option(5.0, "gamma of the min-snr and soft-min-snr weightings", above=0)

    def __call__(self, sde, t):
        return self.snr_gamma / (sde.snr(t) + self.snr_gamma)


@WEIGHTINGS.register("edm")
@dataclass
class EDM(Weighting):
    """EDM's lambda(s) = (s^2 + sd^2) / (s sd)^2 on the denoiser's error (Karras et al. 2022), i.e.
    1 + s^2 / sd^2 = 1 + 1 / (SNR sd^2) on the epsilon loss: with EDM's preconditioning (``--param edm``)
    this is the unit-weighted loss of the raw network F. ``sigma_data`` is the data's (``--sigma-data``,
    bound by :meth:`bind`)."""

    sigma_data: float = 0.5

    def bind(self, sigma_data: float) -> EDM:
        if not sigma_data > 0:
            raise UserError(f"--sigma-data must be > 0, got {sigma_data}")
        return EDM(sigma_data=float(sigma_data))

    def __call__(self, sde, t):
        return 1 + 1 / (sde.snr(t) * self.sigma_data**2)


__all__ = ["EDM", "Epsilon", "InvG2", "Likelihood", "MinSNR", "SoftMinSNR", "WEIGHTINGS", "Weighting"]
