"""scorefast bench: the study runner (reuse by hash, failures as rows, independent seeds), the verdict rule,
the wall-clock of interval runs, the controls' flags, bad input, and one --quick-sized run through the CLI."""

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import scorefast.training.recipe as recipe
from scorefast import Config
from scorefast.bench import PRESETS, SCENARIOS, Selection, get_preset
from scorefast.bench.command import command_of, make_study
from scorefast.bench.curves import TIMING, Protocol, launch_seconds, run_wall, spread
from scorefast.bench.options import BenchOptions
from scorefast.bench.report import Tables, markdown, spread3, time_ratio, verdict
from scorefast.bench.runs import Part, config_hash, error_text
from scorefast.bench.scenarios import Setting
from scorefast.bench.study import Budget, Study, open_folder, run_study
from scorefast.cli import main
from scorefast.errors import UserError
from scorefast.evaluate import time_to

TINY = Protocol(nll_n=50, nll_steps=4, samples=100, sample_steps=4, points=2)


def tiny_study(**kw) -> Study:
    """Two baselines and DSM at 4x batch, which cannot train on 240 points at batch 4 x 64 (a failing variant)."""
    args = dict(data=("moons",), methods=("plain", "default", "batch-4x"), budget=Budget.parse("40steps"), seeds=2,
                n_data=(300,), snapshot_every=20, threads=1, evaluation=TINY,
                settings={"width": 16, "depth": 2, "batch_size": 64})
    return Study(**{**args, **kw})


@pytest.fixture
def counted(monkeypatch):
    """The configurations that reach the trainer."""
    calls = []
    train = recipe.train

    def counting(cfg, **kw):
        calls.append(cfg)
        return train(cfg, **kw)
    monkeypatch.setattr(recipe, "train", counting)
    return calls


