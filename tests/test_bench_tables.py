"""The tables of README.md and docs/ are made from their results files: the generator rewrites a marked table
from results.json, the check fails when a table differs from its file, and the repository's own tables agree."""

import json
import re
from pathlib import Path

import pytest

from scorefast.bench.curves import TIMING
from scorefast.bench.report import Tables
from scorefast.bench.tables import documents, main, run
from scorefast.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def results_folder(root: Path, timing: int = TIMING) -> Path:
    """A tiny study's results.json: plain and empirical on one data set, three seeds."""
    rows = []
    for seed in range(3):
        for name, pairs in (("plain", [(1, 5.0), (2, 4.0), (4, 3.0)]), ("empirical", [(1, 4.0), (2, 2.0)])):
            rows.append({"data": "moons", "spec": "moons", "n_data": None, "variant": name, "scenario": name,
                         "role": "baseline" if name == "plain" else "method", "seed": seed, "status": "ok",
                         "hash": f"{name}{seed}", "resources": {"workers": 1, "threads": 2},
                         "curve": {"points": [{"wall": w, "nll": v, "metric": v / 10, "step": i}
                                              for i, (w, v) in enumerate(pairs)],
                                   "nll_key": "nll_nats", "metric_name": "swd", "T": 1.0}})
    folder = root / "benchmarks" / "results" / "tiny"
    folder.mkdir(parents=True)
    results = {"command": "scorefast bench --data moons --methods empirical", "machine": {"cpus": 2, "torch": "2.x",
               "threads": 2}, "date": "2026-12-07", "timing": timing, "tables": Tables(rows).all_tables(),
               "rows": rows}
    (folder / "results.json").write_text(json.dumps(results, default=list))
    return folder


def page(root: Path, body: str = "stale\n", args: str = "benchmarks/results/tiny table=targets") -> Path:
    doc = root / "docs" / "results.md"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(f"# Results\n\nprose stays\n\n<!-- results: {args} -->\n{body}<!-- /results -->\n\nafter\n")
    return doc


def test_a_marked_table_is_made_from_its_results_and_checked_against_them(tmp_path):
    results_folder(tmp_path)
    doc = page(tmp_path)
    assert run(tmp_path, check=True) == ["docs/results.md: benchmarks/results/tiny table=targets"]
    assert "stale" in doc.read_text()  # --check rewrites nothing
    assert run(tmp_path) and run(tmp_path, check=True) == []
    text = doc.read_text()
    assert text.startswith("# Results\n\nprose stays\n\n<!-- results:")
    assert text.endswith("<!-- /results -->\n\nafter\n")
    assert "`scorefast bench --data moons --methods empirical` (2 CPUs, torch 2.x, 2 threads, 2026-12-07)" in text
    row = next(line for line in text.splitlines() if line.startswith("| moons | empirical |"))
    assert "| 1 process x 2 threads |" in row and "| 0.38x |" in row and "helps: 0.38x time to target (3 seeds)" in row
    doc.write_text(text.replace("| 0.38x |", "| 0.35x |"))  # a figure edited by hand
    assert run(tmp_path, check=True) == ["docs/results.md: benchmarks/results/tiny table=targets"]
    assert main(["--root", str(tmp_path), "--check"]) == 1 and main(["--root", str(tmp_path)]) == 0
    assert main(["--root", str(tmp_path), "--check"]) == 0


def test_results_of_the_earlier_timing_rules_say_so(tmp_path):
    results_folder(tmp_path, timing=1)
    doc = page(tmp_path)
    run(tmp_path)
    assert "Timed under the bench's earlier rules (1: queued interval networks timed turn by turn" in doc.read_text()


@pytest.mark.parametrize("args, needle", [
    ("benchmarks/results/tiny table=nope", "unknown table 'nope'; choose one of all, baselines"),
    ("benchmarks/results/tiny", "unknown table 'None'"),
    ("benchmarks/results/tiny table=all colour=red", "a results marker reads"),
    ("benchmarks/results/missing table=all", "results/missing/results.json': cannot be read (no such file"),
    ("benchmarks/results/tiny table=all data=digits", "no 'all' table for digits in its results"),
])
def test_a_bad_marker_is_one_line(tmp_path, args, needle):
    results_folder(tmp_path)
    page(tmp_path, args=args)
    with pytest.raises(UserError, match=re.escape(needle)):
        run(tmp_path, check=True)


def test_the_repository_tables_equal_their_results_files():
    marked = [p for p in documents(ROOT) if "<!-- results: " in p.read_text(encoding="utf-8")]
    assert marked, "no table in README.md or docs/ is marked with its results file"
    assert "<!-- results-summary: benchmarks/results/summary.toml -->" in (ROOT / "README.md").read_text()
    assert run(ROOT, check=True) == []


