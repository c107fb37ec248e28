"""A built-in data set's own run (``config.recipes.data_defaults``): mnist's applies as a whole when no run size is
given, flag by flag under the flags given; every other data set keeps the recipe's defaults."""

from __future__ import annotations

import json

import pytest

from scorefast.choices import DATASETS, MNIST_FID, MNIST_RUN
from scorefast.config import FLAGS, Config
from scorefast.config.recipes import FAST
from scorefast.config.sections import BudgetSection, LogSection, OptimSection


def test_mnist_without_a_run_size_takes_its_own_and_records_it():
    cfg = Config(data="mnist")
    assert (cfg.budget.max_steps, cfg.optim.batch_size, cfg.log.eval_every, cfg.log.eval_samples) == \
        (600, 64, 600, 500) == tuple(MNIST_RUN.values())
    assert not {"steps", "batch_size"} & cfg.given
    written = cfg.to_dict()  # what config.json holds
    assert written["budget"]["steps"] == 600 and written["optim"]["batch_size"] == 64
    assert Config.from_dict(json.loads(json.dumps(written))) == cfg


@pytest.mark.parametrize("flags, steps, batch", [
    ({"steps": 3000}, 3000, FAST.by_kind["image"]["batch_size"]),
    ({"batch_size": 32}, BudgetSection.DEFAULT_STEPS, 32),
    ({"time_budget": 60.0}, None, FAST.by_kind["image"]["batch_size"]),  # no step cap under a time budget
    ({"steps": 3000, "recipe": "plain"}, 3000, OptimSection.batch_size),
])
def test_a_run_size_given_drops_all_of_mnists_run(flags, steps, batch):
    cfg = Config(data="mnist", **flags)
    assert (cfg.budget.max_steps, cfg.optim.batch_size) == (steps, batch)
    other = Config(data="digits", **flags)  # another image set under the same flags: the recipe's evaluation
    assert (cfg.log.eval_every, cfg.log.eval_samples) == (other.log.eval_every, other.log.eval_samples)
    assert cfg.log.eval_every == LogSection.eval_every


def test_flags_given_win_over_mnists_run_one_by_one():
    cfg = Config(data="mnist", eval_every=100, eval_samples=300)
    assert (cfg.budget.max_steps, cfg.optim.batch_size, cfg.log.eval_every, cfg.log.eval_samples) == (600, 64, 100, 300)


@pytest.mark.parametrize("data", [name for name in DATASETS if name != "mnist"])
def test_every_other_data_set_keeps_the_recipes_defaults(data):
    cfg, plain = Config(data=data), Config(data=data, recipe="plain")
    assert cfg.budget.steps is None and cfg.budget.max_steps == BudgetSection.DEFAULT_STEPS
    assert plain.optim.batch_size == OptimSection.batch_size
    assert cfg.optim.batch_size == FAST.defaults(DATASETS.tag(data, "kind")).get("batch_size", OptimSection.batch_size)


def test_the_help_of_data_says_mnists_defaults():
    text = FLAGS["data"].help
    assert f"{MNIST_RUN['steps']} steps of batch {MNIST_RUN['batch_size']}" in text
    assert f"standard FID of {MNIST_FID}" in text and "--time-budget" in text