@pytest.mark.slow
def test_study_reuses_by_hash_records_failures_and_keeps_seeds_independent(tmp_path, counted):
    rows = run_study(tiny_study(), tmp_path, say=lambda s: None)
    by = {(r["variant"], r["seed"]): r for r in rows}
    # 'default' is the fast recipe, not plain's configuration: its own hash, trained once per seed like plain
    assert by["default", 0]["hash"] != by["plain", 0]["hash"] and not by["default", 0]["reused"]
    trained = sorted((c.recipe.name, c.optim.seed) for c in counted if c.optim.batch_size == 64)
    assert trained == [("fast", 0), ("fast", 1), ("plain", 0), ("plain", 1)]
    for seed in (0, 1):
        failed = by["batch-4x", seed]
        assert failed["status"] == "failed" and "--batch-size 256 is larger than the 240 training examples" in \
            failed["error"]
    # seeds are independent runs: the configurations differ in the seed only, and so do the curves
    a, b = (Config.from_dict(json.loads((tmp_path / "runs" / by["plain", s]["hash"] / "config.json").read_text())
                             ["config"]) for s in (0, 1))
    assert by["plain", 0]["hash"] != by["plain", 1]["hash"]
    assert {k for k, v in a.flags().items() if b.flags()[k] != v} == {"seed", "out"}
    assert by["plain", 0]["curve"]["points"][-1]["nll"] != by["plain", 1]["curve"]["points"][-1]["nll"]
    assert [p["step"] for p in by["plain", 0]["curve"]["points"]] == [20, 40]
    # again with a third seed: the finished runs are reused (nothing of them trained or deleted), seed 2 trains
    stamp = (tmp_path / "runs" / by["plain", 0]["hash"] / "summary.json").stat().st_mtime_ns
    counted.clear()
    again = run_study(tiny_study(seeds=3), tmp_path, say=lambda s: None)
    assert sorted((c.recipe.name, c.optim.seed) for c in counted if c.optim.batch_size == 64) == \
        [("fast", 2), ("plain", 2)]
    assert (tmp_path / "runs" / by["plain", 0]["hash"] / "summary.json").stat().st_mtime_ns == stamp
    same = {(r["variant"], r["seed"]): r for r in again}
    assert same["plain", 1]["reused"] and same["plain", 1]["curve"] == by["plain", 1]["curve"]
    assert same["batch-4x", 2]["status"] == "failed"


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two jobs side by side need two cores")
def test_jobs_side_by_side_train_the_same_runs_as_one_at_a_time(tmp_path):
    lines: list[str] = []
    # a truncated variant too: its scenario's flags are a closure, sent to the job by the scenario's name
    study = tiny_study(methods=("plain", "default", "trunc-gaussian"), seeds=2, budget=Budget.parse("20steps"),
                       snapshot_every=10)
    together = run_study(replace(study, jobs=2), tmp_path / "two", say=lines.append)
    alone = run_study(study, tmp_path / "one", say=lambda s: None)
    assert [(r["variant"], r["seed"]) for r in together] == [(r["variant"], r["seed"]) for r in alone]
    for a, b in zip(together, alone):  # the same configuration, hash and numbers; only the seconds differ
        assert a["hash"] == b["hash"] and a["status"] == b["status"] == "ok"
        assert [p["nll"] for p in a["curve"]["points"]] == [p["nll"] for p in b["curve"]["points"]]
    assert sum(" start: moons" in line for line in lines) == 6 and lines[-1].startswith("bench: 6 runs in")


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two narrowing processes need two cores")
def test_narrowing_spread_over_processes_evaluates_the_same_points_as_one_process(tmp_path):
    import copy

    from scorefast.bench.bracket import bracket
    # twice the batch meets plain's final values between two of the spread snapshots: narrowed there
    study = tiny_study(methods=("plain", "batch-2x"), seeds=1, budget=Budget.parse("100steps"), snapshot_every=5,
                       evaluation=replace(TINY, points=4))
    rows = run_study(study, tmp_path / "study", say=lambda s: None)
    lines: dict[int, list[str]] = {1: [], 2: []}
    narrowed = {}
    for processes in (2, 1):  # each with a cache of its own: both evaluate every point
        (tmp_path / str(processes) / "curves").mkdir(parents=True)
        narrowed[processes] = bracket(copy.deepcopy(rows), replace(study.protocol, refine=3), tmp_path / str(processes),
                                      lines[processes].append, processes=processes, threads=1)
    assert lines[1] and sorted(lines[2]) == sorted(lines[1])  # the same runs narrowed by as many points
    for a, b in zip(narrowed[2], narrowed[1]):
        assert a["curve"] == b["curve"] and len(a["curve"]["points"]) >= 2
    assert len(narrowed[1][1]["curve"]["points"]) > len(rows[1]["curve"]["points"])


@pytest.mark.slow
def test_a_study_may_score_its_samples_by_another_metric(tmp_path):
    from scorefast.evaluate import METRICS
    study = tiny_study(methods=("plain",), seeds=1, budget=Budget.parse("20steps"), snapshot_every=10,
                       evaluation=replace(TINY, metric="mmd"))
    curve = run_study(study, tmp_path, say=lambda s: None)[0]["curve"]
    assert curve["metric_name"] == "mmd" in METRICS and all(p["metric"] >= 0 for p in curve["points"])
    assert "--metric mmd" in command_of(study, tmp_path)


def test_jobs_may_not_oversubscribe_the_cores():
    cores = os.cpu_count() or 1
    with pytest.raises(UserError, match=f"--jobs {cores + 1} x --workers 1 x --threads 1 = {cores + 1} threads on "
                       f"{cores} cores would oversubscribe"):
        tiny_study(jobs=cores + 1).validate()
    with pytest.raises(UserError, match="--jobs must be >= 1"):
        tiny_study(jobs=0).validate()


def test_error_text_is_one_line_naming_the_exception():
    try:
        raise RuntimeError("tensor sizes differ\nsecond line")
    except RuntimeError as exc:
        text = error_text(exc)
    assert text.startswith("RuntimeError: tensor sizes differ (at test_bench.py:") and "\n" not in text
    assert error_text(UserError("--lr must be > 0")) == "--lr must be > 0"


