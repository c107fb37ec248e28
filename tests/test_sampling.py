"""Samplers against Gaussian data, whose score, marginals and probability flow are known exactly.

For N(mu, Sigma) data the PF-ODE is affine in x, so the empirical mean and covariance of a sample
evolve exactly like the true ones. Starting from x_T whitened to have *exactly* the moments of p_T,
an ODE sampler's output moments differ from those of p_eps only by discretisation error: the
tolerances below bound that error, with no Monte Carlo term. The stochastic samplers add fresh
noise, so their tolerances are a few Monte Carlo standard errors plus a small discretisation bias.
"""

import math

import pytest
import torch

from scorefast.analytic import GaussianScore
from scorefast.sampling import sample, sample_em, sample_ode, sample_pc
from scorefast.sde import make_sde
from scorefast.time_grids import pieces, time_grid

MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)


def exact_prior_samples(score: GaussianScore, n: int, seed: int = 0) -> torch.Tensor:
    """n points whose empirical mean and (1/n) covariance equal those of p_T exactly (on the score's device)."""
    device = score.mean.device
    z = torch.randn(n, 2, generator=torch.Generator(device=device).manual_seed(seed), dtype=torch.float64,
                    device=device)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / n)).T
    mean, cov = score.marginal(torch.tensor(score.sde.T, dtype=torch.float64))
    return mean + z @ torch.linalg.cholesky(cov).T


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = x.mean(0)
    return m, (x - m).T @ (x - m) / x.shape[0]


def target_moments(score: GaussianScore) -> tuple[torch.Tensor, torch.Tensor]:
    return score.marginal(torch.tensor(score.sde.eps, dtype=torch.float64))


@pytest.fixture
def vp(device):
    sde = make_sde("vp")
    return sde, GaussianScore(sde, MEAN, COV).to(device)


# (method, steps, tolerance): measured max errors 2.8e-3, 2.6e-3, 8.4e-5 and 1.3e-8, each ~3x or more
# below its tolerance.
ODE_CASES = [("euler", 100, 1e-2), ("heun", 20, 1e-2), ("rk4", 10, 3e-4), ("dopri5", 1, 1e-6)]


def _ode_error(score, method, steps, tol=1e-7):
    sde = score.sde
    ts = time_grid(sde.T, sde.eps, steps, device=score.mean.device, dtype=torch.float64)
    x = sample_ode(score, sde, exact_prior_samples(score, 2000), ts, method=method, rtol=tol, atol=tol, progress=False)
    (m, c), (tm, tc) = moments(x), target_moments(score)
    return max(float((m - tm).abs().max()), float((c - tc).abs().max()))


@pytest.mark.parametrize("method, steps, tol", ODE_CASES, ids=[c[0] for c in ODE_CASES])
def test_ode_reproduces_data_moments(vp, method, steps, tol):
    assert _ode_error(vp[1], method, steps) < tol


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_fixed_grid_solvers_converge_at_their_order(vp, method, order):
    """Doubling the steps divides the error by about 2^order (measured 2.0, 4.0 and 21)."""
    ratio = _ode_error(vp[1], method, 10) / _ode_error(vp[1], method, 20)
    assert ratio > 0.75 * 2**order