SPEC = """columns = ["data", "target `empirical`"]

[[rows]]
name = "2-D points"

[[rows.cells]]
text = "**{}** (moons; by the sample metric where recorded: {}; range {})"
figures = [
  { study = "tiny", data = "moons", variant = "empirical" },
  { study = "tiny", data = "moons", variant = "empirical", key = ["metric", "nll"] },
  { study = "tiny", data = "moons", variant = "empirical", stat = "range" },
]
"""


def summary_page(root: Path, spec: str = SPEC) -> Path:
    (root / "benchmarks" / "results" / "summary.toml").write_text(spec)
    readme = root / "README.md"
    readme.write_text("# x\n\n<!-- results-summary: benchmarks/results/summary.toml -->\nstale\n<!-- /results -->\n")
    return readme


def test_a_summary_table_gathers_its_figures_from_the_results_files_and_is_checked(tmp_path):
    results_folder(tmp_path)
    readme = summary_page(tmp_path)
    assert run(tmp_path, check=True) == ["README.md: benchmarks/results/summary.toml"]
    run(tmp_path)
    text = readme.read_text()
    # plain falls from 5 to 3 in 4 s; empirical passes 3 at 1.5 s (linear between 4 at 1 s and 2 at 2 s):
    # 1.5 / 4 = 0.375 on every seed, in the NLL and in the metric (NLL / 10) alike
    assert "| 2-D points | **0.38x** (moons; by the sample metric where recorded: 0.38x by swd; range 0.38x) |" in text
    assert "- From `benchmarks/results/tiny/results.json`: `scorefast bench --data moons --methods empirical`" in text
    assert text.startswith("# x\n\n<!-- results-summary:") and text.endswith("<!-- /results -->\n")
    assert run(tmp_path, check=True) == []
    readme.write_text(text.replace("**0.38x**", "**0.35x**"))  # a figure edited by hand
    assert run(tmp_path, check=True) == ["README.md: benchmarks/results/summary.toml"]


@pytest.mark.parametrize("spec, needle", [
    ("columns = [", "summary file '"),
    ('columns = ["data"]', "needs 'columns' (a list of header texts) and [[rows]]"),
    (SPEC.replace('[[rows.cells]]', '[[rows.cells]]\ntext = "{}"\n[[rows.cells]]', 1), "row 1 needs a 'name' and 1"),
    (SPEC.replace("; range {})", ")"), "cell 1: 'text' needs one {} per figure (3)"),
    (SPEC + '\n[[rows]]\nname = "images"\ncells = ["1.0x"]\n', "row 2 needs a 'name' and 1 [[rows.cells]]"),
    (SPEC.replace("figures = [", "figures = ['x', ", 1), "cell 1: 'figures' is a list of tables"),
    (SPEC.replace('variant = "empirical" },', 'variant = "empirical", colour = "red" },', 1), "'colour' is missing"),
    (SPEC.replace('stat = "range"', 'stat = "mean"'), "stat is one of median, range and key one of nll, metric"),
    (SPEC.replace('stat = "range"', 'reference = "batch-2x"'), "reference 'batch-2x': a results file keeps"),
    (SPEC.replace('variant = "empirical" },', 'variant = "knn" },', 1), "no row 'knn' on data 'moons'"),
    (SPEC.replace('study = "tiny"', 'study = "gone"', 1), "results/gone/results.json': cannot be read"),
])
def test_a_bad_summary_file_is_one_line(tmp_path, spec, needle):
    results_folder(tmp_path)
    summary_page(tmp_path, spec)
    with pytest.raises(UserError, match=re.escape(needle)) as caught:
        run(tmp_path, check=True)
    assert "\n" not in str(caught.value)


def test_a_key_list_falls_back_to_the_nll_when_a_file_has_no_metric_ratio(tmp_path):
    file = results_folder(tmp_path) / "results.json"
    results = json.loads(file.read_text())
    for table in results["tables"]:
        for row in table["rows"]:
            row["ratio_other"] = [[v * 2, bound] for v, bound in row.pop("ratio_other")]
    file.write_text(json.dumps(results))
    readme = summary_page(tmp_path)
    run(tmp_path)
    assert "by the sample metric where recorded: 0.75x by swd;" in readme.read_text()  # the metric's ratios, doubled
    for table in results["tables"]:
        for row in table["rows"]:
            del row["ratio_other"]
    file.write_text(json.dumps(results))
    run(tmp_path)
    assert "by the sample metric where recorded: 0.38x;" in readme.read_text()
    readme.write_text(readme.read_text().replace("summary.toml", "gone.toml", 1))
    with pytest.raises(UserError, match=re.escape("summary file 'benchmarks/results/gone.toml' does not exist")):
        run(tmp_path, check=True)