# -- the verdict rule ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratios, failed, expected", [
    ([0.3, 0.41, 0.5], False, "helps: 0.30-0.50x time to target (3 seeds)"),     # the whole interval below 1
    ([0.3, None, 0.5], False, "does not reach the target on 1 of 3 seeds"),
    ([1.0, 1.0, 1.0], False, "no measurable difference (1.00x, 3 seeds)"),        # as fast is not faster
    ([0.72, 1.28, 0.83], False, "no measurable difference (0.72-1.28x, 3 seeds)"),  # a median of 0.83 is noise
    ([1.2, 1.4, 1.3], False, "slower: 1.20-1.40x time to target (3 seeds)"),
    ([0.4], False, "no measurable difference: one seed, no margin (0.40x)"),
    ([(0.11, "<="), (0.13, "<=")], False, "helps: <= 0.13x time to target (2 seeds)"),  # met at the first snapshot
    ([(0.5, ">="), 0.6], False, "no measurable difference (>= 0.50x, 2 seeds)"),  # the reference's was a bound
    ([(1.2, ">="), 1.3], False, "slower: >= 1.20x time to target (2 seeds)"),
    ([(0.5, "?"), 0.4], False, "no measurable difference (unbounded, 2 seeds)"),
    ([0.3, 0.41, 0.5], True, "failed"),
    ([], False, "no verdict (its reference has no result)"),
])
def test_verdict_rule_needs_the_whole_interval_over_seeds_below_1(ratios, failed, expected):
    assert verdict(ratios, failed) == expected


def test_time_to_says_when_its_time_is_only_a_bound():
    assert time_to([(1.0, 0.9), (3.0, 0.1)], 0.5, bounded=True) == (2.0, True)
    assert time_to([(1.0, 0.2), (3.0, 0.1)], 0.5, bounded=True) == (1.0, False)   # met at the first snapshot
    assert time_to([(1.0, math.nan), (3.0, 0.1)], 0.5, bounded=True) == (3.0, False)
    assert time_to([(1.0, 0.9)], 0.5, bounded=True) == (None, True)
    assert time_to([(1.0, 0.2), (3.0, 0.9)], 0.5, lower_is_better=False, bounded=True) == \
        (pytest.approx(1 + 2 * 0.3 / 0.7), True)


def curve(*pairs):
    return [{"wall": w, "nll": v, "metric": v, "step": i} for i, (w, v) in enumerate(pairs)]


def test_time_ratio_interpolates_and_marks_its_bounds():
    plain = curve((1.0, 5.0), (2.0, 4.0), (4.0, 3.0))          # its own final value, at 4 s
    fast = curve((1.0, 4.0), (2.0, 2.0))                        # 3.0 reached half-way between 1 s and 2 s
    assert time_ratio(fast, plain, 3.0) == (pytest.approx(1.5 / 4.0), "=")
    assert time_ratio(curve((1.0, 3.5)), plain, 3.0) == (None, "never")
    stuck = curve((1.0, 9.0), (8.0, 8.0))                       # a control that never reaches 3.0: timed at 8 s
    assert time_ratio(fast, stuck, 3.0) == (pytest.approx(1.5 / 8.0), "<=")
    assert time_ratio(curve((1.0, math.nan), (3.0, 2.0)), plain, 3.0) == (pytest.approx(3.0 / 4.0), "<=")
    assert time_ratio(curve((0.5, 2.0)), plain, 3.0) == (pytest.approx(0.5 / 4.0), "<=")  # first snapshot: a bound
    assert time_ratio(fast, curve((2.0, 2.5)), 3.0) == (pytest.approx(1.5 / 2.0), ">=")  # the reference's was one


def hand_row(variant, seed, pairs=(), status="ok"):
    """A study row with a hand-made NLL curve [(wall, nll)] (the sample metric equal to it)."""
    r = {"data": "d", "spec": "d", "n_data": None, "variant": variant, "scenario": variant,
         "role": SCENARIOS[variant].role, "seed": seed, "status": status, "hash": f"{variant}{seed}"}
    return {**r, "curve": {"points": curve(*pairs), "nll_key": "nll_nats", "metric_name": "swd", "T": 1.0}} \
        if status == "ok" else {**r, "error": "boom"}


