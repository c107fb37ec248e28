"""The registries and the configuration: selection, round trips, config files, bad input."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from scorefast.config import FLAGS, SECTIONS, SELECTORS, SLOTS, Config, read_config_file, to_toml
from scorefast.errors import UserError
from scorefast.registry import Plugin, Registry, coerce, option


def test_registry_keeps_names_beside_classes_and_refuses_bad_use():
    reg = Registry("gadget", flag="gadget")

    @reg.register("plain")
    @dataclasses.dataclass
    class Plain(Plugin):
        size: int = option(3, "how big")

    assert reg.names() == ["plain"] and Plain.name == "plain" and "plain" in reg
    assert reg.create("plain", size="5").size == 5
    with pytest.raises(UserError, match="unknown --gadget 'fancy'; choose one of plain"):
        reg.get("fancy")
    with pytest.raises(UserError, match="has no option"):
        reg.create("plain", colour="red")
    with pytest.raises(UserError, match="--size expects int"):
        reg.create("plain", size="big")
    with pytest.raises(ValueError, match="twice"):
        reg.register("plain")(Plain)
    with pytest.raises(TypeError, match="dataclass"):
        reg.register("other")(type("Other", (Plugin,), {}))


def test_every_flag_has_help_and_one_home():
    assert set(SELECTORS) == {"method", "prior", "time_sampler", "weighting", "ema_profile", "lr_schedule"}
    for name, spec in FLAGS.items():
        assert spec.help and name not in SELECTORS
        assert all(f.metadata["help"] for _, f in spec.owners)


def test_help_texts_name_every_registered_choice():
    """The help of every flag whose values come from a registry lists each registered name with its help, as
    `scorefast train --help` prints it (argparse wraps lines)."""
    from scorefast.choices import DATASETS, SAMPLERS
    from scorefast.cli import build_parser

    sub = next(a for a in build_parser("train")._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: " ".join(a.help.replace("%%", "%").split()) for a in sub.choices["train"]._actions if a.help}
    registries = {flag: spec.owners[0][1].metadata["choices"] for flag, spec in FLAGS.items()}
    registries = {flag: reg for flag, reg in registries.items() if isinstance(reg, Registry)}
    assert {"sampler", "schedule", "sde", "param", "net_preset", "recipe", "coupling"} <= set(registries)
    for flag, reg in registries.items():
        assert all(f"{name} ({reg.help(name)})" in helps[flag] for name in reg), flag
    for flag, slot in SELECTORS.items():
        assert all(name in helps[flag] for name in SLOTS[slot]), flag
    assert all(f"{name} ({DATASETS.help(name)})" in helps["data"] for name in DATASETS)
    for reg in (DATASETS, SAMPLERS):
        assert reg.names() and len(set(reg.names())) == len(reg.names())


def test_every_declared_name_is_implemented_by_its_module():
    from scorefast import choices

    declared = [reg for reg in vars(choices).values() if isinstance(reg, Registry) and reg.module]
    assert len(declared) == 4
    for reg in declared:
        assert all(reg[name] is not None for name in reg), reg.slot
    with pytest.raises(ValueError, match="not declared"):
        choices.SAMPLERS.add("magic", print)


@pytest.mark.parametrize("flags, message", [
    ({"lr": "0"}, "configuration: --lr must be > 0, got 0.0"),
    ({"eval_budget": 1.5}, "--eval-budget must be <= 1, got 1.5"),
    ({"batch_size": 0}, "--batch-size must be >= 1, got 0"),
    ({"eps": 0.5}, "--eps must be < 0.1, got 0.5"),
    ({"T": 2}, "--T must be <= 1.0, got 2.0"),
    ({"adam_beta2": float("nan")}, "--adam-beta2 must be a finite number, got nan"),
    ({"sampler": "magic"}, "unknown --sampler 'magic'; choose one of ode, em, pc, dpmpp-2m, heun, euler-a$"),
    ({"precision": "fp8"}, "unknown --precision 'fp8'; choose one of fp32, bf16$"),
    ({"net_preset": "imagenet"}, "unknown --net-preset 'imagenet'; choose one of cifar10$"),
])
def test_option_bounds_and_choices_are_one_coercion_with_one_line(flags, message):
    with pytest.raises(UserError, match=message) as caught:
        Config(**flags)
    assert "\n" not in str(caught.value)
    cfg = Config()
    field = next(f for f in dataclasses.fields(cfg.optim) if f.name == "lr")
    cfg.optim.lr = -1.0  # set behind the coercion's back: validate applies the same rule
    with pytest.raises(UserError, match="^--lr must be > 0, got -1.0$"):
        cfg.validate()
    assert field.metadata["above"] == 0


def test_a_tuple_or_list_option_reads_its_items_by_their_declared_type_and_bounds():
    """A tuple field's items are of its declared item type (text split at commas, or a list) and each is held to
    the field's bounds; a list field is a repeatable flag, each value as given."""
    @dataclasses.dataclass
    class Options:
        times: tuple[float, ...] | None = option(None, "end times", above=0)
        names: tuple[str, ...] | None = option(None, "names")
        items: list[str] | None = option(None, "repeatable", flag="item")

    times, names, items = dataclasses.fields(Options)
    assert coerce(Options, times, "0.2, 0.4", "here") == (0.2, 0.4) == coerce(Options, times, [0.2, 0.4], "here")
    assert coerce(Options, names, "moons, digits", "here") == ("moons", "digits")
    assert coerce(Options, items, "a=1,2", "here") == ["a=1,2"] and coerce(Options, items, ["a", "b"], "here") == \
        ["a", "b"]
    for field, value, message in [(times, "0.2,0", "^here: --times must be > 0, got 0.0$"),
                                  (times, "0.2,late", "^here: --times expects comma-separated numbers, got '0.2,l"),
                                  (names, [1, 2], "--names expects comma-separated names"),
                                  (items, [3], "--item expects strings")]:
        with pytest.raises(UserError, match=message):
            coerce(Options, field, value, "here")


