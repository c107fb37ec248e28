"""A study folder timed under the earlier rules (timing 1) is judged again by today's: the one-network,
one-process variants are kept and every ratio and verdict made anew by the report's own rule; the others, and
the variants paired only with them, are left out and named in the report, results.json and the docs caption."""

import json
import re
from pathlib import Path

import pytest

from scorefast.bench.curves import TIMING
from scorefast.bench.rejudging import rejudge
from scorefast.bench.tables import caption
from scorefast.cli import main
from scorefast.errors import UserError

PLAIN = [(1, 5.0), (2, 4.0), (4, 3.0)]  # plain's own final NLL, 3.0, is each seed's target, reached at 4 s
SPEEDS = (1.0, 1.2, 0.8)  # empirical's clock per seed: it passes 3.0 at 1.5 s x speed (half-way from 4 to 2)


def row(variant: str, seed: int, pairs, networks: int = 1, status: str = "ok") -> dict:
    """A timing-1 row as the earlier bench wrote it: no resources, no variant_T, its curve's walls as measured."""
    r = {"data": "moons", "spec": "moons", "n_data": None, "variant": variant, "scenario": variant,
         "group": "targets", "role": "baseline" if variant == "plain" else "method", "seed": seed, "status": status,
         "hash": f"{variant}{seed}", "reused": True, "warnings": [], "run": f"runs/{variant}{seed}"}
    if status != "ok":
        return {**r, "error": "boom"}
    return {**r, "curve": {"points": [{"wall": w, "nll": v, "metric": v / 10, "step": 100 * (i + 1)}
                                      for i, (w, v) in enumerate(pairs)],
                           "nll_key": "nll_nats", "metric_name": "swd", "networks": networks, "T": 1.0,
                           "divergence": "exact", "nll_n": 200}}


def old_study(root: Path, flags: dict | None = None, extra: list[dict] | None = None) -> Path:
    """A timing-1 folder: plain, empirical (faster on every seed), knn (plain's very curve under another
    configuration), batch-2x (at the target by its first snapshot), batch-4x, intervals-2 (two networks) and its
    control one-net-allocation; old tables whose verdicts the earlier rule wrote."""
    rows = []
    for s, k in enumerate(SPEEDS):
        rows += [row("plain", s, PLAIN), row("empirical", s, [(1 * k, 4.0), (2 * k, 2.0)]), row("knn", s, PLAIN),
                 row("batch-2x", s, [(1, 2.9), (3, 2.5)]), row("batch-4x", s, [(1, 4.5), (5, 3.5)]),
                 row("intervals-2", s, [(1, 4.0), (2, 2.0)], networks=2), row("one-net-allocation", s, PLAIN)]
    rows += extra or []
    variants = {name: {"recipe": "plain", "threads": 1} for name in dict.fromkeys(r["variant"] for r in rows)}
    variants["intervals-2"].update(intervals=2, workers=1)
    variants.update(flags or {})
    folder = root / "old"
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps({"data": ["moons"], "budget": "400steps",
                                                   "variants": {"moons": variants}}))
    old_table = {"data": "moons", "group": "targets", "sentences": [], "rows": [
        {"variant": r["variant"], "verdict": "helps: 0.97x time to target"} for r in rows if r["seed"] == 0]}
    results = {"command": "scorefast bench --data moons --methods targets,intervals --out old", "machine": {
        "cpus": 2, "torch": "2.x", "threads": 1}, "study": {"budget": "400steps", "seeds": 3},
        "tables": [old_table], "rows": rows, "pictures": {"moons: targets": ["curves.png"], "moons: intervals":
                                                          ["intervals.png"]}}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "curves.png").write_bytes(b"the earlier picture")
    return folder


def sentence(results: dict, variant: str) -> str:
    return next(s for t in results["tables"] for s in t["sentences"] if s.startswith(f"**{variant}** against"))


def test_kept_rows_are_judged_by_todays_rule(tmp_path):
    results = rejudge(old_study(tmp_path))
    rows = {r["variant"]: r for t in results["tables"] for r in t["rows"]}
    # 1.5 s x speed / 4 s on each seed: 0.375, 0.45, 0.30, wholly below 1
    assert rows["empirical"]["verdict"] == "helps: 0.30-0.45x time to target (3 seeds)"
    assert [v for v, _ in rows["empirical"]["ratio"]] == pytest.approx([0.375, 0.45, 0.30])
    assert rows["knn"]["verdict"] == "no measurable difference (1.00x, 3 seeds)"  # the same curve is not faster
    # batch-2x is below 3.0 at its first snapshot (1 s): only a bound, 1 / 4 at most
    assert rows["batch-2x"]["ratio"] == [[0.25, "<="]] * 3
    assert rows["batch-2x"]["verdict"] == "helps: <= 0.25x time to target (3 seeds)"
    assert rows["batch-4x"]["verdict"] == "does not reach the target on 3 of 3 seeds"
    # empirical against batch-2x: 1.5 s x speed (1.2 s at least) against 1 s at most: a lower bound, above 1
    assert "against batch-2x: slower: >= 1.20x time to target (3 seeds)" in sentence(results, "empirical")
    assert rows["plain"]["resources"] == "1 process x 1 thread"
    assert results["timing"] == TIMING and results["rejudged_from"] == 1
    assert results["command"].startswith("scorefast bench --data moons") and results["machine"]["cpus"] == 2


