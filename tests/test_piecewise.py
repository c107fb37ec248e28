"""Parallel score matching: partitions, the piecewise model and its use by the unchanged engine.

The equivalence tests split an exact score (Gaussian data) into identical pieces: any difference from
the unsplit model is then the integrator's doing, not the networks'.
"""

import copy
import math

import pytest
import torch
from torch import nn

from scorefast.analytic import GaussianScore
from scorefast.errors import UserError
from scorefast.likelihood import log_likelihood
from scorefast.methods.piecewise import (
    FrozenTime,
    PiecewiseModel,
    assemble,
    check_partition,
    parse_edges,
    partition,
)
from scorefast.nets import make_model
from scorefast.objective import Objective
from scorefast.sampling import sample
from scorefast.sde import make_sde

MEAN = [0.6, -0.4]
COV = [[1.0, 0.3], [0.3, 0.5]]


@pytest.fixture(autouse=True)
def one_thread():
    """Batched 2x2 solves are ~50x slower with two OpenMP threads on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def sde():
    return make_sde("vp-psm")


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Recording(nn.Module):
    """Wraps a score model and records every time it is evaluated at."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.times = []

    def forward(self, x, t):
        self.times.append(torch.as_tensor(t).detach().reshape(-1).double().clone())
        return self.model(x, t)

    def eps(self, x, t):
        self.times.append(torch.as_tensor(t).detach().reshape(-1).double().clone())
        return self.model.eps(x, t)

    def recorded(self):
        return torch.cat(self.times) if self.times else torch.empty(0, dtype=torch.float64)


def exact_logp(score, t):
    return lambda x: score.log_prob(x, t)


# -- partitions -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["equal", "logsnr"])
@pytest.mark.parametrize("K", [1, 3, 8])
def test_partition_covers_the_range_with_increasing_edges(sde, kind, K):
    edges = partition(kind, K, sde.eps, sde.T, sde)
    assert len(edges) == K + 1
    assert edges[0] == sde.eps and edges[-1] == sde.T
    assert all(a < b for a, b in zip(edges[:-1], edges[1:]))


def test_equal_partition_is_equal_in_t():
    edges = torch.tensor(partition("equal", 5, 0.01, 0.51))
    assert torch.allclose(edges.diff(), torch.full((5,), 0.1, dtype=edges.dtype), atol=1e-12)


def test_logsnr_edges_are_equally_spaced_in_the_closed_form_log_snr(sde):
    # vp-psm: int beta = c t^2, so lambda(t) = -c t^2 - log(1 - exp(-c t^2)), c = 5.
    lam = lambda t: -5 * t * t - math.log(-math.expm1(-5 * t * t))  # noqa: E731
    edges = partition("logsnr", 6, sde.eps, sde.T, sde)
    gaps = [lam(a) - lam(b) for a, b in zip(edges[:-1], edges[1:])]
    assert max(gaps) - min(gaps) < 1e-9 * max(gaps)
    assert edges[1] - edges[0] < edges[-1] - edges[-2]


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "ve-power"])
def test_logsnr_partition_for_every_family(name, device):
    s = make_sde(name)
    edges = partition("logsnr", 5, s.eps, s.T, s)
    lam = s.log_snr(torch.tensor(edges, dtype=torch.float64, device=device))
    gaps = -lam.diff()
    assert (gaps > 0).all()
    assert torch.allclose(gaps, gaps.mean().expand(5), rtol=1e-9)


def test_parse_edges_replaces_a_leading_zero_by_t_min(sde):
    assert parse_edges("0,0.02,0.1,0.3,1", sde.eps, sde.T) == [sde.eps, 0.02, 0.1, 0.3, 1.0]
    assert parse_edges(" 0.001, 0.1 ,1.0", sde.eps, sde.T) == [sde.eps, 0.1, 1.0]
    assert parse_edges("0,0.4", 0.001, 0.4) == [0.001, 0.4]


@pytest.mark.parametrize("text", ["0,0.3,0.1,1", "0,0.1,0.1,1", "0,0.5", "0.2,0.5,1", "0,a,1", "0,,1", "1",
                                  "0,0.0005,1", "0,nan,1", "0,0.5,inf", ""])