def hand_rows(seeds=(0, 1, 2)):
    rows = []
    for s in seeds:
        rows += [hand_row("plain", s, [(1, 5), (2, 4), (4, 3)]), hand_row("empirical", s, [(1, 4), (2, 2)]),
                 hand_row("batch-2x", s, [(1, 3.5), (2, 3.2)]), hand_row("batch-4x", s, [(1, 3.0)])]
    return rows


def test_tables_state_the_verdict_against_plain_and_each_control():
    table = Tables(hand_rows()).table("d", "targets")
    assert [r["variant"] for r in table["rows"]] == ["plain", "empirical", "batch-2x", "batch-4x"]
    assert table["rows"][1]["verdict"] == "helps: 0.38x time to target (3 seeds)"   # 1.5 s / 4 s on every seed
    # batch-2x never gets there (timed at its 2 s: a bound); batch-4x is there at its first snapshot (1 s at most)
    assert table["sentences"] == ["**empirical** against plain: helps: 0.38x time to target (3 seeds); against "
                                  "batch-2x: helps: <= 0.75x time to target (3 seeds); against batch-4x: slower: "
                                  ">= 1.50x time to target (3 seeds)."]
    assert "| 0.38x |" in markdown(table)[3]


def test_two_identical_configurations_make_no_measurable_difference():
    rows = []
    for s in range(3):
        noisy = [(1 + 0.1 * s, 5), (2 + 0.2 * s, 4), (4 - 0.3 * s, 3)]
        rows += [hand_row("plain", s, [(1, 5), (2, 4), (4, 3)]), hand_row("empirical", s, noisy)]
    table = Tables(rows).table("d", "targets")
    assert table["rows"][1]["verdict"] == "no measurable difference (0.85-1.00x, 3 seeds)"
    plain = [r for r in rows if r["variant"] == "plain"]
    same = Tables(plain + [{**r, "variant": "empirical", "scenario": "empirical", "hash": "other"} for r in plain])
    assert same.table("d", "targets")["rows"][1]["verdict"] == "no measurable difference (1.00x, 3 seeds)"


def test_a_seed_that_failed_makes_the_verdict_failed_and_is_named():
    table = Tables([*hand_rows(), hand_row("empirical", 3, status="failed"),
                    hand_row("plain", 3, [(1, 5), (2, 3)])]).table("d", "targets")
    empirical = table["rows"][1]
    assert empirical["verdict"] == "failed" and empirical["ratio"][-1] == (None, "never")
    assert table["sentences"][0] == "empirical, seed 3 failed: boom"


def test_a_study_of_images_to_memorise_times_the_sample_metric_not_the_nll():
    """With nothing held out the NLL is the training images' own: the target is plain's final ssim_gap."""
    rows = []
    for r in hand_rows():
        rows.append({**r, "curve": {**r["curve"], "metric_name": "ssim_gap",
                                    "points": [{**p, "nll": -p["nll"]} for p in r["curve"]["points"]]}})
    tables = Tables(rows)
    assert tables.key("d") == "metric" and Tables(hand_rows()).key("d") == "nll"
    table = tables.table("d", "targets")
    assert table["target"] == "metric" and table["rows"][1]["verdict"] == "helps: 0.38x time to target (3 seeds)"
    head = markdown(table)[0]
    assert "time to plain's final ssim_gap, s | x plain (ssim_gap) | x plain (NLL) |" in head
    # the NLL's ratio beside it: both below the target at their first snapshots, so neither time is known
    assert table["rows"][1]["ratio_other"] == [(1.0, "?")] * 3


