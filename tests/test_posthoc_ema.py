"""EDM2's post-hoc EMA against closed forms: the gamma <-> sigma_rel conversion, the profiles' inner products,
the discrete power EMA as the integrated profile, and a reconstructed average against one tracked directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from scorefast.checkpoint import load_checkpoint
from scorefast.cli import main
from scorefast.config.schedules import EMA_PROFILES, power_gamma, power_std
from scorefast.posthoc_ema import combine, fit_profile, profile_inner
from scorefast.training.hooks import PostHocEMA
from scorefast.training.loop import TrainState
from scorefast.training.optim import EMA, posthoc_emas


@pytest.mark.parametrize("std", [0.01, 0.05, 0.1, 0.15, 0.25, 0.288])
def test_gamma_is_the_largest_root_of_edm2s_cubic_and_gives_back_its_std(std):
    s = std**-2
    roots = np.roots([1, 7, 16 - s, 12 - s])
    assert power_gamma(std) == pytest.approx(max(roots.real), rel=1e-10)
    assert power_std(power_gamma(std)) == pytest.approx(std, rel=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 6.94, 16.97])
def test_power_std_is_the_relative_standard_deviation_of_the_profile(gamma):
    tau = np.linspace(0, 1, 200_001)
    p = (gamma + 1) * tau**gamma
    mean = np.trapezoid(tau * p, tau)
    assert np.trapezoid(p, tau) == pytest.approx(1, abs=1e-6)
    assert math.sqrt(np.trapezoid((tau - mean) ** 2 * p, tau)) == pytest.approx(power_std(gamma), rel=1e-5)


def test_profile_inner_products_match_quadrature():
    tau = np.linspace(0, 900, 900_001)

    def p(t, g):
        return np.where(tau <= t, (g + 1) * np.minimum(tau, t) ** g / t ** (g + 1), 0.0)

    for (ta, ga), (tb, gb) in [((500, 6.9), (900, 16.9)), ((900, 3.0), (400, 6.9)), ((700, 16.9), (700, 6.9))]:
        assert profile_inner(ta, ga, tb, gb) == pytest.approx(np.trapezoid(p(ta, ga) * p(tb, gb), tau), rel=1e-4)
        assert profile_inner(ta, ga, tb, gb) == pytest.approx(profile_inner(tb, gb, ta, ga), rel=1e-12)


def test_the_discrete_power_ema_is_the_profile_integrated_over_each_step():
    """After n updates, step k's weights enter with weight (k^(gamma+1) - (k-1)^(gamma+1)) / n^(gamma+1)."""
    n, std = 40, 0.1
    gamma = power_gamma(std)
    model = nn.Linear(n, 1, bias=False).double()
    ema = EMA(model, EMA_PROFILES.create("power", ema_std=std))
    with torch.no_grad():
        for k in range(1, n + 1):
            model.weight.zero_()
            model.weight[0, k - 1] = 1.0  # the weights of step k are the k-th unit vector
            ema.update(model, k)
    k = torch.arange(1, n + 1, dtype=torch.float64)
    expected = (k ** (gamma + 1) - (k - 1) ** (gamma + 1)) / n ** (gamma + 1)
    torch.testing.assert_close(ema.model.weight[0], expected)


