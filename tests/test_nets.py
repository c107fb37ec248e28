"""Networks keep the data's shape; parameterisations turn a known network output into the documented
noise and score."""

import math

import pytest
import torch
from torch import nn

from scorefast.choices import NET_PRESETS
from scorefast.errors import UserError
from scorefast.nets import (
    DataParam,
    EpsilonParam,
    ScoreParam,
    SelfAttention,
    TimeMLP,
    UNet,
    make_model,
    make_net,
)
from scorefast.sde import make_sde

SHAPES = [(2,), (64,), (1, 8, 8), (3, 32, 32), (1, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_model_output_has_data_shape(shape, device):
    torch.manual_seed(0)
    model = make_model(make_sde("vp"), shape).to(device)
    assert isinstance(model.net, UNet if len(shape) == 3 else TimeMLP)
    x = torch.randn(3, *shape, device=device)
    assert model(x, torch.rand(3, device=device)).shape == x.shape
    assert model.eps(x, torch.tensor(0.5, device=device)).shape == x.shape


def _randomise(net: nn.Module) -> nn.Module:
    """The U-Net's last conv starts at zero; give it weights so the output depends on its inputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    return net


@pytest.mark.parametrize("shape, options", [
    ((2,), {}), ((1, 8, 8), {}),
    ((1, 16, 16), dict(width=8, channel_mults=(1, 2), res_blocks=2, attention=(8,), dropout=0.3)),
], ids=["mlp", "unet", "unet-attention-dropout"])
def test_time_unconditioned_net_ignores_t(shape, options, device):
    x = torch.randn(4, *shape, device=device)
    t0, t1 = torch.full((4,), 0.1, device=device), torch.full((4,), 0.9, device=device)
    free = _randomise(make_net(shape, time_conditioned=False, **options).to(device)).eval()
    torch.testing.assert_close(free(x, t0), free(x, t1), rtol=0, atol=0)
    cond = _randomise(make_net(shape, **options).to(device)).eval()
    assert (cond(x, t0) - cond(x, t1)).abs().max() > 1e-4


def test_unet_output_starts_at_zero(device):
    net = make_net((1, 8, 8)).to(device)
    assert not net(torch.randn(2, 1, 8, 8, device=device), torch.rand(2, device=device)).abs().max()


class Known(nn.Module):
    """A 'network' that returns a fixed tensor c whatever (x, t)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t):
        return self.c.expand_as(x)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_parameterisations_follow_documented_relations(name, device):
    sde = make_sde(name)
    torch.manual_seed(2)
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64, device=device)
    c = torch.randn(5, 1, 2, 2, dtype=torch.float64, device=device)
    t = torch.linspace(0.05, 0.95, 5, dtype=torch.float64, device=device)
    a, s = sde.alpha(t)[:, None, None, None], sde.sigma(t)[:, None, None, None]

    eps = EpsilonParam(Known(c), sde)
    torch.testing.assert_close(eps.eps(x, t), c)
    torch.testing.assert_close(eps(x, t), -c / s)

    score = ScoreParam(Known(c), sde)
    torch.testing.assert_close(score(x, t), c)
    torch.testing.assert_close(score.eps(x, t), -s * c)

    data = DataParam(Known(c), sde)
    torch.testing.assert_close(data.eps(x, t), (x - a * c) / s)
    torch.testing.assert_close(data(x, t), (a * c - x) / s**2)


def test_parameterisations_share_the_score_for_tweedie_outputs(device):
    """The three outputs that describe one exact score must give that score: for data N(0, I) under VP,
    s = -x, eps = sigma x, x0_hat = alpha x (Tweedie)."""
    sde = make_sde("vp")
    x = torch.randn(6, 3, dtype=torch.float64, device=device)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64, device=device)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    for param, out in [(EpsilonParam, s * x), (ScoreParam, -x), (DataParam, a * x)]:
        torch.testing.assert_close(param(Known(out), sde)(x, t), -x)


