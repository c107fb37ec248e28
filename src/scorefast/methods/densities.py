"""Auxiliary densities at the end time T of a shortened diffusion (Franzese et al. 2023; docs/methods.md 2).

The score network is trained on t in [eps, T] only, with T < 1; a density nu at T is fitted by maximum likelihood to
forward samples x_T = alpha_T x0 + sigma_T z of the data. Sampling draws x_T ~ nu and runs any sampler from T; the
likelihood adds log nu(x_T) at the end of the PF-ODE.

All behind :class:`Prior` (an ``nn.Module``, so a checkpoint stores it as a state dict): N(0, prior_std^2 I) (the
baseline; no fit), the moment-matched Gaussian (closed form), a Gaussian mixture (online EM on fresh forward
samples) and a zuko flow (spline NSF up to d = 16, affine MAF above, on the residual whitened by the moment-matched
Gaussian, so it starts at that Gaussian and converges in few steps). Every fit draws fresh noise per batch, has its
own step budget and early stopping, and keeps the state with the best NLL on held-out forward samples; its cost is
returned so that a time-to-quality comparison can count it. The plug-ins that choose among them are in ``priors``.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from ..sde import SDE

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def _gaussian_logp(u: Tensor, log_diag: Tensor) -> Tensor:
    """log N(x; m, L L^T) given the whitened u = L^{-1}(x - m) and log diag(L)."""
    return -0.5 * (u.pow(2).sum(-1) + u.shape[-1] * LOG_2PI) - log_diag.sum(-1)


def _whiten(x: Tensor, mean: Tensor, tril: Tensor) -> Tensor:
    """u = L^{-1}(x - m) for x (B, d): (B, d) for one Gaussian (mean (d,), tril (d, d)), (B, k, d) for k of them
    (mean (k, d), tril (k, d, d)); one triangular solve with B right-hand sides per Gaussian."""
    if mean.ndim == 1:
        return torch.linalg.solve_triangular(tril, (x - mean).T, upper=False).T
    diff = (x[None] - mean[:, None, :]).transpose(1, 2)
    return torch.linalg.solve_triangular(tril, diff, upper=False).permute(2, 0, 1)


def forward_moments(x0: Tensor, sde: SDE) -> tuple[Tensor, Tensor]:
    """Exact mean and covariance of p_T when p_0 is the empirical distribution of ``x0`` (float64):
    mean = alpha_T E[x0], cov = alpha_T^2 Cov[x0] + sigma_T^2 I."""
    x = _flat(x0).double()
    t = torch.tensor(sde.T, dtype=torch.float64)
    a, s = sde.alpha(t).to(x.device), sde.sigma(t).to(x.device)
    mu = x.mean(0)
    xc = x - mu
    cov = a * a * (xc.T @ xc) / x.shape[0] + s * s * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return a * mu, cov


def _store_moments(prior: Prior, mean: Tensor, cov: Tensor) -> None:
    """Copy (mean, cholesky(cov)) into the prior's ``mean`` and ``tril`` buffers."""
    prior.mean.copy_(mean.reshape(-1).to(prior.mean))
    prior.tril.copy_(torch.linalg.cholesky(cov.double()).to(prior.tril))


class ForwardSampler:
    """Fresh forward samples x_T = alpha_T x0[i] + sigma_T z, i uniform over the data, new noise per call."""

    def __init__(self, x0: Tensor, sde: SDE, generator: torch.Generator):
        self.x0 = _flat(x0)
        t = torch.tensor(sde.T, dtype=torch.float64)
        self.a, self.s = float(sde.alpha(t)), float(sde.sigma(t))
        self.generator = generator

    def __call__(self, n: int) -> Tensor:
        idx = torch.randint(0, self.x0.shape[0], (n,), generator=self.generator, device=self.x0.device)
        z = torch.randn((n, self.x0.shape[1]), generator=self.generator, device=self.x0.device, dtype=self.x0.dtype)
        return self.a * self.x0[idx] + self.s * z