def _mc_tolerance(n: int, bias: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """4 standard errors of the sample mean and covariance of N(MEAN, COV), plus a bias allowance."""
    cov = COV.to(device)
    d = cov.diagonal()
    se_mean = (d / n).sqrt()
    se_cov = ((d[:, None] * d[None, :] + cov**2) / n).sqrt()
    return 4 * se_mean + bias, 4 * se_cov + bias


@pytest.mark.parametrize("sampler, steps", [(sample_em, 500), (sample_pc, 250)], ids=["em", "pc"])
def test_stochastic_samplers_reproduce_data_moments(vp, sampler, steps, device):
    sde, score = vp
    n = 4000
    g = torch.Generator(device=device).manual_seed(3)
    x = sampler(score, sde, exact_prior_samples(score, n),
                time_grid(sde.T, sde.eps, steps, device=device, dtype=torch.float64), generator=g, progress=False)
    m, c = moments(x)
    tm, tc = target_moments(score)
    # biases measured with n = 100,000: EM <= 0.007, PC <= 0.021
    tol_m, tol_c = _mc_tolerance(n, bias=0.03, device=device)
    assert ((m - tm).abs() <= tol_m).all(), (m, tm)
    assert ((c - tc).abs() <= tol_c).all(), (c, tc)


def test_sample_with_reference_prior_matches_within_prior_gap(vp, device):
    """vp at T = 1 leaves alpha_T^2 = 4e-5 of the signal: N(0, I) misses p_T's mean alpha_T mu, which the
    flow carries to an output mean off by at most |Sigma^{1/2}| alpha_T |mu| (< 0.01 here)."""
    sde, score = vp
    n = 4000
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = sample(score, sde, n, (2,), steps=60, generator=torch.Generator(device=device).manual_seed(4),
                   device=device, progress=False)
    finally:
        torch.set_default_dtype(old)
    assert x.shape == (n, 2) and x.dtype == torch.float64 and x.device == device
    m_T, _ = score.marginal(torch.tensor(sde.T, dtype=torch.float64))
    gap = float(torch.linalg.matrix_norm(COV, ord=2).sqrt() * m_T.norm())
    assert gap < 0.01
    tol_m, tol_c = _mc_tolerance(n, bias=gap + 1e-3, device=device)
    m, c = moments(x)
    assert ((m - MEAN.to(device)).abs() <= tol_m).all(), m
    assert ((c - COV.to(device)).abs() <= tol_c).all(), c


def test_sample_with_given_prior_is_exact(vp, device):
    """x_T from a prior on the device, no device= given: the time grid goes where x_T is (a network needs t there)."""
    sde, score = vp

    class ExactPrior:
        def sample(self, n, generator=None):
            return exact_prior_samples(score, n)

    seen = set()

    def model(x, t):
        seen.add((x.device, t.device))
        return score(x, t)

    x = sample(model, sde, 1000, (2,), prior=ExactPrior(), steps=50, progress=False)
    assert seen == {(device, device)}
    m, c = moments(x)
    tm, tc = target_moments(score)
    torch.testing.assert_close(m, tm, rtol=0, atol=1e-4)
    torch.testing.assert_close(c, tc, rtol=0, atol=1e-4)


def test_sample_rejects_unknown_sampler(vp):
    with pytest.raises(ValueError, match="sampler"):
        sample(vp[1], vp[0], 4, (2,), sampler="ddim")


# -- time grids and pieces ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_time_grid_puts_edges_exactly_on_grid(dtype, device):
    edges = [0.02, 0.1, 0.3]
    ts = time_grid(1.0, 1e-3, 100, edges=edges + [1.0], device=device, dtype=dtype)
    assert ts.dtype == dtype and ts.device == device
    assert float(ts[0]) == 1.0 and ts[-1] == torch.tensor(1e-3, dtype=dtype, device=device)
    assert (ts[1:] < ts[:-1]).all()
    for e in edges:
        assert (ts == torch.tensor(e, dtype=dtype, device=device)).sum() == 1
    assert abs(len(ts) - 1 - 100) <= len(edges)


def test_time_grid_shares_steps_by_length_in_both_directions(device):
    up = time_grid(0.0, 1.0, 10, edges=[0.3], device=device)
    torch.testing.assert_close(up, torch.linspace(0, 1, 11, device=device))
    assert torch.equal(time_grid(1.0, 0.0, 10, edges=[0.3], device=device), up.flip(0))
    assert len(time_grid(0.0, 1.0, 4, edges=[0.01])) == 6  # a short piece still gets a step


def test_time_grid_needs_a_step():
    with pytest.raises(ValueError):
        time_grid(1.0, 0.0, 0)


class Piecewise:
    """A toy piecewise model: the same exact score on every piece, logging each evaluation time."""

    def __init__(self, score, edges):
        self.score, self.edges, self.calls = score, edges, []

    def piece(self, k):
        def fn(x, t):
            self.calls.append((k, float(t.min()), float(t.max())))
            return self.score(x, t)
        return fn

    def assert_within_pieces(self):
        assert self.calls
        for k, lo, hi in self.calls:
            assert self.edges[k] <= lo and hi <= self.edges[k + 1], (k, lo, hi)


def test_pieces_split_the_grid_and_reject_misaligned_grids(vp, device):
    sde, score = vp
    model = Piecewise(score, [sde.eps, 0.3, 1.0])
    for dtype in (torch.float32, torch.float64):
        ts = time_grid(1.0, sde.eps, 20, edges=model.edges, device=device, dtype=dtype)
        segs = pieces(model, ts)
        assert [float(s[0]) for _, s in segs] == [1.0, float(torch.tensor(0.3, dtype=dtype))]
        assert torch.equal(torch.cat([segs[0][1], segs[1][1][1:]]), ts)
    with pytest.raises(ValueError, match="not aligned"):
        pieces(model, torch.linspace(1.0, sde.eps, 8, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="outside"):
        pieces(model, time_grid(1.0, 1e-4, 20, edges=model.edges, device=device, dtype=torch.float64))
    assert pieces(score, ts) == [(score, ts)]


@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "em", "pc"])
def test_piecewise_model_gives_identical_samples_and_stays_in_its_pieces(vp, method, device):
    sde, score = vp
    model = Piecewise(score, [sde.eps, 0.3, 1.0])
    ts = time_grid(sde.T, sde.eps, 20, edges=model.edges, device=device, dtype=torch.float64)
    x = exact_prior_samples(score, 200)
    if method in ("em", "pc"):
        sampler = sample_em if method == "em" else sample_pc
        run = lambda m: sampler(m, sde, x, ts, generator=torch.Generator(device=device).manual_seed(5),  # noqa: E731
                                progress=False)
    else:
        run = lambda m: sample_ode(m, sde, x, ts, method=method, progress=False)  # noqa: E731
    assert torch.equal(run(model), run(score))
    model.assert_within_pieces()
    assert {k for k, _, _ in model.calls} == {0, 1}


