"""The bench's base recipe (what every method and control starts from), the noise-coupling scenarios beside
the baseline that is their control, and the presets that measure the methods on the digits U-Net."""

import pytest
import torch

from scorefast import Config
from scorefast.bench import PRESETS, SCENARIOS, Selection
from scorefast.bench.command import command_of, make_study
from scorefast.bench.options import BenchOptions
from scorefast.bench.report import Tables
from scorefast.bench.runs import Part
from scorefast.bench.scenarios import Setting
from scorefast.bench.study import Budget, Study
from scorefast.config.recipes import DEFAULT_RECIPE, data_defaults
from scorefast.errors import UserError

DIGITS = Part("digits", None, 64, "image", 1797)
NOT_BASELINES = [name for name, sc in SCENARIOS.items() if sc.role != "baseline"
                 and sc.group not in ("recipes", "couplings")]


def on(recipe: str, **base) -> Setting:
    return Setting({"data": "digits", **base}, dim=64, T=0.6, recipe=recipe, kind="image")


@pytest.mark.parametrize("name", NOT_BASELINES)
def test_on_the_plain_base_every_method_and_control_trains_the_plain_recipe(name):
    assert SCENARIOS[name].flags(on("plain"))["recipe"] == "plain"


@pytest.mark.parametrize("name", NOT_BASELINES)
def test_on_the_default_base_no_method_or_control_names_a_recipe(name):
    flags = SCENARIOS[name].flags(on(DEFAULT_RECIPE))
    assert "recipe" not in flags
    assert Config(**{"data": "digits", **flags}).net.param == "edm"  # the default recipe's image part stays


def test_batch_controls_double_the_base_recipes_image_batch():
    """The default recipe trains images at batch 256, plain at the trainer's 512; a study's own batch wins."""
    assert SCENARIOS["batch-2x"].flags(on(DEFAULT_RECIPE))["batch_size"] == 512
    assert SCENARIOS["batch-4x"].flags(on(DEFAULT_RECIPE))["batch_size"] == 1024
    assert SCENARIOS["batch-2x"].flags(on("plain"))["batch_size"] == 1024
    assert SCENARIOS["batch-2x"].flags(on(DEFAULT_RECIPE, batch_size=64))["batch_size"] == 128


def test_one_network_control_keeps_the_allocation_of_two_intervals_on_the_default_base():
    """On the default recipe intervals-2 splits the log-normal noise levels at their median, each network
    drawing from its half: one network drawing from the whole log-normal at twice the batch has the same
    allocation (half of its draws below the edge, the normal CDF at the mean: 0.5)."""
    setting = on(DEFAULT_RECIPE)
    control = Config(**{"data": "digits", **SCENARIOS["one-net-allocation"].flags(setting)})
    intervals = Config(**{"data": "digits", **SCENARIOS["intervals-2"].flags(setting)})
    sde = control.sde.build()
    edge = intervals.edges(sde)[1]
    assert control.time_sampler.name == intervals.time_sampler.name == "lognormal"
    assert control.optim.batch_size == 2 * intervals.optim.batch_size == 512
    t = torch.tensor([sde.eps, edge, sde.T], dtype=torch.float64)
    cdf = control.time_sampler.cdf(sde, t)
    assert float((cdf[1] - cdf[0]) / (cdf[2] - cdf[0])) == pytest.approx(0.5, abs=1e-6)
    plain = SCENARIOS["one-net-allocation"].flags(on("plain"))
    assert plain["time_sampler"] == "bins" and plain["time_shares"] == "0.5,0.5"


def test_t1_downweighted_sets_its_own_time_sampler_on_the_default_base():
    cfg = Config(**{"data": "digits", **SCENARIOS["t1-downweighted"].flags(on(DEFAULT_RECIPE))})
    assert (cfg.sde.T, cfg.time_sampler.name, cfg.time_sampler.time_edges) == (1.0, "bins", "0.6")


def test_a_coupling_is_controlled_by_the_baseline_that_trains_its_base():
    for name in ("coupling-minibatch-ot", "coupling-immiscible"):
        sc = SCENARIOS[name]
        assert sc.flags(on(DEFAULT_RECIPE)) == {"coupling": name.removeprefix("coupling-")}
        assert sc.controls_on(on(DEFAULT_RECIPE)) == ("default",)
        assert sc.controls_on(on("plain")) == ()  # plain is every method's reference already
        assert sc.controls_on(on("edm")) == ("recipe-edm",)
    assert Selection.parse("couplings").names == ["plain", "default", "coupling-minibatch-ot", "coupling-immiscible"]


