"""Forward SDEs behind one interface.

Every SDE here has a linear drift f(x, t) = f(t) x and a scalar diffusion g(t), so the transition
kernel is Gaussian: p_t(x_t | x0) = N(alpha_t x0, sigma_t^2 I). Samplers, the likelihood, the losses
and every method are written once against :class:`SDE` and work for all families. The end time ``T``
is a field (shorter diffusion times are a first-class option), as is the smallest time ``eps``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial

import torch

from .choices import SDES

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-example tensor (B,) broadcasts against (B, ...)."""
    v = torch.as_tensor(v)
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_time(t: float | Tensor, like: Tensor | None = None) -> Tensor:
    """t as a tensor (on the device and in the dtype of ``like``, when given)."""
    if isinstance(t, Tensor):
        return t if like is None else t.to(device=like.device, dtype=like.dtype)
    device = like.device if like is not None else None
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    return torch.tensor(float(t), device=device, dtype=dtype)


class SDE(ABC):
    """dx = f(t) x dt + g(t) dW on [eps, T], with Gaussian marginals N(alpha_t x0, sigma_t^2 I)."""

    name: str = "sde"

    def __init__(self, T: float = 1.0, eps: float = 1e-3):
        if not (0.0 < eps < T):
            raise ValueError(f"need 0 < eps < T, got eps={eps}, T={T}")
        self.T = float(T)
        self.eps = float(eps)

    # -- the four functions a family defines -------------------------------------------------
    @abstractmethod
    def drift_coef(self, t: Tensor) -> Tensor:
        """f(t) in f(x, t) = f(t) x."""

    @abstractmethod
    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion g(t)^2."""

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Mean scale of the transition kernel."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Standard deviation of the transition kernel."""

    @abstractmethod
    def prior_std(self) -> float:
        """Std of the reference prior N(0, prior_std^2 I) used at T."""

    @abstractmethod
    def config(self) -> dict:
        """Constructor arguments, so that the SDE can be rebuilt from a run's JSON config."""

    # -- everything else follows -------------------------------------------------------------
    def diffusion(self, t: Tensor) -> Tensor:
        return self.g2(t).sqrt()

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(drift f(x, t), diffusion g(t)) broadcast against x."""
        t = as_time(t, x)
        return append_dims(self.drift_coef(t), x.ndim) * x, append_dims(self.diffusion(t), x.ndim)

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of p_t(x_t | x0)."""
        t = as_time(t, x0)
        return append_dims(self.alpha(t), x0.ndim) * x0, append_dims(self.sigma(t), x0.ndim)

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = alpha_t x0 + sigma_t z."""
        mean, std = self.marginal_prob(x0, t)
        return mean + std * noise

    def snr(self, t: Tensor) -> Tensor:
        """SNR(t) = alpha_t^2 / sigma_t^2, the ratio every weighting is written in."""
        return (self.alpha(t) / self.sigma(t)) ** 2

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha_t^2 / sigma_t^2), decreasing in t for every family here."""
        return 2 * (self.alpha(t).log() - self.sigma(t).log())

    def noise_level(self, t: Tensor) -> Tensor:
        """s(t) = sigma_t / alpha_t = SNR^-1/2, the noise level of the VE variable x_t / alpha_t (increasing in t;
        k-diffusion's sigma)."""
        return self.sigma(t) / self.alpha(t)

    @property
    def prior_holds_at_T(self) -> bool:
        """Whether the reference prior N(0, prior_std^2 I) is the marginal at T: the families are built so that it
        is at T = 1; a shorter diffusion ends before it, and a run needs a fitted prior at T."""
        return self.T >= 1.0

    def ode_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Probability-flow ODE drift f(x, t) - g^2/2 s(x, t)."""
        f, g = self.sde(x, t)
        return f - 0.5 * g**2 * score

    def prior_sampling(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Tensor:
        return self.prior_std() * torch.randn(shape, generator=generator, device=device)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension."""
        s = self.prior_std()
        d = z[0].numel()
        sq = z.flatten(1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * s * s) - 0.5 * sq / (s * s)

    def with_T(self, T: float) -> SDE:
        """The same family with another end time."""
        return type(self)(**{**self.config(), "T": T})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class VPSDE(SDE):
    """Variance preserving, beta(t) = b0 + (b1 - b0) t.

    beta 0.1..20 is score_sde's default; beta_min=0, beta_max=2c gives the parallel-score-matching
    schedule beta(t) = 2 c t.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, eps: float = 1e-3):
        super().__init__(T, eps)
        if beta_min < 0 or beta_max <= 0:
            raise ValueError(f"VP needs beta_min >= 0 and beta_max > 0, got {beta_min}, {beta_max}")
        self.b0, self.b1 = float(beta_min), float(beta_max)

    def beta(self, t: Tensor) -> Tensor:
        return self.b0 + (self.b1 - self.b0) * t

    def int_beta(self, t: Tensor) -> Tensor:
        return self.b0 * t + 0.5 * (self.b1 - self.b0) * t**2

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t)

    def alpha(self, t):
        return torch.exp(-0.5 * self.int_beta(t))

    def sigma(self, t):
        return (-torch.expm1(-self.int_beta(t))).sqrt()

    def prior_std(self):
        return 1.0

    def config(self):
        return {"beta_min": self.b0, "beta_max": self.b1, "T": self.T, "eps": self.eps}


class SubVPSDE(VPSDE):
    """sub-VP (Song et al. 2021): VP drift, g^2 = beta (1 - exp(-2 int beta)), sigma = 1 - exp(-int beta)."""

    name = "subvp"

    def g2(self, t):
        return self.beta(t) * (-torch.expm1(-2.0 * self.int_beta(t)))

    def sigma(self, t):
        return -torch.expm1(-self.int_beta(t))


class VESDE(SDE):
    """Variance exploding: f = 0, g(t) = a b^t, so sigma_t^2 = a^2 (b^{2t} - 1) / (2 ln b).

    Two published forms are the same family:

    - geometric (score_sde): sigma(t) = smin (smax/smin)^t, i.e. a = smin sqrt(2 ln r), b = r = smax/smin;
      here sigma_t^2 = sigma(t)^2 - smin^2 exactly (the kernel from time 0).
    - power (score-embedding code): g(t) = s^t, i.e. a = 1, b = s (largest std only 1.47 for s = 2).
    """

    name = "ve"

    def __init__(self, sigma_min: float | None = 0.01, sigma_max: float | None = 50.0,
                 base: float | None = None, T: float = 1.0, eps: float = 1e-3):
        super().__init__(T, eps)
        if base is not None:
            if base <= 1:
                raise ValueError(f"VE power form needs base s > 1, got {base}")
            self.a, self.b = 1.0, float(base)
            self.sigma_min = self.sigma_max = None
        else:
            if not (0 < sigma_min < sigma_max):
                raise ValueError(f"VE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
            r = sigma_max / sigma_min
            self.a, self.b = sigma_min * math.sqrt(2 * math.log(r)), r
            self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.base = None if base is None else float(base)

    def drift_coef(self, t):
        return torch.zeros_like(t)

    def g2(self, t):
        return self.a**2 * self.b ** (2 * t)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        lb = math.log(self.b)
        return (self.a**2 * torch.expm1(2 * lb * t) / (2 * lb)).sqrt()

    def prior_std(self):
        return float(self.sigma(torch.tensor(self.T, dtype=torch.float64)))

    def config(self):
        if self.base is not None:
            return {"sigma_min": None, "sigma_max": None, "base": self.base, "T": self.T, "eps": self.eps}
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "base": None,
                "T": self.T, "eps": self.eps}


for _sde in (VPSDE, SubVPSDE, VESDE):
    SDES.add(_sde.name, _sde)
# the published schedules: a family with its constructor's arguments
SDES.add("vp-psm", partial(VPSDE, beta_min=0.0, beta_max=10.0))
SDES.add("ve-power", partial(VESDE, base=5.0))


def make_sde(name: str, T: float = 1.0, eps: float = 1e-3, **kwargs) -> SDE:
    """Build an SDE by a name of ``choices.SDES``: 'vp', 'subvp', 've', plus the published presets
    'vp-psm' (beta = 2ct, c = 5), 've-power' (g = s^t, s = 5 unless base is given)."""
    return SDES.get(name)(T=T, eps=eps, **kwargs)


def sde_from_config(cfg: dict) -> SDE:
    """Inverse of ``{'name': sde.name, **sde.config()}``."""
    cfg = dict(cfg)
    return SDES.get(cfg.pop("name"))(**cfg)
