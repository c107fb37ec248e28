"""The README's and the documentation's examples run, and the generated CLI reference lists every flag.

Every fenced ``python`` or ``bash`` block of README.md and docs/**/*.md is executed, the blocks of one file
in order, in one fresh folder (so a later block may use a run an earlier one trained), with the
``scorefast`` command of this environment. A block preceded by ``<!-- no-run -->`` is not run (installs,
``make`` targets, multi-machine launches; a note after the marker says why). Training budgets are shrunk
so that the examples run in seconds: ``--steps N`` and ``steps=N`` (N >= 1000) become N // 100, a bench's
``--budget Nsteps`` becomes ``--quick`` (the bench's tiny sizes and budgets) and its ``--seeds N`` one seed,
and ``--time-budget S`` becomes 2 seconds; nothing else is changed.
The site itself is built with warnings as errors by ``make docs``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)]
FENCE = re.compile(r"^(?P<marker><!-- no-run[^\n]*-->[ \t]*\n)?```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```[ \t]*$",
                   re.M | re.S)
RUNNABLE = ("python", "bash")
SHRINK = [(re.compile(r"--steps (\d+)"), lambda m: f"--steps {max(5, int(m[1]) // 100)}"),
          (re.compile(r"\bsteps=(\d{4,})"), lambda m: f"steps={max(5, int(m[1]) // 100)}"),
          (re.compile(r"--budget \d+steps"), lambda m: "--quick"),
          (re.compile(r"--seeds \d+"), lambda m: "--seeds 1"),
          (re.compile(r"--time-budget \d+"), lambda m: "--time-budget 2")]


def blocks(page: Path) -> list[tuple[int, str, str]]:
    """(line, language, code) of every runnable block of ``page`` that is not marked no-run."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start("code")) + 1, m["lang"], m["code"]) for m in FENCE.finditer(text)
            if m["lang"] in RUNNABLE and not m["marker"]]


def shrink(code: str) -> str:
    for pattern, repl in SHRINK:
        code = pattern.sub(repl, code)
    return code


def test_the_readme_stays_short():
    """The README is the front page: at most 200 lines, the rest lives in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_blocks_are_found_and_marked_ones_are_left_out(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```bash\necho 1\n```\n\n<!-- no-run -->\n```bash\nmake demo\n```\n\n"
                    "<!-- no-run: needs a GPU -->\n```python\nimport cuda\n```\n\n```text\nnot code\n```\n\n"
                    "```python\nx = 1\n```\n")
    assert [(lang, code) for _, lang, code in blocks(page)] == [("bash", "echo 1\n"), ("python", "x = 1\n")]
    assert shrink("scorefast train --steps 4000 --n 2000; Config(steps=2000); run.sample(9, steps=20); "
                  "--budget 2000steps --seeds 3 --time-budget 60") == \
        ("scorefast train --steps 40 --n 2000; Config(steps=20); run.sample(9, steps=20); "
         "--quick --seeds 1 --time-budget 2")


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_examples_of_a_page_run(page, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    for line, lang, code in blocks(page):
        command = [sys.executable, "-c", shrink(code)] if lang == "python" else \
            ["bash", "-euo", "pipefail", "-c", shrink(code)]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"{page.relative_to(ROOT)}:{line}: the {lang} block failed "
                                      f"(exit {done.returncode})\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def train_flags() -> list[str]:
    """Every option string of ``scorefast train``, from the parser itself."""
    from scorefast.cli import build_parser

    sub = next(a for a in build_parser("train")._actions if isinstance(a, argparse._SubParsersAction))
    return [s for action in sub.choices["train"]._actions for s in action.option_strings]


def test_the_generated_references_list_every_flag_plugin_and_recipe(tmp_path):
    """Builds the docs' directives with Sphinx (text output): every flag of train, every name of a plug-in
    registry and every recipe is in what they render."""
    sphinx_build = pytest.importorskip("sphinx.cmd.build", reason="make test installs the docs extra")
    assert "```{cli-reference}" in (DOCS / "cli.md").read_text()
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(f"import sys\nsys.path.insert(0, {str(DOCS / '_ext')!r})\n"
                                 "extensions = ['myst_parser', 'generated']\n")
    (src / "index.md").write_text("# CLI\n\n```{cli-reference}\n```\n\n# Times\n\n"
                                  "```{plugin-table} scorefast.time_sampling.TIME_SAMPLERS\n```\n\n"
                                  "# Data\n\n```{plugin-table} scorefast.choices.DATASETS\n```\n\n"
                                  "# Recipes\n\n```{recipe-table}\n```\n")
    assert sphinx_build.build_main(["-q", "-W", "-b", "text", str(src), str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "index.txt").read_text()
    flags = train_flags()
    assert len(flags) > 50 and "--steps" in flags
    listed = set(re.findall(r"(?<![\w-])(-{1,2}[\w][\w-]*)", text))
    assert [f for f in flags if f not in listed] == []
    for command in ("train", "sample", "nll", "evaluate", "fp", "sweep-T", "bench"):
        assert f"scorefast {command}\n" in text
    from scorefast.config.recipes import RECIPES
    from scorefast.time_sampling import TIME_SAMPLERS

    times = text[text.index("Times\n"):text.index("Data\n")]
    assert all(f'"{name}"' in times for name in TIME_SAMPLERS.names()) and "--adapt-every" in times
    from scorefast.choices import DATASETS

    sets = text[text.index("Data\n"):text.index("Recipes\n")]
    assert all(f'"{name}"' in sets for name in DATASETS) and DATASETS.help("sharpbroad")[:40] in sets
    assert all(f'"{name}"' in text[text.index("Recipes\n"):] for name in RECIPES)