def test_a_study_names_the_baseline_as_the_couplings_control_and_runs_it_once():
    study = Study(data=("digits",), methods=tuple(Selection.parse("coupling-immiscible").names),
                  budget=Budget.parse("40steps"), seeds=1, base_recipe=DEFAULT_RECIPE)
    variants = {v.name: v for v in study.variants(DIGITS)}
    assert list(variants) == ["plain", "default", "coupling-immiscible"]
    assert variants["coupling-immiscible"].controls == ("default",)
    edm = Study(data=("digits",), methods=("plain", "default", "coupling-immiscible"), budget=Budget.parse("40steps"),
                base_recipe="edm")
    with pytest.raises(UserError, match="need its own scenario recipe-edm"):
        edm.validate()
    with pytest.raises(UserError, match="unknown --base-recipe 'fastest'; choose one of"):
        Study(data=("digits",), methods=("plain",), budget=Budget.parse("40steps"), base_recipe="fastest").validate()


def row(variant, scenario, seed, pairs, controls=None):
    r = {"data": "d", "variant": variant, "scenario": scenario, "role": SCENARIOS[scenario].role, "seed": seed,
         "status": "ok", "hash": f"{variant}{seed}",
         "curve": {"points": [{"step": i, "wall": w, "nll": v, "metric": v} for i, (w, v) in enumerate(pairs)],
                   "nll_key": "bpd", "metric_name": "fd_digits", "T": 1.0}}
    return r if controls is None else {**r, "controls": controls}


def test_the_report_judges_a_coupling_against_the_baseline_its_study_named():
    rows = []
    for s in range(3):
        rows += [row("plain", "plain", s, [(1, 5), (2, 4), (4, 3)]), row("default", "default", s, [(1, 4), (2, 3)]),
                 row("coupling-immiscible", "coupling-immiscible", s, [(1, 4), (3, 3)], ["default"])]
    table = Tables(rows).table("d", "couplings")
    assert [r["variant"] for r in table["rows"]] == ["plain", "coupling-immiscible", "default"]
    # plain reaches 3 at 4 s, default at 2 s, the coupling at 3 s: 0.75x plain, 1.5x its control on every seed
    assert table["sentences"] == ["**coupling-immiscible** against plain: helps: 0.75x time to target (3 seeds); "
                                  "against default: slower: 1.50x time to target (3 seeds)."]


def test_the_image_method_presets_start_from_the_default_recipe():
    cpu = make_study(BenchOptions(preset="readme-images-methods-cpu"))
    assert (cpu.data, cpu.T, str(cpu.budget), cpu.seeds, cpu.base_recipe) == (("digits",), (0.6,), "600steps", 3,
                                                                             DEFAULT_RECIPE)
    assert set(cpu.methods) == {"plain", "default", "trunc-gaussian", "t1-downweighted", "intervals-2",
                                "one-net-allocation", "empirical", "batch-2x", "coupling-minibatch-ot",
                                "coupling-immiscible"}
    assert cpu.evaluation == make_study(BenchOptions(preset="readme-images-cpu")).evaluation
    gpu = make_study(BenchOptions(preset="readme-images-methods"))
    assert (gpu.data, gpu.methods, gpu.protocol.metric, str(gpu.budget)) == (("digits", "mnist"), cpu.methods, "fid",
                                                                            "2000steps")
    assert {name: PRESETS[name].data for name in ("readme-recipe", "readme-truncation", "readme-parallel")} == {
        "readme-recipe": ("checkerboard", "8gaussians", "sharpbroad"), "readme-truncation": ("offcentre",),
        "readme-parallel": ("checkerboard", "8gaussians")}


def test_the_mnist_preset_trains_every_recipe_at_the_size_train_gives_mnist():
    """readme-images-mnist-cpu times what `scorefast train --data mnist` trains: mnist's own steps and batch for
    plain, the default recipe and EDM's (whose own batch would otherwise differ)."""
    study = make_study(BenchOptions(preset="readme-images-mnist-cpu"))
    own = data_defaults("mnist", {})
    (part,) = study.parts()
    variants = study.variants(part)
    assert (part.spec, str(study.budget), study.seeds) == ("mnist", f"{own['steps']}steps", 3)
    assert {v.name for v in variants} == {"plain", "default", "recipe-edm"}
    configs = [Config(part.kind, **v.flags) for v in variants]
    assert {(c.optim.batch_size, c.budget.steps) for c in configs} == {(own["batch_size"], own["steps"])}
    assert study.protocol.samples < make_study(BenchOptions(preset="readme-images-cpu")).protocol.samples


def test_a_base_recipe_given_on_the_command_line_is_in_the_command_that_makes_the_study_again():
    study = make_study(BenchOptions(data="moons", methods="empirical", base_recipe=DEFAULT_RECIPE))
    assert study.base_recipe == DEFAULT_RECIPE and f"--base-recipe {DEFAULT_RECIPE}" in command_of(study, "x")
    assert "--base-recipe" not in command_of(make_study(BenchOptions(preset="readme-images-methods-cpu")), "x")
    assert make_study(BenchOptions(data="moons", methods="empirical")).base_recipe == "plain"