class EarlyStopping:
    """Call with each validation NLL; True once ``patience`` evaluations in a row failed to improve on the best by
    more than ``min_delta`` nats (smaller gains are not worth the fitting time)."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.bad = math.inf, 0

    def __call__(self, nll: float) -> bool:
        if nll < self.best - self.min_delta:
            self.best, self.bad = nll, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


class Prior(nn.Module):
    """A density nu on flat R^d at the end time T.

    ``fit`` splits off held-out data points (10 % when there are at least 50, else it validates on fixed-noise
    forward samples of all of them), builds a fixed validation set of forward samples, and calls ``_fit``; it
    returns ``{'seconds', 'steps', 'val_nll'}`` (val_nll in nats per sample).
    """

    name = "prior"
    default_eval_every = 1
    MIN_DELTA_PER_DIM = 2e-4

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise UserError(f"prior '{self.name}': dimension must be positive, got {dim}")
        self.dim = int(dim)

    def log_prob(self, x: Tensor) -> Tensor:
        """log nu(x) per example (B,); x of any shape (B, ...) with prod(...) = dim."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, dim) samples."""
        raise NotImplementedError

    def config(self) -> dict:
        """Arguments of :func:`make_prior` (with ``name`` and ``dim``) that rebuild this prior."""
        return {"name": self.name, "dim": self.dim}

    def _buffer(self) -> Tensor:
        return next(iter(self.buffers()))

    def _check_input(self, x: Tensor) -> Tensor:
        x = _flat(x)
        if x.shape[1] != self.dim:
            raise UserError(f"prior '{self.name}' has dimension {self.dim}, got examples of {x.shape[1]} values")
        return x

    def fit(self, x0: Tensor, sde: SDE, *, steps: int = 2000, batch_size: int = 512, lr: float = 3e-3,
            patience: int = 5, seed: int = 0, progress: bool = True, eval_every: int | None = None,
            n_val: int = 4096) -> dict:
        """Fit nu to forward samples of the data ``x0`` at ``sde.T`` (see the class docstring).

        A step is one optimiser step on ``batch_size`` fresh forward samples (flow) or one online-EM step on them
        (GMM); ``lr`` is the flow's Adam rate. ``patience`` counts evaluations (every ``eval_every`` steps) in a
        row without a validation gain of 2e-4 nats per dimension; the state with the best validation NLL is kept.
        """
        if x0.shape[0] < 1:
            raise UserError(f"prior '{self.name}': no data points to fit on")
        x0 = self._check_input(x0.detach())
        if not torch.isfinite(x0).all():
            raise UserError(f"prior '{self.name}': the data contain non-finite values")
        for label, v in (("steps", steps), ("batch_size", batch_size), ("patience", patience), ("n_val", n_val),
                         ("lr", lr)):
            if not v > 0:
                raise UserError(f"prior '{self.name}': {label} must be positive, got {v}")
        start = time.perf_counter()
        x0 = x0.to(self._buffer().device, torch.get_default_dtype())
        gen = torch.Generator(device=x0.device).manual_seed(seed)
        n = x0.shape[0]
        if n >= 50:
            perm = torch.randperm(n, generator=gen, device=x0.device)
            n_held = max(5, n // 10)
            train, held = x0[perm[n_held:]], x0[perm[:n_held]]
        else:
            train = held = x0
        x_val = ForwardSampler(held, sde, gen)(n_val)
        info = self._fit(train, sde, x_val, ForwardSampler(train, sde, gen), gen, steps=steps,
                         batch_size=batch_size, lr=lr, patience=patience, seed=seed, progress=progress,
                         eval_every=eval_every or self.default_eval_every)
        with torch.no_grad():
            val_nll = -float(self.log_prob(x_val).mean())
        return {"seconds": time.perf_counter() - start, "steps": int(info.get("steps", 0)), "val_nll": val_nll}

    def _fit(self, train: Tensor, sde: SDE, x_val: Tensor, draw: ForwardSampler, gen: torch.Generator,
             **opts) -> dict:
        raise NotImplementedError


class StandardPrior(Prior):
    """The SDE's reference prior N(0, std^2 I): the baseline; fitting does nothing."""

    name = "standard"

    def __init__(self, dim: int, std: float = 1.0):
        super().__init__(dim)
        if not std > 0:
            raise UserError(f"prior 'standard': std must be positive, got {std}")
        self.register_buffer("std", torch.tensor(float(std)))

    def log_prob(self, x):
        x = self._check_input(x)
        s = self.std.to(x.dtype)
        return -0.5 * (x.pow(2).sum(1) / (s * s) + self.dim * LOG_2PI) - self.dim * torch.log(s)

    def sample(self, n, generator=None):
        return self.std * torch.randn((n, self.dim), generator=generator, device=self.std.device, dtype=self.std.dtype)

    def config(self):
        return {**super().config(), "std": float(self.std)}

    def _fit(self, train, sde, x_val, draw, gen, **opts):
        self.std.fill_(sde.prior_std())
        return {"steps": 0}


class GaussianPrior(Prior):
    """Moment-matched N(m, C), in closed form from the data: m = alpha_T E[x0], C = alpha_T^2 Cov[x0] + sigma_T^2 I
    (full covariance; the exact moments of p_T)."""

    name = "gaussian"

    def __init__(self, dim: int):
        super().__init__(dim)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("tril", torch.eye(dim))

    @classmethod
    def from_moments(cls, mean: Tensor, cov: Tensor) -> GaussianPrior:
        """N(mean, cov) given directly (e.g. the exact p_T of Gaussian data), on the device of ``mean``."""
        prior = cls(mean.numel()).to(mean.device)
        prior.set_moments(mean, cov)
        return prior

    def set_moments(self, mean: Tensor, cov: Tensor) -> None:
        _store_moments(self, mean, cov)

    def log_prob(self, x):
        x = self._check_input(x)
        u = _whiten(x, self.mean.to(x.dtype), self.tril.to(x.dtype))
        return _gaussian_logp(u, self.tril.diagonal().log().to(x.dtype))

    def sample(self, n, generator=None):
        z = torch.randn((n, self.dim), generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + z @ self.tril.T

    def _fit(self, train, sde, x_val, draw, gen, **opts):
        self.set_moments(*forward_moments(train, sde))
        return {"steps": 0}


class GMMPrior(Prior):
    """Gaussian mixture with k full-covariance components.

    Fitted by online EM (Cappe & Moulines 2009): each step draws a fresh batch of forward samples (at least 4 k d of
    them, so that every covariance is estimable) and moves the averaged sufficient statistics by rho_i = (i + 1)^-0.6,
    so the estimate converges to the maximum-likelihood mixture of p_T itself, not of one finite sample. k-means++
    seeding.
    """

    name = "gmm"
    default_eval_every = 5

    def __init__(self, dim: int, k: int = 8, reg: float = 1e-6):
        super().__init__(dim)
        if k < 1:
            raise UserError(f"prior 'gmm': number of components must be positive, got {k}")
        self.k, self.reg = int(k), float(reg)
        self.register_buffer("logits", torch.zeros(k))
        self.register_buffer("means", torch.zeros(k, dim))
        self.register_buffer("trils", torch.eye(dim).repeat(k, 1, 1))

    def config(self):
        return {**super().config(), "k": self.k, "reg": self.reg}

    @staticmethod
    def _component_logp(x: Tensor, logits: Tensor, means: Tensor, trils: Tensor) -> Tensor:
        """(B, k) log w_j + log N(x; mu_j, L_j L_j^T)."""
        u = _whiten(x, means, trils)
        return torch.log_softmax(logits, 0) + _gaussian_logp(u, trils.diagonal(dim1=-2, dim2=-1).log())

    def log_prob(self, x):
        x = self._check_input(x)
        return torch.logsumexp(self._component_logp(x, self.logits.to(x.dtype), self.means.to(x.dtype),
                                                    self.trils.to(x.dtype)), 1)

    def sample(self, n, generator=None):
        j = torch.multinomial(torch.softmax(self.logits, 0), n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, device=self.means.device, dtype=self.means.dtype)
        return self.means[j] + torch.einsum("nij,nj->ni", self.trils[j], z)

    @staticmethod
    def _kmeanspp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
        centres = [x[torch.randint(0, x.shape[0], (1,), generator=gen, device=x.device)]]
        d2 = (x - centres[0]).pow(2).sum(1)
        for _ in range(1, k):
            i = torch.multinomial(d2.clamp_min(1e-30), 1, generator=gen)
            centres.append(x[i])
            d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(1))
        return torch.cat(centres)

    def _fit(self, train, sde, x_val, draw, gen, *, steps, batch_size, patience, progress, eval_every, **opts):
        k, d = self.k, self.dim
        batch_size = max(batch_size, 4 * k * d)
        x_val = x_val.double()
        init = draw(max(batch_size, 20 * k)).double()
        eye = torch.eye(d, dtype=torch.float64, device=init.device)
        reg = self.reg * float(init.var(0).mean())
        cov0 = torch.cov(init.T).reshape(d, d) + reg * eye
        params = (torch.zeros(k, dtype=torch.float64, device=init.device), self._kmeanspp(init, k, gen),
                  torch.linalg.cholesky(cov0).expand(k, d, d).clone())
        stats = None
        best, best_params, i = math.inf, params, 0
        stopper = EarlyStopping(patience, self.MIN_DELTA_PER_DIM * self.dim)
        bar = tqdm(total=steps, desc="prior:gmm", disable=None if progress else True, leave=False)
        for i in range(1, steps + 1):
            x = draw(batch_size).double()
            resp = torch.softmax(self._component_logp(x, *params), 1)
            batch = (resp.mean(0), resp.T @ x / x.shape[0], (resp.T[:, :, None] * x).transpose(1, 2) @ x / x.shape[0])
            rho = 1.0 if stats is None else (i + 1) ** -0.6
            stats = batch if stats is None else tuple((1 - rho) * s + rho * b for s, b in zip(stats, batch))
            w = stats[0].clamp_min(1e-12)
            mu = stats[1] / w[:, None]
            cov = stats[2] / w[:, None, None] - mu[:, :, None] * mu[:, None, :] + reg * eye
            tril, bad_chol = torch.linalg.cholesky_ex(0.5 * (cov + cov.transpose(1, 2)))
            if bad_chol.any() or not torch.isfinite(mu).all():
                raise UserError(f"prior 'gmm': EM produced a singular or non-finite component at step {i}; "
                                "try fewer components (k) or check the data scale")
            params = (w.log(), mu, tril)
            bar.update()
            if i % eval_every == 0 or i == steps:
                nll = -float(torch.logsumexp(self._component_logp(x_val, *params), 1).mean())
                if not math.isfinite(nll):
                    raise UserError(f"prior 'gmm': non-finite validation log-probability at step {i}")
                bar.set_postfix(val_nll=f"{nll:.4f}")
                if nll < best:
                    best, best_params = nll, params
                if stopper(nll):
                    break
        bar.close()
        for buf, value in zip((self.logits, self.means, self.trils), best_params):
            buf.copy_(value.to(buf))
        return {"steps": i}


class FlowPrior(Prior):
    """A zuko normalizing flow on the whitened residual u = L^{-1}(x - m), (m, L L^T) the moment-matched Gaussian:
    log nu(x) = log q_flow(u) - log|det L|.

    The last layer of every hyper-network starts at zero, which makes each spline (or affine) map the identity: the
    flow starts exactly at the moment-matched Gaussian and early stopping can only improve on it. Adam with a cosine
    decay over the step budget. ``kind`` is 'nsf' (rational-quadratic splines) or 'maf' (affine, about 10x cheaper
    per step at d = 64); 'auto' picks nsf up to d = 16 and maf above.
    """

    name = "flow"
    default_eval_every = 20
    EMA_DECAY = 0.98
    KINDS = ("nsf", "maf")
    NSF_MAX_DIM = 16

    def __init__(self, dim: int, kind: str = "auto", transforms: int = 3, hidden: int | None = None, bins: int = 8):
        super().__init__(dim)
        import zuko

        if kind == "auto":
            kind = "nsf" if dim <= self.NSF_MAX_DIM else "maf"
        if kind not in self.KINDS:
            raise UserError(f"prior 'flow': unknown kind '{kind}'; choose one of {', '.join(self.KINDS)}")
        if transforms < 1 or bins < 2:
            raise UserError(f"prior 'flow': need transforms >= 1 and bins >= 2, got {transforms}, {bins}")
        self.kind, self.transforms, self.bins = kind, int(transforms), int(bins)
        self.hidden = int(hidden) if hidden else max(64, 2 * dim)
        opts = {"transforms": self.transforms, "hidden_features": (self.hidden, self.hidden)}
        self.flow = zuko.flows.NSF(dim, bins=self.bins, **opts) if kind == "nsf" else zuko.flows.MAF(dim, **opts)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("tril", torch.eye(dim))
        self._identity_init()

    def config(self):
        return {**super().config(), "kind": self.kind, "transforms": self.transforms, "hidden": self.hidden,
                "bins": self.bins}

    def _identity_init(self, generator: torch.Generator | None = None) -> None:
        """Fresh hyper-network weights (torch's Linear initialisation, drawn from ``generator``) with a zero
        output layer: every transform is the identity."""
        for module in self.flow.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1 / math.sqrt(module.in_features) if module.in_features > 0 else 0
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        for t in self.flow.transform.transforms:
            last = t.hyper[-1].parameters() if hasattr(t, "hyper") else t.phi  # d = 1: element-wise maps
            for p in last:
                nn.init.zeros_(p)

    def log_prob(self, x):
        x = self._check_input(x)
        u = _whiten(x, self.mean.to(x.dtype), self.tril.to(x.dtype))
        return self.flow().log_prob(u) - self.tril.diagonal().log().sum().to(x.dtype)

    @torch.no_grad()
    def sample(self, n, generator=None):
        z = torch.randn((n, self.dim), generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.flow().transform.inv(z) @ self.tril.T

    def _fit(self, train, sde, x_val, draw, gen, *, steps, batch_size, lr, patience, seed, progress,
             eval_every, **opts):
        _store_moments(self, *forward_moments(train, sde))
        self._identity_init(torch.Generator(device=self.mean.device).manual_seed(seed))
        opt = torch.optim.Adam(self.flow.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.1 * lr)
        params = list(self.flow.parameters())
        ema = [p.detach().clone() for p in params]
        best, best_params, i = math.inf, ema, 0
        stopper = EarlyStopping(patience, self.MIN_DELTA_PER_DIM * self.dim)
        bar = tqdm(total=steps, desc=f"prior:flow-{self.kind}", disable=None if progress else True, leave=False)
        self.train()
        for i in range(1, steps + 1):
            logp = self.log_prob(draw(batch_size))
            if not torch.isfinite(logp).all():
                raise UserError(f"prior 'flow': non-finite log-probability at step {i} of the fit "
                                "(data scale too large or learning rate too high?)")
            loss = -logp.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - min(self.EMA_DECAY, (1 + i) / (10 + i)))
            bar.update()
            if i % eval_every == 0 or i == steps:
                live = self._swap(params, ema)
                with torch.no_grad():
                    nll = -float(self.log_prob(x_val).mean())
                self._swap(params, live)
                if not math.isfinite(nll):
                    raise UserError(f"prior 'flow': non-finite validation log-probability at step {i} of the fit")
                bar.set_postfix(val_nll=f"{nll:.4f}")
                if nll < best:
                    best, best_params = nll, [e.clone() for e in ema]
                if stopper(nll):
                    break
        bar.close()
        self.eval()
        self._swap(params, best_params)
        return {"steps": i}

    @staticmethod
    @torch.no_grad()
    def _swap(params: list[Tensor], values: list[Tensor]) -> list[Tensor]:
        """Load ``values`` into ``params``; return the values they held."""
        old = [p.detach().clone() for p in params]
        for p, v in zip(params, values):
            p.copy_(v)
        return old


__all__ = ["Prior", "StandardPrior", "GaussianPrior", "GMMPrior", "FlowPrior", "forward_moments"]
