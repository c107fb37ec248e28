"""Priors at the end time T, one registered plug-in each (shorter diffusion times, Franzese et al. 2023).

``--prior NAME`` selects one; a run needs a fitted prior when the SDE's reference prior does not hold at its
T (T < 1) or when a prior other than the standard one is asked for. ``--prior-fit`` says when it is fitted
(before training, alongside it in a background thread, or after it); a prior fitted before training counts in
the run's wall-clock.
The densities themselves (``nn.Module``s with ``fit``, ``log_prob``, ``sample``) are in ``densities``,
imported when a prior is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..registry import Plugin, Registry, option

if TYPE_CHECKING:
    from ..sde import SDE
    from .densities import Prior

PRIORS = Registry("prior", flag="prior", title="prior at T", default="standard")
FIT_WHEN = ("before", "alongside", "after")


@dataclass
class PriorPlugin(Plugin):
    """Base of the priors: when to fit, and how to build the density for data of ``dim`` values."""

    fit: str = option("alongside", "when to fit the prior: before, alongside (default, in a background thread) or "
                      "after training", flag="prior_fit", choices=FIT_WHEN)

    def needed(self, sde: SDE) -> bool:
        """Whether a run on ``sde`` samples from (and so must fit) this prior rather than the SDE's reference prior:
        a prior other than the standard one, or an SDE whose reference prior does not hold at its T."""
        return self.name != "standard" or not sde.prior_holds_at_T

    def build(self, dim: int, sde: SDE) -> Prior:
        raise NotImplementedError

    def fit_options(self) -> dict:
        """Keyword arguments of ``Prior.fit`` set by this plug-in's options."""
        return {}


@PRIORS.register("standard")
@dataclass
class Standard(PriorPlugin):
    """The SDE's reference prior N(0, prior_std^2 I) (the baseline)."""

    def build(self, dim, sde):
        from .densities import StandardPrior
        return StandardPrior(dim, std=sde.prior_std())


@PRIORS.register("gaussian")
@dataclass
class Gaussian(PriorPlugin):
    """The moment-matched Gaussian of p_T (closed form)."""

    def build(self, dim, sde):
        from .densities import GaussianPrior
        return GaussianPrior(dim)


@dataclass
class FittedOptions:
    """Options of the priors fitted by iterations."""

    prior_steps: int = option(2000, "maximum optimisation steps of the prior fit (early-stopped on held-out data)",
                              min=1)

    def fit_options(self) -> dict:
        return {"steps": self.prior_steps}


@PRIORS.register("gmm")
@dataclass
class GMM(FittedOptions, PriorPlugin):
    """A Gaussian mixture fitted by online EM on fresh forward samples."""

    prior_components: int = option(8, "mixture components of the gmm prior", min=1)

    def build(self, dim, sde):
        from .densities import GMMPrior
        return GMMPrior(dim, k=self.prior_components)


@PRIORS.register("flow")
@dataclass
class Flow(FittedOptions, PriorPlugin):
    """A zuko normalizing flow on the residual whitened by the moment-matched Gaussian."""

    def build(self, dim, sde):
        from .densities import FlowPrior
        return FlowPrior(dim)


__all__ = ["FIT_WHEN", "Flow", "GMM", "Gaussian", "PRIORS", "PriorPlugin", "Standard"]
