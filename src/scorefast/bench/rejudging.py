"""A study folder timed under the bench's earlier rules (timing 1), judged again by today's.

Under both rules the wall-clock of a run that trained one network in one process is the trainer's own 'wall'
of that network (its steps and the precomputation the recipe put there; ``curves.run_wall`` adds no queue and
no launch), so such rows compare with new ones as they are. Interval networks were timed turn by turn and
workers without their launch, so those rows are left out, named, with the variants paired only with them;
every table, ratio and verdict of the kept rows is made again by ``report``'s own rule.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import read_json, write_json
from ..errors import UserError
from .curves import TIMING
from .report import Tables, json_safe, write_markdown
from .scenarios import BASELINE
from .shapes import CURVE, RESULTS, STUDY, checked


def rejudge(folder: str | Path) -> dict:
    """Judge a study folder timed under the earlier rules (timing 1) again by today's: keep the variants whose
    every run trained one network in one process (its wall-clock is the same under both rules), on the cores
    plain had; leave out, and name, the others and the variants whose method or control was left out; make
    every table, ratio and verdict anew from the kept rows. results.json is marked ``"timing": TIMING,
    "rejudged_from": 1``, report.md rewritten; the pictures stay the earlier study's. Returns the results."""
    out = Path(folder)
    file, saved = out / "results.json", out / "study.json"
    if not (file.is_file() and saved.is_file()):
        raise UserError(f"--rejudge '{out}' is not a study folder (it needs the results.json and study.json that "
                        "scorefast bench --out writes)")
    remedy = "restore it from version control; nothing was re-judged"
    old = checked(read_json(file, "results.json"), RESULTS, file, remedy)
    variants = checked(read_json(saved, "study.json"), STUDY, saved, remedy)["variants"]
    timing = old.get("timing", 1)
    if timing != 1:
        raise UserError(f"--rejudge '{out}': its results are timed under timing {timing}, not the earlier rules "
                        f"(1); {'nothing to re-judge' if timing == TIMING else 'choose a folder of timing 1'}")
    for row in old["rows"]:
        if row.get("status") == "ok":
            checked(row.get("curve"), CURVE, file, remedy)
    rows = [{**r, "resources": r.get("resources") or resources_of(variants.get(r["data"], {}).get(r["variant"], {}),
                                                                  old.get("machine", {}))} for r in old["rows"]]
    left = left_out(rows, variants)
    kept = [r for r in rows if (r["data"], r["variant"]) not in left]
    tables = Tables(kept)
    every = tables.all_tables()
    made = {k: v for k, v in old.get("pictures", {}).items() if k in tables.parts
            or any(k == f"{t['data']}: {t['group']}" for t in every)}
    named = [{"data": d, "variant": v, "why": why} for (d, v), why in left.items()]
    results = json_safe({**old, "tables": every, "rows": kept, "pictures": made, "timing": TIMING,
                         "rejudged_from": timing, "left_out": named})
    head = (f"Re-judged by the bench's current rules (timing {TIMING}) from a study timed under timing {timing} "
            f"(`scorefast bench --rejudge {out}`): only the variants whose every run trained one network in one "
            "process are kept (their wall-clock is the same under both rules: precomputation included, no queue, "
            f"no launch), each on plain's cores; {left_out_text(results)}. The pictures are the earlier "
            "study's (every variant drawn, the left-out ones too). The study's command, which measures it anew "
            f"into a new --out:\n\n    {old['command']}\n")
    write_markdown(out, head, results)
    write_json(file, results)
    return results


def resources_of(flags: dict, machine: dict) -> dict:
    """A run's workers and torch threads from its variant's flags (the machine's threads where they set none)."""
    return {"workers": int(flags.get("workers") or 1), "threads": flags.get("threads") or machine.get("threads")}


def left_out(rows: list[dict], variants: dict) -> dict[tuple[str, str], str]:
    """(data, variant) -> why it cannot be judged by today's rules from timing-1 runs: several networks (queued
    networks were timed turn by turn) or workers (no launch cost), other cores than plain's; then, until
    nothing changes, a method whose control is left out and a control whose every method is (a one-network run
    in one process has the same wall-clock under both rules: its own steps and precomputation)."""
    tables, left = Tables(rows), {}
    for data in tables.parts:
        plain = tables.of(data, BASELINE)[0]["resources"] if tables.of(data, BASELINE) else None
        for name in tables.variants(data):
            mine = tables.of(data, name)
            flags = variants.get(data, {}).get(name, {})
            networks = max([r["curve"]["networks"] for r in mine if r["status"] == "ok"]
                           or [int(flags.get("intervals") or 1)])
            cores = mine[0]["resources"]
            if networks > 1:
                left[data, name] = f"{networks} networks"
            elif cores["workers"] > 1:
                left[data, name] = f"{cores['workers']} workers"
            elif flags and plain and cores["threads"] != plain["threads"]:
                left[data, name] = f"{cores['threads']} threads against plain's {plain['threads']}"
    changed = True
    while changed:
        changed = False
        for data in tables.parts:
            for name in tables.variants(data):
                if (data, name) in left:
                    continue
                controls = [c for c in tables.controls_of(data, name) if (data, c) in left]
                methods = [m for m in tables.variants(data) if name in tables.controls_of(data, m)]
                if controls:
                    left[data, name] = f"its control {controls[0]} left out"
                elif methods and all((data, m) in left for m in methods):
                    left[data, name] = f"the control of {' and '.join(methods)} only"
                changed = changed or (data, name) in left
    return left


def left_out_text(results: dict) -> str:
    """The variants a re-judged study left out, each with why and where ('intervals-2 (2 networks; on every
    data set)'), or 'no variant left out'."""
    named = results.get("left_out", [])
    if not named:
        return "no variant left out"
    parts = list(dict.fromkeys([*(r["data"] for r in results["rows"]), *(n["data"] for n in named)]))
    by: dict[tuple[str, str], list[str]] = {}
    for n in named:
        by.setdefault((n["variant"], n["why"]), []).append(n["data"])
    said = [f"{v} ({why}; on {'every data set' if len(parts) > 1 and data == parts else ', '.join(data)})"
            for (v, why), data in by.items()]
    return ("left out (not re-judged: timed turn by turn under the earlier rules, or paired only with what was): "
            + ", ".join(said))


__all__ = ["left_out", "left_out_text", "rejudge", "resources_of"]