def test_parse_edges_rejects_bad_edges(sde, text):
    with pytest.raises(UserError) as e:
        parse_edges(text, sde.eps, sde.T)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("args", [("equal", 0), ("equal", -2), ("equal", 2.5), ("logsnr", 0), ("random", 4)])
def test_partition_rejects_bad_requests(sde, args):
    kind, K = args
    with pytest.raises(UserError) as e:
        partition(kind, K, sde.eps, sde.T, sde)
    assert "\n" not in str(e.value)


def test_partition_rejects_a_missing_sde_and_an_empty_range(sde):
    with pytest.raises(UserError, match="needs the SDE"):
        partition("logsnr", 4, sde.eps, sde.T)
    with pytest.raises(UserError, match="t_min < t_max"):
        partition("equal", 4, 0.5, 0.5)
    with pytest.raises(UserError, match="log-SNR"):
        partition("logsnr", 4, 0.0, 1.0, sde)


def test_check_partition_needs_a_step_per_interval(sde):
    edges = partition("equal", 10, sde.eps, sde.T)
    assert check_partition(edges, 10) == edges
    with pytest.raises(UserError, match="10 intervals need at least 10 steps"):
        check_partition(edges, 9)
    with pytest.raises(UserError, match="cover"):
        check_partition(edges, t_min=sde.eps, t_max=2.0)


# -- the piecewise model in the engine --------------------------------------------------------------

def gaussian_pieces(sde, K, device, kind="logsnr"):
    score = GaussianScore(sde, torch.tensor(MEAN), torch.tensor(COV)).to(device)
    edges = partition(kind, K, sde.eps, sde.T, sde)
    return score, PiecewiseModel([copy.deepcopy(score) for _ in range(K)], edges)


@pytest.mark.parametrize("method,steps,tol", [("rk4", 60, 1e-5), ("dopri5", 1, 1e-5)])
def test_split_exact_score_gives_the_unsplit_likelihood(sde, float64, method, steps, tol, device):
    score, pw = gaussian_pieces(sde, 4, device)
    x = torch.randn(16, 2, generator=torch.Generator(device=device).manual_seed(0), device=device)
    opts = dict(steps=steps, method=method, rtol=1e-7, atol=1e-7, prior_logp=exact_logp(score, sde.T))
    ll_pw = log_likelihood(pw, sde, x, **opts)
    ll_one = log_likelihood(score, sde, x, **opts)
    exact = score.log_prob(x, sde.eps)
    assert (ll_pw - ll_one).abs().max() < tol
    assert (ll_pw - exact).abs().max() < tol


@pytest.mark.parametrize("method,steps,tol", [("rk4", 60, 1e-6), ("dopri5", 1, 1e-6)])
def test_split_exact_score_gives_the_unsplit_ode_samples(sde, float64, method, steps, tol, device):
    score, pw = gaussian_pieces(sde, 5, device)
    run = lambda m: sample(m, sde, 64, (2,), sampler="ode", steps=steps, method=method, rtol=1e-7,  # noqa: E731
                           atol=1e-7, generator=torch.Generator(device=device).manual_seed(1), device=device,
                           progress=False)
    a, b = run(pw), run(score)
    assert (a - b).abs().max() < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampler,method", [("ode", "euler"), ("ode", "heun"), ("ode", "rk4"), ("ode", "dopri5"),
                                            ("em", None), ("likelihood", "rk4"), ("likelihood", "dopri5")])
def test_no_solver_step_crosses_an_edge(sde, dtype, sampler, method, device):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        score = GaussianScore(sde, torch.tensor(MEAN), torch.tensor(COV)).to(device)
        edges = partition("logsnr", 4, sde.eps, sde.T, sde)
        pw = PiecewiseModel([Recording(score) for _ in range(4)], edges)
        opts = {} if method is None else {"method": method}
        if sampler == "likelihood":
            log_likelihood(pw, sde, torch.randn(8, 2, device=device), steps=12, **opts)
        else:
            sample(pw, sde, 8, (2,), sampler=sampler, steps=12, device=device, progress=False, **opts)
    finally:
        torch.set_default_dtype(old)
    tol = torch.finfo(dtype).eps
    for k, piece in enumerate(pw.pieces):
        t = piece.recorded()
        assert t.numel() > 0, f"piece {k} never used"
        assert t.min() >= edges[k] * (1 - tol) and t.max() <= edges[k + 1] * (1 + tol), (k, t.min(), t.max())