def test_the_configuration_is_resolved_once_with_the_kind_of_its_data(tmp_path):
    """A recipe's defaults by kind apply from the start: a built-in set's kind from its name, a file's from its
    header, without reading the data (this .npy declares a million 8x8 images and holds none of them)."""
    import numpy as np
    header_only, points = tmp_path / "header-only.npy", tmp_path / "points.npz"
    with open(header_only, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 1, 8, 8)})
    np.savez(points, x=np.zeros((5, 2), np.float32))
    (tmp_path / "folder").mkdir()
    image_defaults, points_defaults = ("lognormal", "edm", 256), ("adaptive", "eps", 512)
    for spec, kind, defaults in [("moons", "points", points_defaults), ("digits", "image", image_defaults),
                                 (header_only, "image", image_defaults), (points, "points", points_defaults),
                                 (tmp_path / "folder", "image", image_defaults),
                                 (tmp_path / "missing.npy", None, ("uniform", "eps", 512))]:
        cfg = Config(data=str(spec))
        assert (cfg.data_kind, cfg.time_sampler.name, cfg.net.param, cfg.optim.batch_size) == (kind, *defaults)
    moved = Config(data="moons", steps=5).replace(data=str(header_only))
    assert (moved.data_kind, moved.time_sampler.name, moved.budget.max_steps) == ("image", "lognormal", 5)
    assert Config(data="moons", time_sampler="uniform").time_sampler.name == "uniform"  # a flag given wins


