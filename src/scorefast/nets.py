"""Time-conditioned networks and the parameterisations that turn their output into a score.

Networks map (x, t) to a tensor shaped like x; a parameterisation wraps a network and says what that
output means (noise epsilon, the score itself, or the clean data). Every parameterisation exposes
``eps(x, t)`` (what the losses use) and ``forward(x, t) -> score`` (what samplers and the likelihood
use), so losses, samplers and the likelihood never care which one is inside.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .sde import SDE, append_dims

Tensor = torch.Tensor


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] with log-spaced frequencies (1 to 1000)."""

    def __init__(self, dim: int = 32):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), half)), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        a = t.reshape(-1, 1) * self.freqs
        return torch.cat([a.sin(), a.cos()], dim=1)


class TimeMLP(nn.Module):
    """MLP on flattened x and an embedding of t, for low-dimensional data.

    With ``time_conditioned=False`` t is ignored: the per-time-point networks of parallel score
    matching are of that kind.
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 32,
                 time_conditioned: bool = True):
        super().__init__()
        self.time_conditioned = time_conditioned
        self.embed = TimeEmbedding(time_dim) if time_conditioned else None
        layers: list[nn.Module] = []
        width = dim + (time_dim if time_conditioned else 0)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = x.flatten(1)
        if self.embed is not None:
            h = torch.cat([h, self.embed(t.expand(x.shape[0]))], dim=1)
        return self.net(h).view_as(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """A small time-conditioned U-Net: one residual block per level, strided down, nearest up.

    ``mults`` sets the channel multiplier per level; the image side must be divisible by
    2 ** (len(mults) - 1). (1, 2) suits 8x8 digits, (1, 2, 2) 32x32 images.
    """

    def __init__(self, channels: int = 1, base: int = 32, mults: tuple[int, ...] = (1, 2), time_dim: int = 64,
                 time_conditioned: bool = True):
        super().__init__()
        self.embed = nn.Sequential(TimeEmbedding(time_dim), nn.Linear(time_dim, time_dim), nn.SiLU()) \
            if time_conditioned else None
        self.time_dim = time_dim
        widths = [base * m for m in mults]
        self.inp = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        cin = widths[0]
        for i, w in enumerate(widths):
            self.down.append(ResBlock(cin, w, time_dim))
            self.pool.append(nn.Conv2d(w, w, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
            cin = w
        self.mid = ResBlock(cin, cin, time_dim)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(ResBlock(cin + w, w, time_dim))
            cin = w
        self.out = nn.Sequential(nn.GroupNorm(min(8, cin), cin), nn.SiLU(), nn.Conv2d(cin, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.embed is not None:
            e = self.embed(t.expand(x.shape[0]))
        else:
            e = x.new_zeros(x.shape[0], self.time_dim)
        h = self.inp(x)
        skips = []
        for block, pool in zip(self.down, self.pool):
            h = block(h, e)
            skips.append(h)
            h = pool(h)
        h = self.mid(h, e)
        for block in self.up:
            s = skips.pop()
            if h.shape[-1] != s.shape[-1]:
                h = nn.functional.interpolate(h, size=s.shape[-2:], mode="nearest")
            h = block(torch.cat([h, s], dim=1), e)
        return self.out(h)


class Parameterisation(nn.Module):
    """Wraps a network; ``eps`` is the predicted noise, ``forward`` the score s = -eps / sigma."""

    kind = "abstract"

    def __init__(self, net: nn.Module, sde: SDE):
        super().__init__()
        self.net = net
        self.sde = sde

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return -self.eps(x, t) / append_dims(self.sde.sigma(t), x.ndim)


class EpsilonParam(Parameterisation):
    """The network predicts the noise z in x_t = alpha x0 + sigma z (DDPM, score_sde's VP models)."""

    kind = "eps"

    def eps(self, x, t):
        return self.net(x, t)


class ScoreParam(Parameterisation):
    """The network output is the score itself (NCSN-style, and what score regression targets)."""

    kind = "score"

    def eps(self, x, t):
        return -append_dims(self.sde.sigma(t), x.ndim) * self.net(x, t)

    def forward(self, x, t):
        return self.net(x, t)


class DataParam(Parameterisation):
    """The network predicts the clean data x0; eps = (x - alpha x0_hat) / sigma."""

    kind = "data"

    def eps(self, x, t):
        a = append_dims(self.sde.alpha(t), x.ndim)
        s = append_dims(self.sde.sigma(t), x.ndim)
        return (x - a * self.net(x, t)) / s


PARAMETERISATIONS = {p.kind: p for p in (EpsilonParam, ScoreParam, DataParam)}


def make_net(shape: tuple[int, ...], arch: str = "auto", width: int | None = None, depth: int = 3,
             time_conditioned: bool = True) -> nn.Module:
    """An MLP for flat data, a U-Net for (C, H, W) images; ``arch='auto'`` picks by shape."""
    if arch == "auto":
        arch = "unet" if len(shape) == 3 else "mlp"
    if arch == "mlp":
        return TimeMLP(math.prod(shape), hidden=width or 128, depth=depth, time_conditioned=time_conditioned)
    if arch == "unet":
        if len(shape) != 3:
            raise ValueError(f"the U-Net needs (C, H, W) data, got shape {tuple(shape)}")
        mults = (1, 2) if shape[-1] <= 16 else (1, 2, 2)
        return UNet(shape[0], base=width or 32, mults=mults, time_conditioned=time_conditioned)
    raise ValueError(f"unknown architecture '{arch}'; choose mlp, unet or auto")


def make_model(sde: SDE, shape: tuple[int, ...], param: str = "eps", **net_kwargs) -> Parameterisation:
    """A network for data of ``shape`` wrapped in the named parameterisation (eps, score, data)."""
    if param not in PARAMETERISATIONS:
        raise ValueError(f"unknown parameterisation '{param}'; choose one of {sorted(PARAMETERISATIONS)}")
    return PARAMETERISATIONS[param](make_net(shape, **net_kwargs), sde)
