"""Noise couplings: the assignment is an optimal permutation, it lowers the pairing cost, the independent
coupling changes nothing, what a coupled path invalidates is refused in one line, and training runs with each."""

import dataclasses
import itertools
import json
import math

import pytest
import torch

import scorefast
from scorefast.cli import main
from scorefast.config import Config
from scorefast.couplings import COUPLINGS, MAX_BATCH, PROBABILITY_FLOW_SAMPLERS, assign
from scorefast.errors import UserError
from scorefast.nets import make_model
from scorefast.objective import Objective
from scorefast.registry import help_of
from scorefast.sampling import SAMPLERS
from scorefast.sde import make_sde

COUPLED = [name for name in COUPLINGS.names() if COUPLINGS.get(name).coupled]


def pairs(n: int, d: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    x0 = torch.randn(n, d, generator=g, device=device) * 0.3 + 2.0 * torch.randint(0, 2, (n, 1), generator=g,
                                                                                     device=device)
    return x0, torch.randn(n, d, generator=g, device=device)


def test_every_registered_coupling_is_listed_in_the_flag_help():
    field = next(f for f in dataclasses.fields(Config().objective) if f.name == "coupling")
    assert all(f"{name} ({COUPLINGS.help(name)})" in help_of(field) for name in COUPLINGS.names())
    assert set(COUPLED) == {"minibatch-ot", "immiscible"}


@pytest.mark.parametrize("name", COUPLED)
def test_the_assignment_is_a_permutation_of_the_draws(name, device):
    x0, z = pairs(257, 3, 0, device)
    out = COUPLINGS.create(name)(x0, z)
    assert out.shape == z.shape and out.device == z.device
    # every draw used exactly once: the noise marginal is kept
    assert torch.equal(out[out[:, 0].argsort()], z[z[:, 0].argsort()])
    perm = assign(torch.cdist(x0, z))
    assert torch.equal(perm.sort().values, torch.arange(257, device=device))


def test_minibatch_ot_is_the_best_of_all_permutations(device):
    """Six pairs: the assignment's squared cost is the minimum over all 720 permutations (checked one by one)."""
    x0, z = pairs(6, 2, 1, device)
    out = COUPLINGS.create("minibatch-ot")(x0, z)
    cost = torch.cdist(x0, z) ** 2
    best = min(float(cost[torch.arange(6), list(p)].sum()) for p in itertools.permutations(range(6)))
    assert float((x0 - out).pow(2).sum()) == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("name, power", [("minibatch-ot", 2), ("immiscible", 1)])
def test_the_coupling_lowers_the_mean_pairing_cost(name, power, device):
    x0, z = pairs(512, 2, 2, device)
    independent = (x0 - z).norm(dim=1).pow(power).mean()
    coupled = (x0 - COUPLINGS.create(name)(x0, z)).norm(dim=1).pow(power).mean()
    assert coupled < 0.8 * independent


@pytest.mark.parametrize("name", COUPLED)
def test_a_batch_above_the_limit_is_refused_in_one_line(name):
    big = torch.zeros(MAX_BATCH + 1, 1)
    with pytest.raises(UserError, match=f"at most {MAX_BATCH}") as err:
        COUPLINGS.create(name)(big, big)
    assert "\n" not in str(err.value)


def test_the_independent_coupling_changes_nothing_bitwise(device):
    sde = make_sde("vp")
    torch.manual_seed(0)
    model = make_model(sde, (2,), width=16, depth=1).to(device)
    x0, _ = pairs(64, 2, 3, device)
    plain = Objective(model, sde)
    coupled = Config(recipe="plain").objective.build(model, sde, plain.goal, plain.times, plain.weighting)
    assert coupled.coupling.name == "independent"
    for seed in range(3):
        torch.manual_seed(seed)
        want = plain(x0)
        torch.manual_seed(seed)
        assert torch.equal(coupled(x0), want)


def test_a_coupled_objective_perturbs_with_the_assigned_noise(device):
    sde = make_sde("ve")
    torch.manual_seed(0)
    model = make_model(sde, (2,), width=16, depth=1).to(device)
    x0, _ = pairs(64, 2, 4, device)
    objective = Objective(model, sde, coupling=COUPLINGS.create("minibatch-ot"))
    torch.manual_seed(5)
    ours = objective(x0)
    torch.manual_seed(5)
    t = objective.times(64, device)
    z = COUPLINGS.create("minibatch-ot")(x0, torch.randn_like(x0))
    assert torch.equal(ours, Objective(model, sde)(x0, t, z))


@pytest.mark.parametrize("flags, match", [
    ({"sampler": "em"}, "SDE sampler 'em'"),
    ({"sampler": "pc"}, "SDE sampler 'pc'"),
    ({"sampler": "euler-a"}, "SDE sampler 'euler-a'"),
    ({"T": 0.5}, "prior fitted to the forward marginal at T"),
    ({"prior": "gaussian"}, "prior fitted to the forward marginal at T"),
    ({"batch_size": MAX_BATCH + 1}, f"at most {MAX_BATCH}"),
])
@pytest.mark.parametrize("name", COUPLED)
def test_what_a_coupling_invalidates_is_refused_in_one_line(name, flags, match):
    with pytest.raises(UserError, match=match) as err:
        Config(coupling=name, **flags).validate()
    assert "\n" not in str(err.value) and f"--coupling {name}" in str(err.value)
    Config(**flags).validate()  # the same flags with the independent coupling are fine


def test_the_probability_flow_samplers_are_allowed_and_are_samplers():
    assert set(PROBABILITY_FLOW_SAMPLERS) <= set(SAMPLERS)
    for sampler in PROBABILITY_FLOW_SAMPLERS:
        Config(coupling="immiscible", sampler=sampler).validate()


def test_the_command_line_refuses_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", "moons", "--out", str(out), "--coupling", "minibatch-ot", "--sampler", "em",
                 "--steps", "5", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--coupling minibatch-ot" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["train", "--data", "moons", "--out", str(out), "--coupling", "sinkhorn", "--quiet"]) == 2
    assert "minibatch-ot" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("name", COUPLINGS.names())
def test_a_tiny_run_trains_with_each_coupling(name, tmp_path):
    out = tmp_path / name
    summary = scorefast.train(Config(data="moons", n_data=400, out=str(out), steps=30, batch_size=64, width=16,
                                     depth=1, coupling=name, recipe="plain", eval_every=1000, eval_samples=200,
                                     eval_steps=10), progress=False)
    assert summary["steps"] == [30] and math.isfinite(summary["metric"])
    assert json.loads((out / "config.json").read_text())["config"]["objective"]["coupling"] == name
    assert (out / "samples.npy").exists()
    run = scorefast.open_run(out)
    assert run.sample(20, sampler="dpmpp-2m", steps=5, progress=False).shape == (20, 2)
    if COUPLINGS.get(name).coupled:
        with pytest.raises(UserError, match="SDE sampler 'em'"):
            run.sample(20, sampler="em", steps=5, progress=False)
    else:
        assert run.sample(20, sampler="em", steps=5, progress=False).shape == (20, 2)


def test_sweep_T_refuses_a_coupling_before_writing(tmp_path, capsys):
    """The sweep chooses T by the ELBO, which assumes the forward SDE: refused even for T = 1 alone."""
    out = tmp_path / "sweep"
    assert main(["sweep-T", "--data", "moons", "--T", "1.0", "--coupling", "immiscible", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--coupling immiscible" in err and "ELBO" in err and len(err.splitlines()) == 1
    assert not out.exists()
