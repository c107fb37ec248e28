"""Tables in the documentation generated from the bench's results files, and a check that they still agree.

A table in README.md or a docs page sits between two markers:

    <!-- results: benchmarks/results/full table=all -->
    ...generated...
    <!-- /results -->

``table=`` names a method family of ``scenarios.GROUPS`` (every data set's table of it) or ``all`` (every
family); ``data=LABEL`` keeps one data set. What lies between the markers is a line naming the results file,
its command, machine and timing rules, then the table, all made from ``results.json`` alone, so that every
figure has its source and its command beside it. ``python -m scorefast.bench.tables`` rewrites the marked
tables in place; ``--check`` rewrites nothing and exits 1 naming each table that differs from its file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..checkpoint import atomic_write, read_json
from ..errors import UserError, run_command
from .curves import TIMING
from .report import ratio_cell, spread3
from .scenarios import GROUPS
from .shapes import RESULTS, checked

MARKER = re.compile(r"(<!-- results: (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL)
KINDS = {"all": "every method family's rows", **{g: f"the rows of the '{g}' tables" for g in GROUPS}}


def parse(args: str, where: str) -> tuple[str, dict[str, str]]:
    """The results folder and the options (table=, data=) of a marker."""
    words = args.split()
    options = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    if not words or len(options) != len(words) - 1 or set(options) - {"table", "data"}:
        raise UserError(f"{where}: a results marker reads '<!-- results: FOLDER table=NAME [data=LABEL] -->', "
                        f"got '{args}'")
    if options.get("table") not in KINDS:
        raise UserError(f"{where}: unknown table '{options.get('table')}'; choose one of {', '.join(KINDS)}")
    return words[0], options


def load(folder: Path) -> dict:
    file = folder / "results.json"
    return checked(read_json(file, "results.json"), RESULTS, file, "run its bench command again to rewrite it")


def caption(results: dict, file: str) -> str:
    """Where the table comes from: the file, the command, the machine, the date and the timing rules."""
    m = results.get("machine", {})
    when = f", {results['date']}" if results.get("date") else ", date not recorded"
    line = (f"From `{file}`: `{results['command']}` ({m.get('cpus', '?')} CPUs, torch {m.get('torch', '?')}, "
            f"{m.get('threads', '?')} threads{when}).")
    if results.get("timing", 1) != TIMING:
        line += (f" Timed under the bench's earlier rules ({results.get('timing', 1)}: queued interval networks "
                 "timed turn by turn, unequal cores, no margin); its command run again measures it anew.")
    return line


def verdict_text(table: dict, row: dict) -> str:
    """The row's verdict against plain, and against each control where its table says (its sentence)."""
    head = f"**{row['variant']}** against plain: "
    said = next((s for s in table["sentences"] if s.startswith(head)), None)
    return said[len(head):].rstrip(".") if said else row["verdict"]


def render(results: dict, kind: str, data: str | None, file: str) -> str:
    """The marked region's text: the caption line and the table."""
    tables = [t for t in results["tables"] if (kind == "all" or t["group"] == kind)
              and (data is None or t["data"] == data)]
    if not tables:
        raise UserError(f"{file}: no '{kind}' table{f' for {data}' if data else ''} in its results")
    target = " or ".join(dict.fromkeys("NLL" if t.get("target", "nll") == "nll" else t["metric"] for t in tables))
    lines = [caption(results, file), "", f"| data | variant | resources | final NLL | final sample metric | x plain "
             f"(time to plain's final {target}) | verdict against plain; against its controls |",
             "|---|---|---|---|---|---|---|"]
    seen: set[tuple[str, str]] = set()
    for t in tables:
        for r in t["rows"]:
            if (t["data"], r["variant"]) in seen:
                continue
            seen.add((t["data"], r["variant"]))
            if r["status"] != "ok" and not r["final_nll"]:
                lines.append(f"| {t['data']} | {r['variant']} | | {r['status']}: {r['error']} | | | {r['verdict']} |")
                continue
            lines.append(f"| {t['data']} | {r['variant']} | {r.get('resources', '?')} | "
                         f"{spread3(r['final_nll'])} {t['unit']} | {spread3(r['final_metric'], '.4g')} "
                         f"({t['metric']}) | {ratio_cell(r['ratio'])} | {verdict_text(t, r)} |")
    return "\n".join(lines) + "\n"


def regenerate(text: str, root: Path, where: str) -> tuple[str, list[str]]:
    """``text`` with every marked table made again from its results file; the markers whose table changed."""
    changed: list[str] = []

    def one(m: re.Match) -> str:
        folder, options = parse(m.group("args"), where)
        body = render(load(root / folder), options["table"], options.get("data"), f"{folder}/results.json")
        if body != m.group("body"):
            changed.append(f"{where}: {m.group('args')}")
        return m.group(1) + body + m.group(4)

    return MARKER.sub(one, text), changed


def documents(root: Path) -> list[Path]:
    """The files whose tables are generated: README.md and the docs pages."""
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def run(root: Path, files: list[Path] | None = None, check: bool = False) -> list[str]:
    """Rewrite (or, with ``check``, only compare) the marked tables of ``files``; the tables that differed."""
    differ = []
    for path in files or documents(root):
        text = path.read_text(encoding="utf-8")
        new, changed = regenerate(text, root, str(path.relative_to(root) if path.is_relative_to(root) else path))
        differ += changed
        if changed and not check:
            atomic_write(path, lambda f, new=new: f.write(new.encode("utf-8")), what="document")
    return differ


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scorefast.bench.tables", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md and docs/**/*.md)")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository (results folders are relative to it)")
    p.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if a table differs from its file")
    args = p.parse_args(argv)

    def body() -> int:
        differ = run(args.root, args.files or None, args.check)
        for line in differ:
            print(f"{'differs from its results' if args.check else 'rewritten'}: {line}")
        return 1 if args.check and differ else 0
    return run_command(body)


__all__ = ["KINDS", "documents", "main", "regenerate", "render", "run"]

if __name__ == "__main__":
    sys.exit(main())
