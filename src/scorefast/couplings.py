"""Noise couplings: which of a batch's noise draws perturbs which example, as registered plug-ins.

The objective draws z_1..z_B ~ N(0, I) for a batch x0_1..x0_B; a coupling reorders the draws over the batch
(``coupling(x0, z) -> z[perm]``):

- ``independent``: as drawn, the forward SDE's own pairing.
- ``minibatch-ot``: exact minibatch optimal transport between data and noise, the permutation that minimises
  sum_i || x0_i - z_perm(i) ||^2, by ``scipy.optimize.linear_sum_assignment`` on the squared Euclidean cost
  (OT-CFM, Tong et al. 2024, torchcfm's exact plan; torchcfm then samples pairs from the plan with
  replacement, here the assignment is used as it is: every draw once).
- ``immiscible``: Immiscible Diffusion (Li et al. 2024): the same assignment on the Euclidean distance (not
  squared), computed in fp16 as the published code does.

A coupled batch still uses each draw once, so the noise marginal is N(0, I); but x_t given x0 is no longer
N(alpha_t x0, sigma_t^2 I), so the intermediate marginals are not the forward SDE's. The network learns
E[z | x_t] under the coupling, and that in the usual probability-flow drift is exactly the coupled path's
velocity: the probability-flow samplers and the probability-flow likelihood stay valid, while the SDE samplers
(em, pc, euler-a), the ELBO and a prior fitted to the forward marginal at T assume the forward SDE and are
refused (:meth:`Coupling.check`). The exact assignment costs O(B^3) per step (0.05 s for B = 512, 8.8 s for
B = 4,096 on 2-D points, one core of a 2-core CPU container, 2026-12-07): batches above ``MAX_BATCH`` are refused.

This module imports nothing heavy at import time (torch and scipy when a coupling is used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .choices import SAMPLERS
from .errors import UserError
from .registry import Plugin, Registry

if TYPE_CHECKING:
    from torch import Tensor

COUPLINGS = Registry("coupling", flag="coupling", title="noise coupling", default="independent")
MAX_BATCH = 4096  # the largest batch an exact assignment is computed for
PROBABILITY_FLOW_SAMPLERS = tuple(SAMPLERS.names(probability_flow=True))  # they follow the probability-flow ODE


class Coupling(Plugin):
    """Pairs a batch with its noise draws: ``__call__(x0, noise)`` returns the draws reordered over the batch."""

    coupled: ClassVar[bool] = True

    def check(self, *, sampler: str, fitted_prior: bool, batch_size: int) -> None:
        """One-line UserError for what a coupled path invalidates: an SDE sampler, a prior fitted at T (or the
        ELBO it brings), a batch too large for the exact assignment."""
        if not self.coupled:
            return
        if sampler not in PROBABILITY_FLOW_SAMPLERS:
            raise UserError(f"--coupling {self.name} trains a path whose marginals are not the forward SDE's: the SDE "
                            f"sampler '{sampler}' needs them; use --sampler {' or '.join(PROBABILITY_FLOW_SAMPLERS)}")
        if fitted_prior:
            raise UserError(f"--coupling {self.name} trains a path whose marginals are not the forward SDE's: a "
                            "prior fitted to the forward marginal at T (T < 1 or a --prior other than standard) and "
                            "its ELBO assume them")
        check_batch(self.name, batch_size)

    def __call__(self, x0: Tensor, noise: Tensor) -> Tensor:
        raise NotImplementedError


def check_batch(name: str, n: int) -> None:
    if n > MAX_BATCH:
        raise UserError(f"--coupling {name} solves an exact assignment per batch, at most {MAX_BATCH} examples (O(B^3) "
                        f"time); got a batch of {n}")


def assign(cost: Tensor) -> Tensor:
    """The permutation p minimising sum_i cost[i, p(i)] (scipy's exact linear sum assignment), on cost's device."""
    import torch
    from scipy.optimize import linear_sum_assignment
    _, cols = linear_sum_assignment(cost.detach().double().cpu().numpy())
    return torch.as_tensor(cols, device=cost.device)


@COUPLINGS.register("independent")
@dataclass
class Independent(Coupling):
    """Each example keeps the noise drawn for it (the forward SDE)."""

    coupled: ClassVar[bool] = False

    def __call__(self, x0, noise):
        return noise


@COUPLINGS.register("minibatch-ot")
@dataclass
class MinibatchOT(Coupling):
    """Exact minibatch OT: the assignment minimising the squared Euclidean cost (OT-CFM)."""

    def __call__(self, x0, noise):
        import torch
        check_batch(self.name, len(x0))
        return noise[assign(torch.cdist(x0.flatten(1), noise.flatten(1)) ** 2)]


@COUPLINGS.register("immiscible")
@dataclass
class Immiscible(Coupling):
    """Immiscible Diffusion: the assignment minimising the Euclidean distance, computed in fp16."""

    def __call__(self, x0, noise):
        import torch
        check_batch(self.name, len(x0))
        return noise[assign(torch.cdist(x0.flatten(1).half(), noise.flatten(1).half()))]


__all__ = ["COUPLINGS", "Coupling", "Immiscible", "Independent", "MAX_BATCH", "MinibatchOT",
           "PROBABILITY_FLOW_SAMPLERS", "assign"]
