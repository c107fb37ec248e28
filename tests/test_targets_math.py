"""The reference-batch (STF) and nearest-neighbour score targets against closed forms.

Closed forms: the diffused KDE's score by torch.distributions and autograd (independent of
analytic.py), the exact diffused-Gaussian score (GaussianScore), the conditional score -z / sigma.
Unbiasedness is checked by Monte Carlo over x0 ~ p(x0 | x_t) with a tolerance of 4 standard errors.
"""

import pytest
import torch

from scorefast.analytic import GaussianScore, MixtureScore, kde_posterior
from scorefast.errors import UserError
from scorefast.estimators import NearestNeighbourTarget, ReferenceBatchTarget
from scorefast.sde import make_sde

F64 = torch.float64


def kde_score(sde, centres, h, x, t):
    """Score of (1/N) sum_j N(alpha c_j, (alpha^2 h^2 + sigma^2) I) at x, t (B,) by autograd of its log-density
    (torch.distributions on CPU; returned on x's device)."""
    device = x.device
    x, t, centres = x.detach().cpu().clone().requires_grad_(), t.cpu(), centres.cpu()
    a, s = sde.alpha(t)[:, None, None], sde.sigma(t)[:, None, None]
    comp = torch.distributions.Independent(torch.distributions.Normal(a * centres, (a * a * h * h + s * s).sqrt()), 1)
    mix = torch.distributions.Categorical(torch.ones(len(t), len(centres), dtype=centres.dtype))
    (grad,) = torch.autograd.grad(torch.distributions.MixtureSameFamily(mix, comp).log_prob(x).sum(), x)
    return grad.to(device)


def toy(device, n=60, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator(device=device).manual_seed(seed), dtype=F64, device=device)


def perturbed(sde, x0, t, seed=1):
    g = torch.Generator(device=x0.device).manual_seed(seed)
    z = torch.randn(x0.shape, generator=g, dtype=x0.dtype, device=x0.device)
    return sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * z, z


@pytest.mark.parametrize("h", [0.0, 0.3])
def test_reference_target_is_the_kde_posterior_mean_over_its_set(h, device):
    sde, data = make_sde("vp"), toy(device)
    x0 = data[:8]
    t = torch.linspace(0.05, 1.0, 8, dtype=F64, device=device)
    xt, _ = perturbed(sde, x0, t)
    full = ReferenceBatchTarget(sde, data, reference_size=len(data), bandwidth=h)
    assert torch.allclose(full.target(x0, xt, t), kde_score(sde, data, h, xt, t), rtol=1e-9, atol=1e-9)
    batch = ReferenceBatchTarget(sde, data, reference_size=20, bandwidth=h)
    torch.manual_seed(5)
    ref = batch.reference(x0)[:, :3]
    torch.manual_seed(5)
    got = batch.target(x0, xt, t)
    assert ref.shape == (20, 3) and torch.equal(ref[:8], x0)  # the whole batch, then 12 data points
    assert all(any(torch.equal(r, p) for p in data) for r in ref[8:])
    assert torch.allclose(got, kde_score(sde, ref, h, xt, t), rtol=1e-9, atol=1e-9)
    small = ReferenceBatchTarget(sde, data, reference_size=5, bandwidth=h)  # a larger batch is its own set
    assert torch.allclose(small.target(x0, xt, t), kde_score(sde, x0, h, xt, t), rtol=1e-9, atol=1e-9)