def test_a_reconstructed_average_equals_one_tracked_directly(tmp_path):
    """A tiny model trained by noisy SGD for 1,000 steps; snapshots of the 0.05 and 0.10 averages every 25 steps
    rebuild the 0.07 average (and the 0.15 one, outside the pair) as tracked directly, within a few per cent of
    how far the averages lie apart."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    direct = {s: EMA(model, EMA_PROFILES.create("power", ema_std=s)) for s in (0.07, 0.15)}
    hook = PostHocEMA(posthoc_emas(model), lambda step: tmp_path / f"net-0-{step:08d}.pt", every=25)
    state = TrainState(model, direct[0.07])
    x = torch.randn(4096, 3)
    y = torch.stack([x[:, 0] * x[:, 1], torch.sin(2 * x[:, 2])], 1)
    for step in range(1, 1001):
        idx = torch.randint(0, len(x), (16,))
        loss = (model(x[idx]) - y[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        state.step, state.final = step, step == 1000
        for ema in direct.values():
            ema.update(model, step)
        hook.step(state, {})
    stored = [load_checkpoint(p) for p in sorted(tmp_path.glob("net-0-*.pt"))]
    assert len(stored) == 40 and stored[-1]["stds"] == [0.05, 0.10]
    steps = np.repeat([s["step"] for s in stored], 2)
    stds = np.tile([0.05, 0.10], len(stored))
    spread = torch.cat([(a - b).flatten() for a, b in zip(stored[-1]["emas"][0].values(),
                                                         stored[-1]["emas"][1].values())]).norm()
    for sigma, ema in direct.items():
        fit = fit_profile(steps, stds, 1000, sigma)
        assert fit.residual < 0.02
        rebuilt = combine([s["emas"] for s in stored], fit.coefficients)
        error = torch.cat([(rebuilt[k] - v).flatten() for k, v in ema.state_dict().items()]).norm()
        assert error < 0.05 * spread, (sigma, float(error), float(spread))
    # a profile far narrower than the snapshots' spacing cannot be rebuilt, and the fit says so
    assert fit_profile(steps, stds, 1000, 0.003).residual > 0.3


def test_combine_weighs_the_averages_and_keeps_what_they_share():
    """Coefficients need not sum to one exactly: a tensor equal in every average (a buffer the EMA copies, such as
    EDM's sigma_data) is kept as it is rather than scaled."""
    states = [[{"w": torch.tensor([1.0, 2.0]), "sigma_data": torch.tensor(0.5)},
               {"w": torch.tensor([3.0, 0.0]), "sigma_data": torch.tensor(0.5)}]]
    out = combine(states, np.array([0.7, 0.32]))
    torch.testing.assert_close(out["w"], torch.tensor([0.7 + 0.96, 1.4]))
    assert out["sigma_data"] == 0.5


TINY = ["--data", "moons", "--n-data", "600", "--batch-size", "64", "--width", "16", "--eval-every", "100",
        "--eval-samples", "50", "--eval-steps", "5", "--quiet", "--threads", "1"]


def test_scorefast_ema_writes_a_new_file_that_sample_uses_and_refuses_bad_input(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "200", "--posthoc-ema-every", "20", *TINY]) == 0
    assert len(list((run / "posthoc").glob("net-0-*.pt"))) == 10
    assert main(["ema", "--run", str(run), "--sigma-rel", "0.08"]) == 0
    written = run / "ema" / "net-0-sigma0.08.pt"
    first = written.read_bytes()
    saved = load_checkpoint(written)
    assert saved["step"] == 200 and saved["residual"] < 0.05
    assert main(["sample", "--run", str(run), "--sigma-rel", "0.08", "--n", "20", "--steps", "5", "--quiet",
                 "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (20, 2)
    capsys.readouterr()

    def refused(argv, needle):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err

    refused(["ema", "--run", str(run), "--sigma-rel", "0.08"], "already exists; give --overwrite")
    assert written.read_bytes() == first
    refused(["ema", "--run", str(run), "--sigma-rel", "0.002"], "outside what the 10 snapshots")
    refused(["ema", "--run", str(run), "--sigma-rel", "0.5"], "--sigma-rel must be in (0, 0.2887)")
    refused(["sample", "--run", str(run), "--sigma-rel", "0.06", "--n", "4", "--out", str(tmp_path / "t.npy")],
            "no post-hoc EMA of sigma_rel 0.06")
    assert not (tmp_path / "t.npy").exists()
    assert main(["ema", "--run", str(run), "--sigma-rel", "0.08", "--overwrite"]) == 0
    plain = tmp_path / "plain"
    assert main(["train", "--out", str(plain), "--steps", "20", *TINY]) == 0
    capsys.readouterr()
    refused(["ema", "--run", str(plain), "--sigma-rel", "0.08"], "has no post-hoc EMA snapshots")
    assert not (plain / "ema").exists()


@pytest.mark.cpu_only
@pytest.mark.slow
def test_a_resumed_run_continues_the_tracked_averages_exactly(tmp_path):
    args = ["--posthoc-ema-every", "20", "--ckpt-every", "50", *TINY]
    assert main(["train", "--out", str(tmp_path / "a"), "--steps", "120", *args]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--steps", "70", *args]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--steps", "120", "--quiet"]) == 0
    a, b = (load_checkpoint(tmp_path / n / "posthoc" / "net-0-00000120.pt") for n in ("a", "b"))
    for mine, theirs in zip(a["emas"], b["emas"]):
        for k in mine:
            assert torch.equal(mine[k], theirs[k]), k
