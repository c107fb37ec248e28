"""Networks keep the data's shape; parameterisations turn a known network output into the documented
noise and score."""

import pytest
import torch
from torch import nn

from scorefast.nets import DataParam, EpsilonParam, ScoreParam, TimeMLP, UNet, make_model, make_net
from scorefast.sde import make_sde

SHAPES = [(2,), (64,), (1, 8, 8), (3, 32, 32), (1, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_model_output_has_data_shape(shape):
    torch.manual_seed(0)
    model = make_model(make_sde("vp"), shape)
    assert isinstance(model.net, UNet if len(shape) == 3 else TimeMLP)
    x = torch.randn(3, *shape)
    assert model(x, torch.rand(3)).shape == x.shape
    assert model.eps(x, torch.tensor(0.5)).shape == x.shape


def _randomise(net: nn.Module) -> nn.Module:
    """The U-Net's last conv starts at zero; give it weights so the output depends on its inputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    return net


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)], ids=["mlp", "unet"])
def test_time_unconditioned_net_ignores_t(shape):
    x = torch.randn(4, *shape)
    t0, t1 = torch.full((4,), 0.1), torch.full((4,), 0.9)
    free = _randomise(make_net(shape, time_conditioned=False))
    torch.testing.assert_close(free(x, t0), free(x, t1), rtol=0, atol=0)
    cond = _randomise(make_net(shape))
    assert (cond(x, t0) - cond(x, t1)).abs().max() > 1e-4


def test_unet_output_starts_at_zero():
    net = make_net((1, 8, 8))
    assert not net(torch.randn(2, 1, 8, 8), torch.rand(2)).abs().max()


class Known(nn.Module):
    """A 'network' that returns a fixed tensor c whatever (x, t)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t):
        return self.c.expand_as(x)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_parameterisations_follow_documented_relations(name):
    sde = make_sde(name)
    torch.manual_seed(2)
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    c = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 5, dtype=torch.float64)
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


def test_parameterisations_share_the_score_for_tweedie_outputs():
    """The three outputs that describe one exact score must give that score: for data N(0, I) under VP,
    s = -x, eps = sigma x, x0_hat = alpha x (Tweedie)."""
    sde = make_sde("vp")
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    for param, out in [(EpsilonParam, s * x), (ScoreParam, -x), (DataParam, a * x)]:
        torch.testing.assert_close(param(Known(out), sde)(x, t), -x)


def test_make_model_passes_net_options():
    model = make_model(make_sde("vp"), (2,), param="data", width=16, depth=2)
    assert isinstance(model, DataParam)
    linears = [m for m in model.net.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and linears[0].out_features == 16


@pytest.mark.parametrize("call, match", [
    (lambda: make_model(make_sde("vp"), (2,), param="v"), "parameterisation"),
    (lambda: make_net((2,), arch="transformer"), "architecture"),
    (lambda: make_net((64,), arch="unet"), "U-Net"),
])
def test_bad_choices_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