def test_a_study_whose_protocol_targets_the_sample_metric_is_judged_by_it():
    """Protocol(target='metric') (the MNIST preset's: its NLL is biased at the steps a CPU affords): every seed's
    target is plain's final sample metric, the NLL's ratio beside it; the target is not part of the curves' key,
    so curves already evaluated are reused; any other target is one clear error."""
    rows = [{**r, "target": "metric", "curve": {**r["curve"], "points": [{**p, "nll": 10 - p["nll"]}
                                                                         for p in r["curve"]["points"]]}}
            for r in hand_rows()]
    tables = Tables(rows)
    assert tables.key("d") == "metric" and Tables([{**r, "target": "nll"} for r in hand_rows()]).key("d") == "nll"
    table = tables.table("d", "targets")
    assert table["target"] == "metric" and table["rows"][1]["verdict"] == "helps: 0.38x time to target (3 seeds)"
    assert "time to plain's final swd, s | x plain (swd) | x plain (NLL) |" in markdown(table)[0]
    assert Protocol(points=5, target="metric").key() == Protocol(points=5).key() != Protocol(points=4).key()
    with pytest.raises(UserError, match="target must be one of nll, metric, got 'fid'"):
        Protocol(target="fid")
    assert make_study(BenchOptions(preset="readme-images-mnist-cpu")).protocol.target == "metric"


def test_a_plugin_option_in_the_settings_reaches_only_the_variants_selecting_the_plugin():
    study = make_study(BenchOptions(preset="readme-memorise"))
    part = Part("photos32", 1, 3 * 32 * 32, "image")
    flags = {v.name: v.flags for v in study.variants(part)}
    assert set(flags) == {"plain", "default", "fp-embed", "fp-embed-off"}
    assert flags["fp-embed"]["fp_variant"] == flags["fp-embed-off"]["fp_variant"] == "paper"
    assert "fp_variant" not in flags["plain"] and "fp_variant" not in flags["default"]
    assert all((f["sde"], f["weighting"], f["prior"]) == ("ve-power", "inv_g2", "gaussian") for f in flags.values())
    assert study.protocol.samples == 8 and study.jobs == min(2, os.cpu_count() or 1)
    with pytest.raises(UserError, match="--fp-variant is an option of target fp-embed"):
        Config(data="moons", fp_variant="paper")  # a single run still refuses it


def test_spread_and_statistics_text():
    assert spread([10, 20, 30, 40, 50], 3) == [10, 20, 50] and spread([10, 20], 5) == [10, 20]
    every = list(range(40, 2001, 40))  # the default: a snapshot every 2 % of 2,000 steps
    assert spread(every, 10) == [40, 80, 120, 160, 240, 360, 560, 840, 1280, 2000]  # dense early
    assert spread3([1.0, 2.0, 3.0]) == "1.000 / 2.000 / 3.000" and spread3([2.0, 2.0]) == "2.000"
    assert spread3([1.0, None, None]) == "1.000 / never / never"


# -- wall-clock and controls --------------------------------------------------------------------------------

