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

A summary table that gathers cells from several studies sits between
``<!-- results-summary: benchmarks/results/summary.toml -->`` and ``<!-- /results -->``: its TOML file lists
the columns and, per row, each cell's text with ``{}`` where a figure goes and, per figure, the study folder
(beside the TOML file), the data label, the variant, its reference, the key (``nll``, ``metric``, or a list:
the first the results file has a ratio for) and ``median`` or ``range`` of the per-seed time ratios, as the
study's report prints them. Under the table, one line per study names its file and command (``caption``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..checkpoint import atomic_write, read_json
from ..errors import UserError, run_command
from .curves import TIMING
from .rejudging import left_out_text
from .report import as_ratio, middle, ratio_cell, spread3
from .scenarios import BASELINE, GROUPS
from .shapes import RESULTS, checked

MARKER = re.compile(r"(<!-- results(?P<summary>-summary)?: (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results -->)",
                    re.DOTALL)
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
    """Where the table comes from: the file, the command, the machine, the date and the timing rules (and, for a
    study re-judged from the earlier rules, what it left out)."""
    m = results.get("machine", {})
    when = f", {results['date']}" if results.get("date") else ", date not recorded"
    line = (f"From `{file}`: `{results['command']}` ({m.get('cpus', '?')} CPUs, torch {m.get('torch', '?')}, "
            f"{m.get('threads', '?')} threads{when}).")
    if results.get("timing", 1) != TIMING:
        line += (f" Timed under the bench's earlier rules ({results.get('timing', 1)}: queued interval networks "
                 "timed turn by turn, unequal cores, no margin); its command run again measures it anew.")
    if results.get("rejudged_from"):
        line += (f" Re-judged by the bench's current rules from a study timed under timing "
                 f"{results['rejudged_from']}; {left_out_text(results)}.")
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


FIGURE = {"study": str, "data": str, "variant": str, "reference": str, "key": (str, list), "stat": str}
STATS = {"median": "the median of the per-seed time ratios", "range": "their range, as the study's report prints it"}
KEYS = {"nll": "time to plain's final held-out NLL", "metric": "time to plain's final sample metric"}


def read_spec(file: Path) -> dict:
    """A summary table's TOML file, its shape checked: ``columns`` (header cells) and ``rows``, each with a
    ``name`` and one cell per column (``text`` with a ``{}`` per entry of ``figures``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        spec = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"summary file '{file}': cannot be read ({str(exc).splitlines()[0][:120]})") from None
    columns = spec.get("columns")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns) \
            or not isinstance(spec.get("rows"), list) or not spec["rows"]:
        raise UserError(f"summary file '{file}': needs 'columns' (a list of header texts) and [[rows]]")
    for i, row in enumerate(spec["rows"], 1):
        row = row if isinstance(row, dict) else {}
        cells = row.get("cells")
        if not isinstance(row.get("name"), str) or not isinstance(cells, list) or len(cells) != len(columns) - 1 \
                or not all(isinstance(c, dict) for c in cells):
            raise UserError(f"summary file '{file}': row {i} needs a 'name' and {len(columns) - 1} [[rows.cells]] "
                            f"(one per column after the first)")
        for j, cell in enumerate(cells, 1):
            where = f"summary file '{file}': row {i} ('{row['name']}'), cell {j}"
            figures = cell.get("figures", [])
            if not isinstance(figures, list) or not all(isinstance(f, dict) for f in figures):
                raise UserError(f"{where}: 'figures' is a list of tables ({{ study = ..., data = ..., ... }})")
            if not isinstance(cell.get("text"), str) or cell["text"].count("{}") != len(figures):
                raise UserError(f"{where}: 'text' needs one {{}} per figure ({len(figures)})")
            for f in figures:
                wrong = [k for k in f if k not in FIGURE or not isinstance(f[k], FIGURE[k])] + \
                    [k for k in ("study", "data", "variant") if k not in f]
                if wrong:
                    raise UserError(f"{where}: a figure needs study, data, variant (text) and may set reference, "
                                    f"key, stat; '{wrong[0]}' is missing or wrong")
                if f.get("stat", "median") not in STATS or not set(always_list(f.get("key", "nll"))) <= set(KEYS):
                    raise UserError(f"{where}: stat is one of {', '.join(STATS)} and key one of {', '.join(KEYS)}")
                if f.get("reference", BASELINE) != BASELINE:
                    raise UserError(f"{where}: reference '{f['reference']}': a results file keeps the per-seed "
                                    f"ratios against {BASELINE} only")
    return spec


def always_list(value: str | list) -> list:
    return value if isinstance(value, list) else [value]


def figure(results: dict, f: dict, file: str) -> str:
    """One figure of a summary cell: the median time ratio (or the range) of a variant against plain, from the
    study's table of its data set; a median of bounds is no number, so a cell whose seeds include a bound
    prints their range. A ratio in the sample metric names it."""
    row, table = next(((r, t) for t in results["tables"] if t["data"] == f["data"] for r in t["rows"]
                       if r["variant"] == f["variant"]), (None, None))
    if row is None:
        raise UserError(f"{file}: no row '{f['variant']}' on data '{f['data']}' in its tables")
    target = table.get("target", "nll")
    other = row.get("ratio_other", row.get("ratio_metric"))  # the other key's ratios ("ratio_metric": older files)
    by_key = {target: row["ratio"], **({"metric" if target == "nll" else "nll": other} if other is not None else {})}
    key = next((k for k in always_list(f.get("key", "nll")) if k in by_key), None)
    if key is None:
        raise UserError(f"{file}: its '{f['data']}' table has no time ratio in {f.get('key')}")
    ratios = by_key[key]
    if not ratios:
        return row["status"]
    rs = [as_ratio(r) for r in ratios]
    if f.get("stat", "median") == "range" or any(b not in ("=", "never") for _, b in rs):
        text = ratio_cell(ratios)
    else:
        mid = middle([v for v, _ in rs])
        text = "never" if mid is None else f"{mid:.2f}x"
    return text + (f" by {table['metric']}" if key == "metric" else "")


def summary(root: Path, spec_path: str) -> str:
    """The region of a ``results-summary`` marker: the table its TOML file describes, then one line per study
    naming its results file and command."""
    file = root / spec_path
    if not file.is_file():
        raise UserError(f"summary file '{spec_path}' does not exist")
    spec = read_spec(file)
    studies: dict[str, dict] = {}
    lines = ["| " + " | ".join(spec["columns"]) + " |", "|" + "---|" * len(spec["columns"])]
    for row in spec["rows"]:
        cells = []
        for cell in row["cells"]:
            texts = []
            for f in cell.get("figures", []):
                source = f"{Path(spec_path).parent.as_posix()}/{f['study']}/results.json"
                if source not in studies:
                    studies[source] = load(file.parent / f["study"])
                texts.append(figure(studies[source], f, source))
            pieces = cell["text"].split("{}")
            cells.append(pieces[0] + "".join(t + rest for t, rest in zip(texts, pieces[1:])))
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {caption(r, source)}" for source, r in studies.items()]) + "\n"


def regenerate(text: str, root: Path, where: str) -> tuple[str, list[str]]:
    """``text`` with every marked table made again from its results file; the markers whose table changed."""
    changed: list[str] = []

    def one(m: re.Match) -> str:
        if m.group("summary"):
            body = summary(root, m.group("args").strip())
        else:
            folder, options = parse(m.group("args"), where)
            body = render(load(root / folder), options["table"], options.get("data"), f"{folder}/results.json")
        if body != m.group("body"):
            changed.append(f"{where}: {m.group('args')}")
        return m.group(1) + body + m.group(5)

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
