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

from .choices import NET_PRESETS, PARAMETERISATIONS
from .errors import UserError
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
    """GroupNorm-SiLU-conv twice, t's embedding added in between, dropout before the second conv; plus a skip."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(self.drop(nn.functional.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """x + proj(softmax(q k^T / sqrt(d)) v) over the H*W positions, per head; proj starts at zero, so the
    block starts as the identity (as in DDPM)."""

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.proj(a.transpose(-1, -2).reshape(b, c, h, w))


def _check_unet_options(base: int, mults: tuple[int, ...], res_blocks: int, attention_levels: tuple[int, ...],
                        dropout: float, heads: int) -> None:
    """Raise a one-line UserError for U-Net options that cannot build a network."""
    if not (isinstance(base, int) and base > 0):
        raise UserError(f"the U-Net width must be a positive integer, got {base!r}")
    if not mults or not all(isinstance(m, int) and m > 0 for m in mults):
        raise UserError(f"channel_mults must be positive integers, one per level, got {mults!r}")
    odd = sorted({base * m for m in mults if base * m > 8 and base * m % 8})
    if odd:
        raise UserError(f"U-Net channels must be at most 8 or multiples of 8 (GroupNorm's 8 groups); width {base} "
                        f"x channel_mults {tuple(mults)} gives {odd}")
    if not (isinstance(res_blocks, int) and res_blocks >= 1):
        raise UserError(f"res_blocks must be an integer >= 1, got {res_blocks!r}")
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise UserError(f"dropout must be in [0, 1), got {dropout!r}")
    if not (isinstance(heads, int) and heads >= 1):
        raise UserError(f"heads must be an integer >= 1, got {heads!r}")
    for level in attention_levels:
        if level not in range(len(mults)):
            raise UserError(f"attention level {level!r} is not one of the U-Net's levels 0..{len(mults) - 1}")
        if base * mults[level] % heads:
            raise UserError(f"{heads} attention heads do not divide the {base * mults[level]} channels "
                            f"at level {level}")


class UNet(nn.Module):
    """A time-conditioned U-Net: ``res_blocks`` residual blocks per level, strided-conv down, nearest up.

    Level i has ``base * mults[i]`` channels at 1 / 2**i of the input side; every down block's output is a
    skip that one up block at the same level takes in. Levels in ``attention_levels`` follow each of their
    blocks with self-attention (the middle block too when the lowest level is among them). The defaults
    are the small network of the measured studies (docs/results); (1, 2) suits 8x8 digits, (1, 2, 2) 32x32 images.
    """

    def __init__(self, channels: int = 1, base: int = 32, mults: tuple[int, ...] = (1, 2), time_dim: int = 64,
                 time_conditioned: bool = True, res_blocks: int = 1, attention_levels: tuple[int, ...] = (),
                 dropout: float = 0.0, heads: int = 1):
        super().__init__()
        _check_unet_options(base, mults, res_blocks, attention_levels, dropout, heads)
        self.embed = nn.Sequential(TimeEmbedding(time_dim), nn.Linear(time_dim, time_dim), nn.SiLU()) \
            if time_conditioned else None
        self.time_dim, self.res_blocks = time_dim, res_blocks
        widths = [base * m for m in mults]

        def attend(level: int, c: int) -> nn.Module:
            return SelfAttention(c, heads) if level in attention_levels else nn.Identity()

        self.inp = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down, self.down_attn, self.pool = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin = widths[0]
        for i, w in enumerate(widths):
            for _ in range(res_blocks):
                self.down.append(ResBlock(cin, w, time_dim, dropout))
                self.down_attn.append(attend(i, w))
                cin = w
            self.pool.append(nn.Conv2d(w, w, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
        self.mid = ResBlock(cin, cin, time_dim, dropout)
        self.mid_attn = attend(len(widths) - 1, cin)
        self.up, self.up_attn = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(res_blocks):
                self.up.append(ResBlock(cin + w, w, time_dim, dropout))
                self.up_attn.append(attend(i, w))
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
        for i, (block, attn) in enumerate(zip(self.down, self.down_attn)):
            h = attn(block(h, e))
            skips.append(h)
            if (i + 1) % self.res_blocks == 0:
                h = self.pool[i // self.res_blocks](h)
        h = self.mid_attn(self.mid(h, e))
        for block, attn in zip(self.up, self.up_attn):
            s = skips.pop()
            if h.shape[-2:] != s.shape[-2:]:
                h = nn.functional.interpolate(h, size=s.shape[-2:], mode="nearest")
            h = attn(block(torch.cat([h, s], dim=1), e))
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


class EDMParam(Parameterisation):
    """EDM's preconditioning (Karras et al. 2022) around a raw network F, in the VE variable y = x / alpha_t
    with noise level s = sigma_t / alpha_t (every SDE here is such a process in y):

        D(y, s) = c_skip y + c_out F(c_in y, c_noise),  c_skip = sd^2 / (s^2 + sd^2),
        c_out = s sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2),  c_noise = ln(s) / 4,

    sd = sigma_data (a buffer, so a checkpoint carries it). Then eps = (y - D) / s
    = s y / (s^2 + sd^2) - sd / sqrt(s^2 + sd^2) F, written without dividing by s."""

    kind = "edm"

    def __init__(self, net: nn.Module, sde: SDE, sigma_data: float = 0.5):
        super().__init__(net, sde)
        if not sigma_data > 0:
            raise UserError(f"sigma_data must be > 0, got {sigma_data}")
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data)))

    def eps(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        a = append_dims(self.sde.alpha(t), x.ndim)
        s = append_dims(self.sde.sigma(t), x.ndim) / a
        sd = self.sigma_data.to(x.dtype)
        norm = (s * s + sd * sd).sqrt()
        y = x / a
        raw = self.net(y / norm, self.sde.noise_level(t).log() / 4)
        return s * y / norm**2 - sd / norm * raw


for _param in (EpsilonParam, ScoreParam, DataParam, EDMParam):
    PARAMETERISATIONS.add(_param.kind, _param)


# U-Net options of make_net and their defaults (the small network of the measured studies);
# channel_mults None means (1, 2) for images up to 16 pixels wide and (1, 2, 2) above.
UNET_DEFAULTS: dict[str, object] = dict(width=32, channel_mults=None, res_blocks=1, attention=(), dropout=0.0, heads=1)


def make_net(shape: tuple[int, ...], arch: str = "auto", width: int | None = None, depth: int = 3,
             time_conditioned: bool = True, preset: str | None = None, channel_mults: tuple[int, ...] | None = None,
             res_blocks: int | None = None, attention: tuple[int, ...] | None = None, dropout: float | None = None,
             heads: int | None = None) -> nn.Module:
    """An MLP for flat data, a U-Net for (C, H, W) images; ``arch='auto'`` picks by shape.

    U-Net options left at None take the value of ``preset`` (a name of ``choices.NET_PRESETS``) if given, else
    UNET_DEFAULTS: ``channel_mults`` (one multiplier of ``width`` per level; level i is 1 / 2**i of the
    image side, so H and W must divide by 2**(levels - 1)), ``res_blocks`` per level, ``attention`` (the
    sides in pixels of the levels whose blocks get self-attention, the shorter side for non-square
    images; the middle block belongs to the lowest level), ``dropout`` in the residual blocks and
    ``heads`` of attention.
    """
    given = dict(width=width, channel_mults=channel_mults, res_blocks=res_blocks, attention=attention,
                 dropout=dropout, heads=heads)
    sizes = {} if preset is None else NET_PRESETS.get(preset)
    if arch == "auto":
        arch = "unet" if len(shape) == 3 else "mlp"
    if arch == "mlp":
        unet_only = [k for k, v in given.items() if k != "width" and v is not None]
        if preset is not None or unet_only:
            raise UserError(f"{f'preset {preset!r}' if preset else ', '.join(unet_only)} only applies to the U-Net, "
                            f"not the MLP for data of shape {tuple(shape)}")
        if width is not None and not (isinstance(width, int) and width > 0):
            raise UserError(f"the MLP width must be a positive integer, got {width!r}")
        return TimeMLP(math.prod(shape), hidden=width or 128, depth=depth, time_conditioned=time_conditioned)
    if arch != "unet":
        raise UserError(f"unknown architecture '{arch}'; choose mlp, unet or auto")
    if len(shape) != 3:
        raise UserError(f"the U-Net needs (C, H, W) data, got shape {tuple(shape)}")
    opts = {**UNET_DEFAULTS, **sizes, **{k: v for k, v in given.items() if v is not None}}
    h, w = shape[1:]
    mults = ((1, 2) if w <= 16 else (1, 2, 2)) if opts["channel_mults"] is None else tuple(opts["channel_mults"])
    scale = 2 ** (len(mults) - 1)
    if h % scale or w % scale:
        raise UserError(f"a {len(mults)}-level U-Net needs image sides divisible by {scale}, got {h}x{w}; "
                        f"give fewer channel_mults or resize the images")
    sides = [min(h, w) // 2**i for i in range(len(mults))]
    missing = [r for r in opts["attention"] if r not in sides]
    if missing:
        raise UserError(f"attention resolution(s) {missing} are not among the U-Net's level sides {sides} "
                        f"for {h}x{w} images")
    return UNet(shape[0], base=opts["width"], mults=mults, time_conditioned=time_conditioned,
                res_blocks=opts["res_blocks"], attention_levels=tuple(sides.index(r) for r in opts["attention"]),
                dropout=opts["dropout"], heads=opts["heads"])


def make_model(sde: SDE, shape: tuple[int, ...], param: str = "eps", sigma_data: float = 0.5,
               **net_kwargs) -> Parameterisation:
    """A network for data of ``shape`` wrapped in the named parameterisation (eps, score, data, edm;
    ``sigma_data`` is edm's)."""
    wrapper = PARAMETERISATIONS.get(param)
    net = make_net(shape, **net_kwargs)
    return EDMParam(net, sde, sigma_data) if param == "edm" else wrapper(net, sde)