def test_adaptive_solver_never_steps_across_an_edge(vp, device):
    sde, score = vp
    model = Piecewise(score, [sde.eps, 0.05, 0.3, 1.0])
    ts = time_grid(sde.T, sde.eps, 20, edges=model.edges, device=device, dtype=torch.float64)
    x = exact_prior_samples(score, 200)
    split = sample_ode(model, sde, x, ts, method="dopri5", rtol=1e-7, atol=1e-7, progress=False)
    model.assert_within_pieces()
    whole = sample_ode(score, sde, x, ts, method="dopri5", rtol=1e-7, atol=1e-7, progress=False)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["rk4", "dopri5", "em", "pc"])
def test_callback_once_per_step(vp, method, device):
    sde, score = vp
    ts = time_grid(sde.T, sde.eps, 12, device=device, dtype=torch.float64)
    seen = []
    x = exact_prior_samples(score, 10)
    if method in ("em", "pc"):
        sampler = sample_em if method == "em" else sample_pc
        out = sampler(score, sde, x, ts, callback=seen.append, progress=False)
    else:
        out = sample_ode(score, sde, x, ts, method=method, callback=seen.append, progress=False)
    if method == "dopri5":  # one adaptive solve per piece: the callback fires when it ends
        assert [e["i"] for e in seen] == [12]
    else:
        assert [e["i"] for e in seen] == list(range(1, 13))
        assert [float(e["t"]) for e in seen] == ts[1:].tolist()
    assert torch.equal(seen[-1]["x"], out)
    assert math.isclose(float(seen[-1]["t"]), sde.eps)