@pytest.mark.parametrize("content, needle", [
    (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4', 'fort", "cannot be read as a .npy file"),
    (b"NUMPY but not its magic", "cannot be read as a .npy file (bad header)"),
    (b"\x93NUMPY\x07\x00", ".npy format version 7.0 is not supported"),
])
def test_a_damaged_npy_header_is_one_line_naming_the_file(tmp_path, content, needle):
    bad = tmp_path / "damaged.npy"
    bad.write_bytes(content)
    with pytest.raises(UserError) as err:
        Config(data=str(bad))
    assert needle in str(err.value) and f"data file '{bad}'" in str(err.value) and "\n" not in str(err.value)


def test_plain_registries_hold_any_object_with_its_help():
    reg = Registry("colour", flag="colour", title="colours", default="red")
    reg.add("red", (255, 0, 0), "the colour of blood", warm=True)
    reg.declare("blue", "the colour of the sky", warm=False)
    assert reg["red"] == (255, 0, 0) and reg["blue"] is None and list(reg) == ["red", "blue"]
    assert reg.names(warm=True) == ["red"]
    assert reg.listing() == "red (the colour of blood), blue (the colour of the sky)"
    with pytest.raises(ValueError, match="declared twice"):
        reg.declare("blue", "again")
    with pytest.raises(UserError, match="^unknown --colour 'green'; choose one of red, blue$"):
        reg["green"]
    from scorefast.methods.fokker_planck import MAX_DIM
    from scorefast.methods.targets import MAX_GRID_DIM
    assert MAX_GRID_DIM == MAX_DIM


def test_flags_select_plugins_and_options_belong_to_them():
    cfg = Config(method="empirical", reference_size=64, prior="gmm", prior_components=3, intervals=3,
                 partition="equal", T=0.5)
    assert (cfg.target.name, cfg.target.reference_size) == ("empirical", 64)
    assert (cfg.prior.name, cfg.prior.prior_components) == ("gmm", 3)
    assert (cfg.partition.name, cfg.partition.intervals, cfg.partition.partition) == ("intervals", 3, "equal")
    assert Config(intervals=1).partition.name == "single"
    assert Config(edges="0,0.2,1").partition.name == "edges"
    assert Config(per_time_point=4).partition.name == "per-time-point"
    for flags, needle in [({"fp_grid": 65}, "--fp-grid is an option of target fp-regress, fp-embed"),
                          ({"reference_size": 8, "method": "fp-regress"}, "--reference-size"),
                          ({"prior_steps": 10, "prior": "gaussian"}, "--prior-steps"),
                          ({"partition": "equal"}, "--partition is an option of partition intervals"),
                          ({"warm_start": 5}, "--warm-start"),
                          ({"edges": "0,0.5,1", "intervals": 4}, "only one of the partition flags"),
                          ({"method": "magic"}, "unknown --method 'magic'"),
                          ({"colour": "red"}, "unknown configuration key")]:
        with pytest.raises(UserError, match=needle):
            Config(**flags)


def test_time_budget_alone_means_no_step_cap_in_the_api_too():
    assert Config(time_budget=30).budget.max_steps is None
    assert Config().budget.max_steps == 2000
    assert Config(time_budget=30, steps=50).budget.max_steps == 50


@pytest.mark.parametrize("flags", [
    {},
    {"data": "digits", "width": 64, "method": "empirical", "reference_size": 256, "bandwidth": 0.1},
    {"T": 0.4, "prior": "flow", "prior_steps": 300, "prior_fit": "before", "time_budget": 12.5},
    {"edges": "0,0.02,0.1,1", "warm_start": 100, "workers": 2, "threads": 1},
    {"per_time_point": 5, "sde": "vp-psm", "weighting": "likelihood", "grad_clip": 0.0},
    {"data": "digits32", "channel_mults": (1, 2, 2), "attention": (16,), "dropout": 0.1, "net_preset": "cifar10"},
])
def test_round_trips_flags_config_json_toml(flags, tmp_path):
    cfg = Config(out="runs/x", **flags)
    again = Config(**cfg.flags())
    assert again == cfg
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path / "run.toml"
    path.write_text(to_toml(cfg))
    assert Config(**read_config_file(path)) == cfg
    jpath = tmp_path / "run.json"
    jpath.write_text(json.dumps(cfg.flags()))
    assert Config(**read_config_file(jpath)) == cfg


def test_config_files_refuse_unknown_keys_and_wrong_types(tmp_path):
    cases = {"[optim]\nlr = 0.01\ncolour = 1\n": "unknown key 'colour' in [optim]",
             "[optimiser]\nlr = 0.01\n": "unknown section",
             "[optim]\nsteps = 10\n": "unknown key 'steps' in [optim]",
             "steps = 'many'\n": "--steps expects int",
             "steps = 1.5\n": "--steps expects int",
             "lr = true\n": "--lr expects float",
             "nosuch = 1\n": "unknown key 'nosuch'",
             "steps = [\n": "cannot be read"}
    for text, needle in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")) as err:
            read_config_file(path)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        read_config_file(tmp_path / "none.toml")


def test_from_dict_refuses_other_shapes():
    good = Config().to_dict()
    for bad, needle in [([], "mapping of sections"), ({"optim": 3}, "must be a mapping"),
                        ({**good, "colour": {}}, "unknown section"),
                        ({**good, "net": {**good["net"], "width": "wide"}}, "--width expects int"),
                        ({**good, "target": {"name": "nope"}}, "unknown --method")]:
        with pytest.raises(UserError, match=needle):
            Config.from_dict(bad)


@pytest.mark.parametrize("flags, needle", [
    ({"sde": "vp-foo"}, "unknown --sde 'vp-foo'"),
    ({"grad_clip": -1.0}, "--grad-clip"),
    ({"width": 0}, "--width must be >= 1"),
    ({"depth": -2}, "--depth must be >= 1"),
    ({"time_budget": float("nan")}, "finite"),
    ({"time_budget": float("inf")}, "finite"),
    ({"per_time_point": 0}, "--per-time-point must be >= 1"),
    ({"method": "fp-embed", "per_time_point": 3}, "per-time-point"),
    ({"weighting": "cosine"}, "--weighting"),
    ({"sampler": "magic"}, "--sampler"),
])
def test_validation_catches_values_that_would_run_wrongly(flags, needle):
    with pytest.raises(UserError, match=needle):
        Config(**flags).validate()


def test_sections_and_slots_cover_the_config():
    cfg = Config()
    assert set(cfg.to_dict()) == set(SECTIONS) | set(SLOTS)


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, time; t = time.perf_counter(); from scorefast.cli import build_parser; "
            "build_parser('train').format_help(); build_parser().format_help(); "
            "print(time.perf_counter() - t, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"


# -- the config readers fuzzed (hypothesis): a valid configuration or one UserError, nothing else --------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                       | st.text(max_size=12), lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
KNOWN = sorted({*FLAGS, *SELECTORS, *SECTIONS, *SLOTS, "name"})
FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def mutated_config(draw_dict: dict, edits: list) -> dict:
    """A valid nested configuration with some values replaced, sections dropped or keys added."""
    base = Config(method="empirical", intervals=2, prior="gmm", T=0.5).to_dict()
    for section, key, value in edits:
        target = base.setdefault(section, {}) if isinstance(base.get(section, {}), dict) else {}
        target[key] = value
    base.update(draw_dict)
    return base


@FUZZ
@given(st.dictionaries(st.sampled_from(KNOWN), JSONISH, max_size=3),
       st.lists(st.tuples(st.sampled_from(KNOWN), st.sampled_from(KNOWN), JSONISH), max_size=4))
def test_from_dict_accepts_or_gives_one_user_error(extra, edits):
    try:
        cfg = Config.from_dict(mutated_config(extra, edits))
        cfg.validate()
    except UserError as err:
        assert "\n" not in str(err)


@FUZZ
@given(st.dictionaries(st.sampled_from(KNOWN) | st.text(max_size=8), JSONISH, max_size=6))
def test_config_files_give_flags_or_one_user_error(tmp_path_factory, table):
    path = tmp_path_factory.mktemp("fuzz") / "run.json"
    path.write_text(json.dumps(table))
    try:
        Config(**read_config_file(path)).validate()
    except UserError as err:
        assert "\n" not in str(err)