class Constant(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = float(k)

    def forward(self, x, t):
        return torch.full_like(x, self.k)

    def eps(self, x, t):
        return torch.full_like(x, -self.k)


def test_forward_and_eps_dispatch_each_example_by_its_time(device):
    edges = [0.001, 0.1, 0.5, 1.0]
    pw = PiecewiseModel([Constant(k) for k in range(3)], edges)
    t = torch.tensor([0.001, 0.05, 0.1, 0.3, 0.4999, 0.5, 0.9, 1.0], device=device)
    want = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2.0], device=device)
    x = torch.zeros(8, 2, device=device)
    assert torch.equal(pw(x, t)[:, 0], want)
    assert torch.equal(pw.eps(x, t)[:, 1], -want)
    assert torch.equal(pw(x, torch.tensor(0.3, device=device))[:, 0], torch.ones(8, device=device))
    assert torch.equal(pw(x, 0.3)[:, 0], torch.ones(8, device=device))  # a Python time goes to x's device


def test_piecewise_dsm_trains_each_net_on_its_own_examples(sde, device):
    torch.manual_seed(0)
    nets = [make_model(sde, (2,), width=16, depth=1).to(device) for _ in range(3)]
    pw = PiecewiseModel(nets, [sde.eps, 0.2, 0.6, sde.T])
    t = torch.tensor([0.1, 0.15, 0.3, 0.4], device=device)
    Objective(pw, sde)(torch.randn(4, 2, device=device), t=t).sum().backward()
    grads = [sum(p.grad.abs().sum() for p in n.parameters() if p.grad is not None) for n in nets]
    assert grads[0] > 0 and grads[1] > 0 and grads[2] == 0


def test_piecewise_model_rejects_mismatched_models():
    with pytest.raises(UserError, match="3 intervals need as many models"):
        PiecewiseModel([Constant(0)], [0.001, 0.1, 0.5, 1.0])
    with pytest.raises(UserError, match="strictly increasing"):
        PiecewiseModel([Constant(0), Constant(1)], [0.001, 0.5, 0.1])


# -- per-time-point (DPSM) --------------------------------------------------------------------------

@pytest.mark.parametrize("sampler,method", [("ode", "rk4"), ("ode", "dopri5"), ("em", None), ("likelihood", "rk4")])
def test_per_time_point_pieces_are_evaluated_only_at_their_time(sde, float64, sampler, method, device):
    score = GaussianScore(sde, torch.tensor(MEAN), torch.tensor(COV)).to(device)
    edges = partition("equal", 5, sde.eps, sde.T)
    nets = [Recording(score) for _ in range(5)]
    pw = assemble(nets, edges, per_time_point=True)
    assert [p.t for p in pw.pieces] == edges[1:] and all(isinstance(p, FrozenTime) for p in pw.pieces)
    opts = {} if method is None else {"method": method}
    if sampler == "likelihood":
        log_likelihood(pw, sde, torch.randn(8, 2, device=device), steps=10, **opts)
    else:
        sample(pw, sde, 8, (2,), sampler=sampler, steps=10, device=device, progress=False, **opts)
    for k, net in enumerate(nets):
        t = net.recorded()
        assert t.numel() > 0 and (t == edges[k + 1]).all(), k


def test_per_time_point_likelihood_converges_to_the_exact_one(sde, float64, device):
    """A frozen-time score is a first-order approximation in the interval width: the error shrinks with N."""
    score = GaussianScore(sde, torch.tensor(MEAN), torch.tensor(COV)).to(device)
    x = torch.randn(16, 2, generator=torch.Generator(device=device).manual_seed(2), device=device)
    exact = score.log_prob(x, sde.eps)
    errs = []
    for N in (10, 40):
        pw = assemble([copy.deepcopy(score) for _ in range(N)], partition("equal", N, sde.eps, sde.T),
                      per_time_point=True)
        ll = log_likelihood(pw, sde, x, steps=2 * N, prior_logp=exact_logp(score, sde.T))
        errs.append(float((ll - exact).abs().max()))
    assert errs[1] < errs[0] / 2
