"""Objectives on pre-computed scores: shapes, exactness of the regression target, the transport step."""

import pytest
import torch

from scorefast.analytic import MixtureScore
from scorefast.errors import UserError
from scorefast.methods.embedding import Embedding
from scorefast.methods.targets import TARGETS
from scorefast.nets import ScoreParam, make_model
from scorefast.objective import FixedField, Objective
from scorefast.sde import make_sde
from scorefast.time_sampling import UniformTimes

SMALL_FP = {"fp_grid": 33, "fp_steps": 8}
# a 33^2 x 8 grid is deliberately coarse (fast): its solve warns of unconverged steps and a coarse spacing
pytestmark = [pytest.mark.filterwarnings("ignore:FP solve:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:FP grid spacing:UserWarning")]


def make_loss(method, sde, x, *, t_min, t_max, model=None, **options):
    """The objective (of ``model``) on the registered target ``method`` (options: its fields), and the
    precomputation info."""
    target = TARGETS.create(method, **options)
    target.check(tuple(x.shape[1:]))
    goal, info = target.precompute(sde, x, progress=False)
    return Objective(model, sde, goal, UniformTimes(t_min, t_max)), info


def toy(device, n=64, d=2, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(n, d, generator=g, device=device) * 0.5 + \
        torch.randint(0, 2, (n, 1), generator=g, device=device) * 1.5


class Wrap(torch.nn.Module):
    """A callable score field as the network of a ScoreParam model."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, t):
        return self.fn(x, t.expand(x.shape[0]))


@pytest.mark.parametrize("method, variant, shape", [
    ("fp-regress", "sound", (64, 2)),
    ("fp-embed", "sound", (64, 2)),
    ("empirical", "sound", (64, 2)),
    ("empirical", "sound", (40, 1, 4, 4)),
    ("fp-embed", "sound", (40, 1, 4, 4)),
    ("fp-embed", "paper", (3, 1, 8, 8)),
])
def test_every_method_gives_finite_per_example_losses(method, variant, shape, device):
    sde = make_sde("ve-power" if variant == "paper" else "vp")
    x = toy(device, shape[0], int(torch.tensor(shape[1:]).prod())).reshape(shape)
    options = {"reference_size": 16} if method == "empirical" else \
        {**SMALL_FP, "fp_variant": variant, "reference_size": 16} if method == "fp-embed" else SMALL_FP
    model = make_model(sde, shape[1:], "eps", width=16, depth=1) if len(shape) == 2 else \
        make_model(sde, shape[1:], "eps", arch="mlp", width=16, depth=1)
    loss, info = make_loss(method, sde, x, t_min=sde.eps, t_max=sde.T, model=model.to(device), **options)
    out = loss(x[:12])
    assert out.shape == (min(12, len(x)),) and torch.isfinite(out).all()
    assert info["source"]


@pytest.mark.parametrize("method", ["empirical", "fp-regress"])
def test_regression_loss_vanishes_when_the_model_is_the_target(method, device):
    sde, x = make_sde("vp"), toy(device)
    loss, info = make_loss(method, sde, x, t_min=0.05, t_max=sde.T, **({} if method == "empirical" else SMALL_FP))
    target = MixtureScore(sde, x, info["bandwidth"]) if method == "empirical" else loss.goal.provider.fn
    loss.model = ScoreParam(Wrap(target), sde)
    assert loss(x[:32]).abs().max() < 1e-10
    loss.model = ScoreParam(Wrap(MixtureScore(sde, x, 0.3)), sde)
    assert loss(x[:32]).mean() > 1e-4


def test_empirical_reference_batch_contains_the_batch(device):
    sde, x = make_sde("vp"), toy(device, 200)
    loss, info = make_loss("empirical", sde, x, t_min=0.01, t_max=sde.T, reference_size=50)
    assert info["reference_size"] == 50
    reference = loss.goal.provider.reference(x[:10])[:, :2]  # the augmented centres [c, 1, |c|^2]
    assert reference.shape == (50, 2) and torch.equal(reference[:10], x[:10])


def test_fp_embed_transport_is_forward_euler_of_the_probability_flow(device):
    sde = make_sde("vp")
    score = MixtureScore(sde, toy(device), 0.2)
    embedding = Embedding(FixedField(score), bins=4)
    times, which = embedding.sample_bins(UniformTimes(0.1, 0.9), 8, device)
    assert times.device == which.device == device
    assert ((times[1:] - times[:-1]) > 0).all()
    assert torch.equal(torch.bincount(which, minlength=4), torch.full((4,), 2, device=device))
    edges = torch.linspace(0.1, 0.9, 5, device=device)
    assert ((times >= edges[:-1]) & (times <= edges[1:])).all()
    x0 = toy(device, 8)
    moved = embedding.transport(sde, x0, times, which, score)
    x, t_prev = x0, 0.0
    for k in range(4):
        tk = times[k].expand(8)
        x = x + (times[k] - t_prev) * (-0.5 * sde.beta(tk)[:, None] * x - 0.5 * sde.g2(tk)[:, None] * score(x, tk))
        t_prev = times[k]
        assert torch.allclose(moved[which == k], x[which == k], atol=1e-6)


def test_factory_rejects_bad_methods_and_dimensions(device):
    sde = make_sde("vp")
    with pytest.raises(UserError, match="dsm, fp-regress, empirical, knn, fp-embed"):
        make_loss("dsm-ish", sde, toy(device), t_min=0.01, t_max=1.0)
    with pytest.raises(UserError, match="--method empirical") as err:
        make_loss("fp-regress", sde, toy(device, d=5), t_min=0.01, t_max=1.0)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="fp_variant"):
        make_loss("fp-regress", sde, toy(device), t_min=0.01, t_max=1.0, fp_variant="paper")
    with pytest.raises(UserError, match="square images"):
        make_loss("fp-embed", sde, toy(device), t_min=0.01, t_max=1.0, fp_variant="paper")


def reference_mixture_logp(sde, centres, h, x, t):
    """-log of the diffused KDE by torch.distributions, independent of MixtureScore (CPU tensors)."""
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = sde.alpha(tt), sde.sigma(tt)
    comp = torch.distributions.Independent(torch.distributions.Normal(a * centres, (a * a * h * h + s * s).sqrt()), 1)
    mix = torch.distributions.Categorical(torch.ones(len(centres), dtype=centres.dtype))
    return torch.distributions.MixtureSameFamily(mix, comp).log_prob(x)


@pytest.mark.parametrize("t", [0.01, 0.3, 1.0])
def test_mixture_score_matches_an_independent_mixture_in_chunks(t, device):
    sde = make_sde("vp")
    g = torch.Generator(device=device).manual_seed(3)
    centres = torch.randn(10, 5, generator=g, dtype=torch.float64, device=device)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64, device=device)
    x_ref = x.detach().cpu().requires_grad_()
    ref = reference_mixture_logp(sde, centres.cpu(), 0.2, x_ref, t)
    (ref_score,) = torch.autograd.grad(ref.sum(), x_ref)
    mix = MixtureScore(sde, centres, 0.2, chunk=3)  # 4 chunks, the last one short
    tt = torch.full((7,), t, dtype=torch.float64, device=device)
    assert torch.allclose(mix.log_prob(x, tt).cpu(), ref.detach(), rtol=1e-10, atol=1e-10)
    assert torch.allclose(mix(x, tt).cpu(), ref_score, rtol=1e-9, atol=1e-9)


def test_mixture_score_in_float32_on_image_scale_data_at_small_times(device):
    # the distances are expanded |x|^2 - 2 a x.c + a^2 |c|^2: check float32 keeps the score close to float64
    sde = make_sde("vp")
    g = torch.Generator(device=device).manual_seed(4)
    centres = torch.rand(300, 64, generator=g, dtype=torch.float64, device=device) * 2 - 1
    t = torch.full((50,), 0.01, dtype=torch.float64, device=device)
    noise = torch.randn(50, 64, generator=g, dtype=torch.float64, device=device)
    x = sde.alpha(t)[:, None] * centres[:50] + sde.sigma(t)[:, None] * noise
    exact = MixtureScore(sde, centres, 0.0)(x, t)
    single = MixtureScore(sde, centres.float(), 0.0)(x.float(), t.float()).double()
    assert (single - exact).norm() / exact.norm() < 1e-3