def test_reference_target_tends_to_the_conditional_score_at_small_sigma(device):
    sde = make_sde("vp")
    axes = torch.arange(20.0, device=device), torch.arange(25.0, device=device)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    data = (grid + 0.1 * toy(device, n=500, d=2)).to(F64)  # 500 points at least ~0.5 apart
    x0 = data[torch.randperm(500, generator=torch.Generator(device=device).manual_seed(0), device=device)[:64]]
    est = ReferenceBatchTarget(sde, data, reference_size=256)
    errors = []
    for t0 in (0.3, 0.05, 0.01):
        t = torch.full((64,), t0, dtype=F64, device=device)
        xt, z = perturbed(sde, x0, t)
        sigma = sde.sigma(t)[:, None]
        errors.append(float((sigma * est.target(x0, xt, t) + z).norm() / z.norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-12  # -z / sigma = (alpha x0 - x_t) / sigma^2


@pytest.mark.parametrize("search", ["tree", "brute"])
def test_nearest_neighbour_target_with_k_equal_n_is_the_full_target(search, device):
    sde, data = make_sde("vp"), toy(device, n=40)
    x0 = data[torch.arange(12, device=device) % 40]
    t = torch.linspace(0.02, 1.0, 12, dtype=F64, device=device)  # t per example, so alpha_t differs per row
    xt, _ = perturbed(sde, x0, t)
    full = kde_score(sde, data, 0.2, xt, t)
    knn = NearestNeighbourTarget(sde, data, k=40, bandwidth=0.2, search=search, tail=5)  # no tail when k = N
    assert torch.allclose(knn.target(x0, xt, t), full, rtol=1e-9, atol=1e-9)
    ref = ReferenceBatchTarget(sde, data, reference_size=40, bandwidth=0.2)
    assert torch.allclose(ref.target(x0, xt, t), full, rtol=1e-9, atol=1e-9)
    images = data.view(40, 1, 3, 1)  # any example shape: flattened inside, the target shaped like x_t
    got = NearestNeighbourTarget(sde, images, k=40, bandwidth=0.2, search=search).target(x0.view(12, 1, 3, 1),
                                                                                      xt.view(12, 1, 3, 1), t)
    assert got.shape == (12, 1, 3, 1) and torch.allclose(got.flatten(1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("search", ["tree", "brute"])
def test_nearest_neighbour_target_with_small_k_is_close_at_small_sigma(search, device):
    sde, data = make_sde("vp"), toy(device, n=2000, d=2) * 2
    x0 = data[:256]
    errors = []
    for t0 in (0.002, 0.5):  # sigma 0.015 (a tenth of the typical spacing) and 0.92 (most of the data)
        t = torch.full((256,), t0, dtype=F64, device=device)
        xt, _ = perturbed(sde, x0, t)
        exact = MixtureScore(sde, data, 0.0)(xt, t)
        near = NearestNeighbourTarget(sde, data, k=8, search=search).target(x0, xt, t)
        errors.append(float((near - exact).norm() / exact.norm()))
    assert errors[0] < 1e-6 and errors[1] > 0.1, errors


def test_auto_search_is_the_k_d_tree_on_cpu_only(device):
    """scipy's k-d tree runs on CPU: 'auto' takes it for data of up to 16 dimensions on CPU and the brute-force
    search (one product and a top-k on the data's device) anywhere else; both find the same neighbours."""
    sde, data = make_sde("vp"), toy(device, n=200, d=2)
    assert NearestNeighbourTarget(sde, data, k=5).search == ("tree" if device.type == "cpu" else "brute")
    assert NearestNeighbourTarget(sde, toy(device, n=200, d=17), k=5).search == "brute"
    q = toy(device, n=30, d=2, seed=1)
    tree, brute = (NearestNeighbourTarget(sde, data, k=5, search=s).neighbours(q).sort(1).values
                   for s in ("tree", "brute"))
    assert tree.device == brute.device == device and torch.equal(tree, brute)


def gaussian_posterior(sde, mean, cov, xt, t, n, gen):
    """n draws of x0 ~ p(x0 | x_t) for x0 ~ N(mean, cov), x_t = alpha x0 + sigma z (a Gaussian)."""
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    prec = torch.linalg.inv(cov) + (a * a / (s * s)) * torch.eye(len(mean), dtype=F64, device=mean.device)
    post_cov = torch.linalg.inv(prec)
    post_mean = post_cov @ (torch.linalg.solve(cov, mean) + a * xt / (s * s))
    z = torch.randn(n, len(mean), generator=gen, dtype=F64, device=mean.device)
    return post_mean + z @ torch.linalg.cholesky(post_cov).T


def within(samples, exact, z=4.0):
    """Whether the mean of samples (M, d) is within z standard errors of exact (d,), per coordinate."""
    se = samples.std(0) / len(samples) ** 0.5
    return bool(((samples.mean(0) - exact).abs() <= z * se).all()), float(((samples.mean(0) - exact).abs() / se).max())


@pytest.mark.parametrize("t0", [0.3, 0.05, 0.9])  # inside the band, below it, above it
def test_reference_target_with_band_is_unbiased_on_gaussian_data(t0, device):
    """E[target | x_t] = grad log p_t(x_t) exactly, inside the band (STF with the own x0 and B - 1 iid
    batch examples as the set) and outside (DSM's target)."""
    sde = make_sde("vp")
    f64 = {"dtype": F64, "device": device}
    mean, cov = torch.tensor([0.5, -1.0], **f64), torch.tensor([[1.0, 0.6], [0.6, 0.5]], **f64)
    exact_score = GaussianScore(sde, mean, cov)
    chol = torch.linalg.cholesky(cov)
    gen = torch.Generator(device=device).manual_seed(0)
    t = torch.tensor(t0, **f64)
    xt = sde.alpha(t) * (mean + torch.tensor([2.0, 1.0], **f64)) + 0.1  # where p_t is small: hard for SNIS
    band = (float(sde.sigma(torch.tensor(0.1))), float(sde.sigma(torch.tensor(0.6))))
    batch, reps = 6, 3000
    est = ReferenceBatchTarget(sde, mean + torch.randn(50, 2, **f64) @ chol.T, reference_size=batch, band=band)
    own = gaussian_posterior(sde, mean, cov, xt, t, reps, gen)
    others = mean + torch.randn(reps, batch - 1, 2, generator=gen, **f64) @ chol.T
    tt = torch.cat([t.reshape(1), torch.rand(batch - 1, generator=gen, **f64)])  # other rows: any t
    samples = torch.stack([est.target(torch.cat([own[i : i + 1], others[i]]),
                                      torch.cat([xt[None], torch.zeros(batch - 1, 2, **f64)]), tt)[0]
                           for i in range(reps)])
    ok, dev = within(samples, exact_score(xt[None], t)[0])
    assert ok, f"{dev:.1f} standard errors away"
    if t0 == 0.3:  # the same set without the own x0 is biased
        a, s = sde.alpha(t), sde.sigma(t)
        means = torch.stack([kde_posterior(xt[None], a.reshape(1), (s * s).reshape(1),
                                           torch.cat([others[i], torch.ones(batch - 1, 1, **f64),
                                                      others[i].pow(2).sum(1, keepdim=True)], 1))[0][0]
                             for i in range(reps)])
        assert not within((a * means - xt) / (s * s), exact_score(xt[None], t)[0], z=10.0)[0]


def test_nearest_neighbour_target_with_tail_draws_is_unbiased(device):
    """Over x0 ~ p(x0 | x_t) (the data's exact posterior), the k nearest plus tail draws (own x0 among
    them) average to the exact score of the empirical data; the plain k nearest do not."""
    sde, data = make_sde("vp"), toy(device, n=300, d=2, seed=3)
    t = torch.tensor(0.3, dtype=F64, device=device)
    xt = sde.alpha(t) * torch.tensor([1.0, 0.5], dtype=F64, device=device)
    exact = MixtureScore(sde, data, 0.0)(xt[None], t)[0]
    logits = -(xt - sde.alpha(t) * data).pow(2).sum(1) / (2 * sde.sigma(t) ** 2)
    gen = torch.Generator(device=device).manual_seed(2)
    reps = 20000
    x0 = data[torch.multinomial(torch.softmax(logits, 0), reps, replacement=True, generator=gen)]
    xts, ts = xt.expand(reps, 2), t.expand(reps)
    torch.manual_seed(0)
    corrected = NearestNeighbourTarget(sde, data, k=8, tail=8).target(x0, xts, ts)
    ok, dev = within(corrected, exact)
    assert ok, f"{dev:.1f} standard errors away"
    plain = NearestNeighbourTarget(sde, data, k=8).target(x0[:1], xt[None], t)[0]
    assert (plain - exact).abs().max() > 10 * corrected.std(0).max() / reps**0.5


def test_band_falls_back_to_the_dsm_target_outside(device):
    sde, data = make_sde("vp"), toy(device, n=100, d=2)
    x0 = data[:10]
    t = torch.linspace(0.01, 1.0, 10, dtype=F64, device=device)
    xt, z = perturbed(sde, x0, t)
    s = sde.sigma(t)
    band = (float(s[3]), float(s[6]))
    for est in (ReferenceBatchTarget(sde, data, 100, band=band), NearestNeighbourTarget(sde, data, 100, band=band)):
        got = est.target(x0, xt, t)
        inside = (s >= band[0]) & (s <= band[1])
        assert inside.sum() == 4
        assert torch.allclose(got[~inside], -z[~inside] / s[~inside, None], rtol=1e-9)
        assert torch.allclose(got[inside], kde_score(sde, data, 0.0, xt, t)[inside], rtol=1e-9)
    # k-NN inside the band, the full-data target outside it (bandwidth 0.2: no DSM fallback is involved)
    full = ReferenceBatchTarget(sde, data, 100, bandwidth=0.2)
    both = NearestNeighbourTarget(sde, data, 5, bandwidth=0.2, band=band, outside=full).target(x0, xt, t)
    alone = NearestNeighbourTarget(sde, data, 5, bandwidth=0.2).target(x0, xt, t)
    assert torch.allclose(both[inside], alone[inside], rtol=1e-9)
    assert torch.allclose(both[~inside], kde_score(sde, data, 0.2, xt, t)[~inside], rtol=1e-9)


@pytest.mark.parametrize("build, match", [
    (lambda sde, x: NearestNeighbourTarget(sde, x, k=0), "k = 0"),
    (lambda sde, x: NearestNeighbourTarget(sde, x, k=31), "k = 31"),
    (lambda sde, x: NearestNeighbourTarget(sde, x, k=3, tail=-1), "tail"),
    (lambda sde, x: NearestNeighbourTarget(sde, x, 4, search="faiss"), "search"),
    (lambda sde, x: ReferenceBatchTarget(sde, x, reference_size=31), "reference size 31"),
    (lambda sde, x: ReferenceBatchTarget(sde, x, reference_size=0), "reference size 0"),
    (lambda sde, x: ReferenceBatchTarget(sde, x, 8, band=(0.5, 0.2)), "inverted"),
    (lambda sde, x: ReferenceBatchTarget(sde, x, 8, band=(0.0, 0.2)), "inside"),
    (lambda sde, x: NearestNeighbourTarget(sde, x, 4, band=(0.1, 5.0)), "inside"),
    (lambda sde, x: ReferenceBatchTarget(sde, x, 8, bandwidth=0.1, band=(0.1, 0.5)), "bandwidth 0"),
    (lambda sde, x: ReferenceBatchTarget(sde, x, 8, bandwidth=-1.0), "bandwidth"),
    (lambda sde, x: NearestNeighbourTarget(sde, x, 4, outside=ReferenceBatchTarget(sde, x, 8)), "needs a sigma band"),
    (lambda sde, x: NearestNeighbourTarget(sde, x, 4, band=(0.1, 0.5),
                                           outside=ReferenceBatchTarget(sde, x, 8, bandwidth=0.1)), "same KDE"),
])
def test_bad_input_is_one_line(build, match, device):
    with pytest.raises(UserError, match=match) as err:
        build(make_sde("vp"), toy(device, n=30, d=2))
    assert "\n" not in str(err.value)


def test_targets_plug_into_the_regression_loss_as_providers(device):
    """for_batch(x0) is today's provider protocol: the regression loss on the full-data target equals the
    regression on the closed-form mixture, example by example."""
    from scorefast.nets import make_model
    from scorefast.objective import FixedField, Objective, ScoreGoal

    sde, data = make_sde("vp"), toy(device, n=50, d=2).float()
    model = make_model(sde, (2,), width=16, depth=2).to(device)
    t = torch.linspace(0.01, 1.0, 50, device=device)
    noise = torch.randn(50, 2, generator=torch.Generator(device=device).manual_seed(0), device=device)
    exact = Objective(model, sde, ScoreGoal(FixedField(MixtureScore(sde, data, 0.0))))(data, t, noise)
    for est in (ReferenceBatchTarget(sde, data, 50), NearestNeighbourTarget(sde, data, k=50)):
        assert torch.allclose(Objective(model, sde, ScoreGoal(est))(data, t, noise), exact, rtol=1e-4, atol=1e-6)