def test_several_networks_and_their_partners_are_left_out_and_named(tmp_path):
    folder = old_study(tmp_path)
    results = rejudge(folder)
    assert results["left_out"] == [
        {"data": "moons", "variant": "intervals-2", "why": "2 networks"},
        {"data": "moons", "variant": "one-net-allocation", "why": "the control of intervals-2 only"}]
    assert {r["variant"] for r in results["rows"]} == {"plain", "empirical", "knn", "batch-2x", "batch-4x"}
    assert all(t["group"] != "intervals" for t in results["tables"])
    report = (folder / "report.md").read_text()
    assert "Re-judged by the bench's current rules (timing 2) from a study timed under timing 1" in report
    assert "intervals-2 (2 networks; on moons), one-net-allocation (the control of intervals-2 only; on moons)" \
        in report
    assert "helps: 0.30-0.45x time to target (3 seeds)" in report and "0.97x" not in report
    # the earlier pictures stay as they were, listed where their table still is
    assert (folder / "curves.png").read_bytes() == b"the earlier picture"
    assert "![curves.png](curves.png)" in report and "intervals.png" not in report
    assert json.loads((folder / "results.json").read_text())["left_out"] == results["left_out"]


def test_the_docs_caption_says_re_judged_and_what_was_left_out(tmp_path):
    line = caption(rejudge(old_study(tmp_path)), "benchmarks/results/old/results.json")
    assert "Timed under the bench's earlier rules" not in line
    assert line.endswith("Re-judged by the bench's current rules from a study timed under timing 1; left out "
                         "(not re-judged: timed turn by turn under the earlier rules, or paired only with what "
                         "was): intervals-2 (2 networks; on moons), one-net-allocation (the control of "
                         "intervals-2 only; on moons).")


def test_a_method_whose_control_is_left_out_goes_with_it(tmp_path):
    """A one-network variant on 2 workers (DDP: no launch cost under the earlier rules) or on other cores than
    plain is left out, and so is a method whose control it was."""
    folder = old_study(tmp_path, flags={"batch-2x": {"recipe": "plain", "threads": 1, "workers": 2},
                                        "batch-4x": {"recipe": "plain", "threads": 2}})
    left = {n["variant"]: n["why"] for n in rejudge(folder)["left_out"]}
    assert left["batch-2x"] == "2 workers" and left["batch-4x"] == "2 threads against plain's 1"
    assert left["empirical"] == "its control batch-2x left out" and left["knn"] == "its control batch-2x left out"


def test_only_a_folder_of_the_earlier_rules_is_re_judged_in_one_line(tmp_path, capsys):
    folder = old_study(tmp_path)
    assert main(["bench", "--rejudge", str(folder)]) == 0
    assert "moons: empirical against plain: helps: 0.30-0.45x" in capsys.readouterr().out
    before = (folder / "results.json").read_bytes(), (folder / "report.md").read_bytes()
    assert main(["bench", "--rejudge", str(folder)]) == 2  # already at the current timing
    err = capsys.readouterr().err
    assert "its results are timed under timing 2, not the earlier rules (1); nothing to re-judge" in err
    assert err.count("\n") == 1
    assert ((folder / "results.json").read_bytes(), (folder / "report.md").read_bytes()) == before
    assert main(["bench", "--rejudge", str(folder), "--seeds", "2"]) == 2
    assert "takes no other flag (got --seeds)" in capsys.readouterr().err
    assert main(["bench", "--data", "moons"]) == 2
    assert "--out is required" in capsys.readouterr().err


@pytest.mark.parametrize("damage, needle", [
    (lambda f: (f / "results.json").unlink(), "is not a study folder"),
    (lambda f: (f / "study.json").write_text("{"), "study.json '"),
    (lambda f: (f / "results.json").write_text('{"command": "x"}'), "results.json' is damaged: tables is missing"),
    (lambda f: (f / "results.json").write_text((f / "results.json").read_text().replace('"wall"', '"time"', 1)),
     "is damaged: points[0].wall is missing"),
])
def test_a_folder_that_is_no_study_or_is_damaged_is_refused_and_left_as_it_is(tmp_path, damage, needle):
    folder = old_study(tmp_path)
    damage(folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(UserError, match=re.escape(needle)) as caught:
        rejudge(folder)
    assert "\n" not in str(caught.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