def test_wall_of_interval_networks_is_the_schedule_that_ran():
    """Queued networks train one after the other: the model of step s exists once every earlier network of
    the queue has finished (its final wall) and the last one has reached s; workers side by side wait for the
    slowest, plus the launch."""
    queued, side_by_side = Config(intervals=2), Config(intervals=2, workers=2)
    assert run_wall(queued, [3.0, 5.0], [4.0, 6.0], extra=1.0) == 4.0 + 5.0 + 1.0   # net 0 done, net 1 at s
    assert run_wall(queued, [4.0, 6.0], extra=1.0) == 11.0                          # the final model
    assert run_wall(side_by_side, [3.0, 5.0], [4.0, 6.0], extra=1.0, launch=2.5) == 5.0 + 1.0 + 2.5
    assert run_wall(Config(), [3.0]) == 3.0
    # queues (0, 2) and (1, 3): 10 + 3 and 20 + 4
    assert run_wall(Config(intervals=4, workers=2), [1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == 24.0
    assert launch_seconds(side_by_side, {"elapsed_seconds": 20.0}, [4.0, 6.0], 1.0) == 20.0 - 6.0 - 1.0
    assert launch_seconds(queued, {"elapsed_seconds": 20.0}, [4.0, 6.0], 1.0) == 0.0  # one process: no launch


def test_every_variant_of_a_study_has_the_same_cores():
    """Beside intervals-2 on 2 workers x 1 thread, the one-network variants train with 2 threads, and the
    interval control is one network on those cores, not DDP."""
    study = tiny_study(methods=("plain", "default", "intervals-2", "one-net-allocation"), workers=2, threads=1)
    flags = {v.name: v.flags for v in study.variants(Part("moons", 300, 2, "points"))}
    assert (flags["intervals-2"]["workers"], flags["intervals-2"]["threads"]) == (2, 1)
    for name in ("plain", "default", "one-net-allocation"):
        assert flags[name].get("workers", 1) == 1 and flags[name]["threads"] == 2
    cores = os.cpu_count() or 1
    if cores >= 2:  # --jobs 2 without --threads: the cores shared out, never oversubscribed
        two = make_study(BenchOptions(data="moons", methods="plain", jobs=2))
        assert two.threads == cores // 2 and "--threads" in command_of(two, "x")


def test_controls_are_made_for_the_variant_they_control():
    """With two end times the SpeeD-style control splits at each truncated variant's own T, and the report
    pairs them."""
    study = tiny_study(methods=Selection.parse("trunc-gmm").names, T=(0.2, 0.4))
    variants = {v.name: v for v in study.variants(Part("moons", 300, 2, "points"))}
    assert {n for n in variants if "downweighted" in n} == {"t1-downweighted-T0.2", "t1-downweighted-T0.4"}
    for T in (0.2, 0.4):
        assert variants[f"t1-downweighted-T{T:g}"].flags["time_edges"] == f"{T:g}"
        assert variants[f"trunc-gmm-T{T:g}"].flags["T"] == T == variants[f"t1-downweighted-T{T:g}"].T
    rows = [hand_row("plain", 0, [(1, 5), (4, 3)])]
    for name, T in (("trunc-gmm", 0.2), ("trunc-gmm", 0.4), ("t1-downweighted", 0.2), ("t1-downweighted", 0.4)):
        rows.append({**hand_row(name, 0, [(1, 4), (2, 2)]), "variant": f"{name}-T{T:g}", "variant_T": T})
    rows.append(hand_row("t1-likelihood", 0, [(1, 4), (2, 2)]))
    tables = Tables(rows)
    assert tables.controls_of("d", "trunc-gmm-T0.4") == ["t1-downweighted-T0.4", "t1-likelihood"]
    sentence = next(s for s in tables.table("d", "truncation")["sentences"] if s.startswith("**trunc-gmm-T0.2**"))
    assert "against t1-downweighted-T0.2: " in sentence and "T0.4" not in sentence


def test_interval_control_has_the_intervals_time_allocation_and_samples_per_step():
    setting = Setting({"data": "moons", "batch_size": 128}, dim=2, workers=2)
    control, intervals = (Config(**{**setting.base, **SCENARIOS[name].flags(setting)})
                          for name in ("one-net-allocation", "intervals-2"))
    sde = control.sde.build()
    edge = intervals.edges(sde)[1]
    assert float(control.time_sampler.time_edges) == pytest.approx(edge, rel=1e-5)
    assert control.optim.batch_size == 2 * intervals.optim.batch_size and control.partition.name == "single"
    assert (intervals.launch.workers, control.launch.workers) == (2, 1)  # the same cores, no DDP
    torch.manual_seed(0)
    t = control.time_sampler.bind(sde, sde.eps, sde.T)(200_000)
    assert float((t < edge).double().mean()) == pytest.approx(0.5, abs=0.005)   # each network's share of draws


def test_truncation_controls_keep_T_1_and_move_draws_below_T():
    setting = Setting({"data": "moons"}, dim=2, T=0.4)
    down = Config(**SCENARIOS["t1-downweighted"].flags(setting))
    sde = down.sde.build()
    torch.manual_seed(0)
    t = down.time_sampler.bind(sde, sde.eps, sde.T)(200_000)
    assert down.sde.T == 1.0 and float((t < 0.4).double().mean()) == pytest.approx(0.8, abs=0.005)
    assert Config(**SCENARIOS["t1-likelihood"].flags(setting)).time_sampler.name == "likelihood"
    trunc = Config(**SCENARIOS["trunc-flow"].flags(setting))
    assert (trunc.sde.T, trunc.prior.name, trunc.prior.fit) == (0.4, "flow", "before")


@pytest.mark.filterwarnings("ignore:FP solve")  # the coarse grid's score is replaced by zero anyway
def test_fp_embed_off_transports_by_the_drift_alone():
    """With every pre-computed score zero the embedding's Euler steps follow the VP drift -beta(t) x / 2 only:
    x_k = x0 * prod_j (1 - beta(t_j) (t_j - t_{j-1}) / 2)."""
    from scorefast.methods.targets import TARGETS
    sde = Config().sde.build()
    x0 = torch.randn(64, 1, dtype=torch.float64)
    goal, info = TARGETS.create("fp-embed-off", fp_grid=33, fp_steps=8).precompute(sde, x0, progress=False)
    assert info["embedding"] == "off"
    times = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    which = torch.arange(64) % 3
    out = goal.transport(sde, x0, times, which, goal.provider.for_batch(x0))
    dt = torch.diff(times, prepend=torch.zeros(1, dtype=torch.float64))
    factors = torch.cumprod(1 - 0.5 * sde.beta(times) * dt, 0)
    assert torch.allclose(out, x0 * factors[which][:, None])


# -- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, needle", [("0steps", "must be > 0"), ("-3s", "must be > 0"),
                                          ("4000", "with its unit"), ("1.5steps", "whole"), ("fast", "unit")])
