"""The methods as trainer switches: truncated runs with priors, the T sweep, queued piecewise runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scorefast.checkpoint import load_checkpoint
from scorefast.cli import main
from scorefast.methods.piecewise import PiecewiseModel
from scorefast.run import open_run

TINY = ["--n-data", "600", "--batch-size", "64", "--width", "32", "--eval-samples", "200", "--eval-steps", "20",
        "--eval-every", "20", "--eval-budget", "0", "--quiet"]


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    run = tmp_path_factory.mktemp("trunc") / "t04"
    assert main(["train", "--data", "offcentre", "--out", str(run), "--steps", "40", "--T", "0.4", "--prior",
                 "gaussian", *TINY]) == 0
    return run


def test_truncated_run_has_prior_and_reports_elbo(truncated, capsys):
    assert (truncated / "checkpoints" / "prior.pt").is_file()
    summary = json.loads((truncated / "summary.json").read_text())
    assert summary["T"] == 0.4 and summary["eval_steps"] == 8  # 20 steps at T=1 -> 8 at the same step size
    rows = [json.loads(line) for line in (truncated / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["metric"]) for r in rows)
    capsys.readouterr()
    assert main(["nll", "--run", str(truncated), "--data", "offcentre", "--n", "60", "--steps", "20", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["elbo"]) == {"prior_term", "score_term", "theta_free", "elbo"}
    assert res["elbo"]["elbo"] == pytest.approx(sum(v for k, v in res["elbo"].items() if k != "elbo"), rel=1e-4)
    # the moment-matched prior is far better at T = 0.4 than N(0, I) on off-centre data
    run = open_run(truncated)
    x = run.heldout("offcentre", 200).x.to(run.device)
    t = run.sde.T
    import torch
    xT = run.sde.perturb(x, torch.tensor(t), torch.randn_like(x))
    assert run.prior.log_prob(xT).mean() > run.sde.prior_logp(xT).mean() + 1.0


@pytest.mark.parametrize("extra, needle", [
    (["--T", "0"], "--T"),
    (["--T", "0.0005"], "--T"),
    (["--prior", "nope"], "--prior"),
    (["--prior-fit", "later"], "--prior-fit"),
])
def test_truncation_bad_values(tmp_path, capsys, extra, needle):
    out = tmp_path / "r"
    assert main(["train", "--data", "offcentre", "--out", str(out), "--steps", "5", "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and not out.exists()


def test_resume_with_other_prior_is_refused(truncated, capsys):
    before = (truncated / "checkpoints" / "prior.pt").read_bytes()
    assert main(["train", "--out", str(truncated), "--resume", "--prior", "flow", "--quiet"]) == 2
    assert "--prior" in capsys.readouterr().err
    assert (truncated / "checkpoints" / "prior.pt").read_bytes() == before


@pytest.mark.slow
def test_sweep_T_chooses_among_candidates(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep-T", "--data", "offcentre", "--out", str(out), "--T", "0.3,1.0", "--prior", "gaussian",
                 "--steps", "30", "--n-eval", "100", "--json", *TINY]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["chosen_T"] in (0.3, 1.0)
    best = max(res["rows"], key=lambda r: r["elbo"])
    assert res["chosen_T"] == best["T"]
    assert [r["sample_steps"] for r in res["rows"]] == [6, 20]
    assert (out / "sweep.png").is_file() and (out / "T=0.3" / "summary.json").is_file()


def test_queued_intervals_assemble_into_piecewise_model(tmp_path):
    run = tmp_path / "k3"
    assert main(["train", "--data", "moons", "--out", str(run), "--steps", "20", "--intervals", "3", *TINY]) == 0
    for k in range(3):
        assert load_checkpoint(run / "checkpoints" / f"net-{k}.pt")["step"] == 20
    r = open_run(run)
    assert isinstance(r.model, PiecewiseModel) and len(r.model.edges) == 4
    assert np.isfinite(r.sample(50, steps=9, progress=False).numpy()).all()


def test_explicit_edges_and_per_time_point(tmp_path):
    run = tmp_path / "edges"
    assert main(["train", "--data", "moons", "--out", str(run), "--steps", "10", "--edges", "0,0.1,1", *TINY]) == 0
    assert list(open_run(run).model.edges) == pytest.approx([1e-3, 0.1, 1.0])
    run = tmp_path / "dpsm"
    assert main(["train", "--data", "moons", "--out", str(run), "--steps", "10", "--per-time-point", "4",
                 *TINY]) == 0
    assert len(open_run(run).model.pieces) == 4


def test_warm_start_initialises_every_interval(tmp_path):
    run = tmp_path / "warm"
    assert main(["train", "--data", "moons", "--out", str(run), "--steps", "5", "--intervals", "2", "--warm-start",
                 "15", "--lr", "1e-9", *TINY]) == 0
    warm = load_checkpoint(run / "checkpoints" / "net-warm.pt")
    assert warm["step"] == 15
    for k in range(2):
        net = load_checkpoint(run / "checkpoints" / f"net-{k}.pt")["model"]
        for name, w in warm["ema"].items():  # lr 1e-9: the interval nets are still the warm weights
            assert np.allclose(net[name].numpy(), w.numpy(), atol=1e-6), name


@pytest.mark.parametrize("extra, needle", [
    (["--edges", "0,0.5,0.2,1"], "increasing"),
    (["--edges", "0,0.5"], "1"),
    (["--intervals", "50", "--steps", "10"], "50"),
])
def test_partition_errors_before_training(tmp_path, capsys, extra, needle):
    out = tmp_path / "bad"
    args = ["train", "--data", "moons", "--out", str(out), "--quiet", *extra]
    if "--steps" not in extra:
        args += ["--steps", "10"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("data, extra", [
    ("moons", ["--method", "fp-regress", "--fp-grid", "65", "--fp-steps", "16"]),
    ("moons", ["--method", "fp-embed", "--fp-grid", "65", "--fp-steps", "16"]),
    ("moons", ["--method", "empirical", "--reference-size", "128"]),
])
def test_score_embedding_methods_train_and_count_the_solve(tmp_path, data, extra):
    run = tmp_path / "fp"
    assert main(["train", "--data", data, "--out", str(run), "--steps", "20", *TINY, *extra]) == 0
    state = load_checkpoint(run / "checkpoints" / "net-0.pt")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the run's wall-clock starts at the precomputation (the FP solve for the grid methods)
    assert rows[0]["wall"] >= state["precompute"]["precompute_seconds"] > 0
    assert np.isfinite(open_run(run).sample(50, steps=5, progress=False).numpy()).all()


@pytest.mark.slow
def test_paper_variant_on_one_photograph(tmp_path):
    run = tmp_path / "paper"
    assert main(["train", "--data", "photos32", "--n-data", "1", "--out", str(run), "--steps", "4", "--method",
                 "fp-embed", "--fp-variant", "paper", "--sde", "ve-power", "--weighting", "inv_g2", "--batch-size",
                 "1", "--width", "8", "--eval-samples", "2", "--eval-steps", "4", "--eval-every", "4", "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["shape"] == [1, 32, 32]


def test_grid_methods_refuse_high_dimensions(tmp_path, capsys):
    out = tmp_path / "d64"
    assert main(["train", "--data", "digits", "--out", str(out), "--steps", "5", "--method", "fp-regress",
                 "--batch-size", "32", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "empirical" in err and len(err.strip().splitlines()) == 1