def test_make_model_passes_net_options():
    model = make_model(make_sde("vp"), (2,), param="data", width=16, depth=2)
    assert isinstance(model, DataParam)
    linears = [m for m in model.net.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and linears[0].out_features == 16


@pytest.mark.parametrize("call, match", [
    (lambda: make_model(make_sde("vp"), (2,), param="v"), "unknown --param .v.; choose one of eps, score, data, edm"),
    (lambda: make_net((2,), arch="transformer"), "architecture"),
    (lambda: make_net((64,), arch="unet"), "U-Net"),
    (lambda: make_net((3, 32, 32), channel_mults=(1, 0, 2)), "channel_mults"),
    (lambda: make_net((3, 32, 32), channel_mults=()), "channel_mults"),
    (lambda: make_net((3, 32, 32), attention=(12,)), r"\[12\].*\[32, 16, 8\]"),
    (lambda: make_net((3, 32, 32), dropout=1.0), "dropout"),
    (lambda: make_net((3, 32, 32), dropout=-0.1), "dropout"),
    (lambda: make_net((1, 30, 30)), "divisible by 4"),
    (lambda: make_net((3, 32, 32), channel_mults=(1, 2, 2, 2, 2, 2, 2)), "divisible by 64"),
    (lambda: make_net((3, 32, 32), res_blocks=0), "res_blocks"),
    (lambda: make_net((3, 32, 32), width=8, attention=(32,), heads=3), "heads"),
    (lambda: make_net((3, 32, 32), width=12), "multiples of 8"),
    (lambda: make_net((3, 32, 32), preset="imagenet"), "preset"),
    (lambda: make_net((2,), preset="cifar10"), "only applies to the U-Net"),
    (lambda: make_net((2,), dropout=0.1), "dropout only applies to the U-Net"),
])
def test_bad_choices_raise_one_line(call, match):
    with pytest.raises(UserError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape, options", [
    ((1, 8, 8), dict(width=8, res_blocks=2, attention=(4,), dropout=0.1)),
    ((3, 32, 32), dict(preset="cifar10", width=8)),
    ((3, 64, 64), dict(width=8, channel_mults=(1, 2, 2, 2), res_blocks=2, attention=(16,), heads=2)),
    ((2, 16, 32), dict(width=8, channel_mults=(1, 2), attention=(8,))),
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else None)
def test_configured_unet_keeps_the_image_shape(shape, options, device):
    net = _randomise(make_net(shape, **options).to(device))
    x = torch.randn(2, *shape, device=device)
    out = net(x, torch.rand(2, device=device))
    assert out.shape == x.shape and out.abs().max() > 0


def test_default_unet_size_is_unchanged():
    """The network the README's benchmarks were measured with (counted before the U-Net became configurable)."""
    for shape, count in [((1, 8, 8), 340_833), ((1, 32, 32), 579_553), ((3, 32, 32), 580_707)]:
        assert sum(p.numel() for p in make_net(shape).parameters()) == count


def test_cifar10_preset_is_ddpm_sized():
    """DDPM's CIFAR-10 sizes: 23,774,787 parameters here (DDPM's own network, with one more up block per
    level, has 35.7 M); the count does not depend on the image side."""
    with torch.device("meta"):
        counts = [sum(p.numel() for p in make_net(shape, preset="cifar10").parameters())
                  for shape in [(3, 32, 32), (3, 64, 64)]]
    assert counts[0] == counts[1]
    assert 23.7e6 < counts[0] < 23.85e6
    assert NET_PRESETS["cifar10"]["attention"] == (16,)


def test_explicit_options_override_the_preset():
    net = make_net((3, 32, 32), preset="cifar10", width=8, dropout=0.0)
    assert net.inp.out_channels == 8 and len(net.down) == 4 * 2
    assert not [m for m in net.modules() if isinstance(m, nn.Dropout) and m.p > 0]


def _attention_sides(net: nn.Module, shape: tuple[int, ...], device: torch.device) -> list[tuple[int, int]]:
    """The (H, W) that each self-attention block sees in one forward pass."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
             for m in net.modules() if isinstance(m, SelfAttention)]
    net.to(device)(torch.randn(1, *shape, device=device), torch.rand(1, device=device))
    for h in hooks:
        h.remove()
    return seen


def test_attention_sits_at_the_chosen_resolutions(device):
    options = dict(width=8, channel_mults=(1, 2, 2, 2), res_blocks=2)
    assert _attention_sides(make_net((3, 32, 32), **options), (3, 32, 32), device) == []
    assert _attention_sides(make_net((3, 32, 32), attention=(16,), **options), (3, 32, 32), device) == [(16, 16)] * 4
    sides = _attention_sides(make_net((3, 32, 32), attention=(16, 4), **options), (3, 32, 32), device)
    assert sorted(sides) == [(4, 4)] * 5 + [(16, 16)] * 4  # two down, two up at each, and the middle block


def _without_groupnorm(net: nn.Module) -> nn.Module:
    """GroupNorm couples every pixel through its statistics; without it a conv stack is strictly local."""
    for name, m in list(net.named_modules()):
        if isinstance(m, nn.GroupNorm):
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent), leaf, nn.Identity())
    return net


@pytest.mark.parametrize("attention, far", [((), False), ((16,), True)])
def test_attention_reaches_pixels_beyond_the_convolutions(attention, far, device):
    """Output pixel (0, 0) of a 2-level U-Net on 32x32 images: the convolutions see about 20 pixels
    around it, so the opposite corner reaches it only through attention at 16x16."""
    net = make_net((1, 32, 32), width=8, channel_mults=(1, 2), attention=attention).to(device)
    net = _without_groupnorm(_randomise(net))
    x = torch.randn(1, 1, 32, 32, requires_grad=True, device=device)
    net(x, torch.rand(1, device=device))[0, 0, 0, 0].backward()
    assert (x.grad[0, 0, -4:, -4:].abs().max() > 0) == far
    assert x.grad[0, 0, :2, :2].abs().max() > 0


def test_self_attention_matches_the_formula(device):
    """x + proj(concat_j V_j softmax(K_j^T Q_j / sqrt(d))) per head j, written out by hand on a 3x4 image."""
    torch.manual_seed(3)
    c, heads, d = 8, 2, 4
    block = _randomise(SelfAttention(c, heads).to(device)).double()
    x = torch.randn(2, c, 3, 4, dtype=torch.float64, device=device)
    n = block.norm(x).flatten(2)
    qkv = torch.einsum("oc,bcp->bop", block.qkv.weight[:, :, 0, 0], n) + block.qkv.bias[:, None]
    q, k, v = qkv.split(c, dim=1)
    outs = []
    for j in range(heads):
        hj = slice(j * d, (j + 1) * d)
        weights = torch.softmax(torch.einsum("bdq,bdk->bqk", q[:, hj], k[:, hj]) / math.sqrt(d), dim=-1)
        outs.append(torch.einsum("bqk,bdk->bdq", weights, v[:, hj]))
    a = torch.cat(outs, dim=1)
    expected = x.flatten(2) + torch.einsum("oc,bcp->bop", block.proj.weight[:, :, 0, 0], a) + block.proj.bias[:, None]
    torch.testing.assert_close(block(x), expected.view_as(x))


def test_dropout_is_active_in_training_only(device):
    x, t = torch.randn(3, 1, 8, 8, device=device), torch.rand(3, device=device)
    net = _randomise(make_net((1, 8, 8), width=8, dropout=0.5).to(device))
    assert (net.train()(x, t) - net(x, t)).abs().max() > 1e-4
    torch.testing.assert_close(net.eval()(x, t), net(x, t), rtol=0, atol=0)
    plain = _randomise(make_net((1, 8, 8), width=8).to(device)).train()
    torch.testing.assert_close(plain(x, t), plain(x, t), rtol=0, atol=0)


def test_gradients_reach_every_parameter(device):
    net = _randomise(make_net((1, 16, 16), width=8, channel_mults=(1, 2), res_blocks=2, attention=(16, 8), heads=2,
                              dropout=0.1).to(device))
    net(torch.randn(2, 1, 16, 16, device=device), torch.rand(2, device=device)).square().sum().backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert not dead