def test_budget_needs_a_positive_number_with_its_unit(text, needle):
    with pytest.raises(UserError, match=needle):
        Budget.parse(text)
    assert (Budget.parse("4000steps").flags(400)["steps"], Budget.parse("60s").flags(200)["time_budget"]) == \
        (4000, 60.0)


def test_methods_bring_their_controls_and_the_baselines():
    assert Selection.parse("fp-embed").names == ["plain", "default", "fp-embed", "batch-2x", "batch-4x",
                                                 "fp-embed-off"]
    assert set(Selection.parse("all").names) == set(SCENARIOS)
    assert Selection.parse("fp-embed,-batch-2x,-batch-4x").names == ["plain", "default", "fp-embed", "fp-embed-off"]
    assert set(Selection.parse("all,-combined").names) == set(SCENARIOS) - {"combined"}
    with pytest.raises(UserError, match="the baseline 'plain' always runs"):
        Selection.parse("knn,-plain")
    with pytest.raises(UserError, match="unknown --methods entry '-knm'"):
        Selection.parse("knn,-knm")
    with pytest.raises(UserError, match="unknown --methods entry 'dms'; choose from all, baselines"):
        Selection.parse("dms")
    with pytest.raises(UserError, match="unknown --preset 'fast'; choose one of quick, readme-recipe"):
        get_preset("fast")


def test_a_folder_of_another_study_is_refused_and_nothing_in_it_deleted(tmp_path):
    identity = {"data": ["moons"], "budget": "40steps", "timing": TIMING,
                "variants": {"moons": {"plain": {"recipe": "plain"}}}}
    open_folder(tmp_path, identity, {})
    (tmp_path / "runs" / "abc").mkdir(parents=True)
    (tmp_path / "runs" / "abc" / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="holds another study \\(its budget differ"):
        open_folder(tmp_path, {**identity, "budget": "80steps"}, {})
    open_folder(tmp_path, identity, {"seeds": 5})  # the same study (more seeds) may continue
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no study.json"):
        open_folder(other, identity, {})
    assert (tmp_path / "runs" / "abc" / "summary.json").exists() and (other / "notes.txt").read_text() == "mine"


def test_a_study_may_grow_but_not_change_a_variant(tmp_path):
    first = {"data": ["moons"], "budget": "40steps", "timing": TIMING, "variants": {"moons": {"plain": {"lr": 1e-3}}}}
    open_folder(tmp_path, first, {})
    more = {"data": ["digits", "moons"], "budget": "40steps", "timing": TIMING,
            "variants": {"moons": {"plain": {"lr": 1e-3}, "knn": {"method": "knn"}}, "digits": {"plain": {}}}}
    open_folder(tmp_path, more, {})
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["data"] == ["moons", "digits"] and set(saved["variants"]["moons"]) == {"plain", "knn"}
    open_folder(tmp_path, first, {})  # the smaller study still belongs here, and forgets nothing
    assert set(json.loads((tmp_path / "study.json").read_text())["variants"]) == {"moons", "digits"}
    changed = {**first, "variants": {"moons": {"plain": {"lr": 4e-3}}}}
    with pytest.raises(UserError, match="holds another study \\(its flags of plain on moons differ"):
        open_folder(tmp_path, changed, {})


def test_bench_help_lists_the_choices_without_importing_torch():
    code = ("import sys\nfrom scorefast.cli import main\ntry:\n    main(['bench', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    words = re.sub(r"-\s+", "-", out)  # argparse wraps lines at hyphens
    assert all(name in words for name in SCENARIOS) and "readme-recipe" in words and out.split()[-1] == "False"


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_command_of_a_study_makes_that_study_again(name):
    """The command a report prints regenerates its study exactly: flags, settings and the preset's protocol."""
    import shlex

    from scorefast.cli import build_parser, options_given
    study = make_study(BenchOptions(preset=name))
    args = build_parser("bench").parse_args(shlex.split(command_of(study, "out"))[1:])
    again = make_study(BenchOptions(**options_given(args, BenchOptions)))
    assert replace(again, jobs=study.jobs) == study


def test_config_hash_ignores_only_the_location():
    a, b = Config(out="x", steps=10), Config(out="y", steps=10)
    assert config_hash(a) == config_hash(b) != config_hash(Config(out="x", steps=11))


# -- end to end ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_quick_bench_through_the_cli(tmp_path, capsys):
    """The --quick study on one 2-D set for interval networks and the GMM truncation, each with its controls."""
    out = tmp_path / "study"
    assert main(["bench", "--quick", "--data", "checkerboard", "--methods", "intervals-2,trunc-gmm",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "bench [7/7] checkerboard" in printed.err and "left" in printed.err
    results = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in results["rows"]} == {"plain", "default", "intervals-2", "one-net-allocation",
                                                       "trunc-gmm", "t1-downweighted", "t1-likelihood"}
    assert all(r["status"] == "ok" for r in results["rows"])
    sentences = [s for t in results["tables"] for s in t["sentences"]]
    assert any(s.startswith("**intervals-2** against plain: ") and "against one-net-allocation: " in s
               for s in sentences)
    report = (out / "report.md").read_text()
    assert report.splitlines()[4].strip().startswith("scorefast bench --preset quick --data checkerboard")
    for name in ("quality_vs_wallclock_checkerboard_intervals.png", "quality_vs_wallclock_checkerboard_truncation.png",
                 "samples_checkerboard.png", "T_tradeoff_checkerboard.png"):
        assert (out / name).stat().st_size > 0 and f"]({name})" in report
    interval = next(r for r in results["rows"] if r["variant"] == "intervals-2")
    assert interval["curve"]["networks"] == 2
    # queued on one worker: no model of the run exists before network 0 has finished and network 1 has begun
    from scorefast.checkpoint import load_checkpoint
    first = float(load_checkpoint(f"{interval['run']}/checkpoints/net-0.pt")["wall"])
    assert all(p["wall"] > first for p in interval["curve"]["points"])
    assert interval["resources"] == {"workers": 1, "threads": 1}


def test_a_report_that_trains_nothing_keeps_the_machine_its_runs_were_timed_on(tmp_path):
    from scorefast.bench.command import timed_on
    now = {"cpus": 2, "loadavg_start": [3.0, 3.0, 3.0]}
    results = tmp_path / "results.json"
    assert timed_on(results, now) == now  # no earlier report
    results.write_text(json.dumps({"machine": {"cpus": 2, "loadavg_start": [0.9, 1.6, 1.6], "loadavg": [2.0]}}))
    assert timed_on(results, now)["loadavg_start"] == [0.9, 1.6, 1.6]
    results.write_text("{\"machine\": ")
    assert timed_on(results, now) == now  # a damaged report is rewritten, never trusted
