"""The report of a study: OUT/report.md, OUT/results.json and the pictures beside them.

Per data set and method family, one table: every variant's resources, final held-out NLL and sample metric, its
training seconds, and its time to the target - plain's final NLL (or sample metric) of the same seed - as a ratio to
plain's own time (``evaluate.time_to``: linear between snapshots, narrowed by ``bench.bracket``), paired by seed.
Under the table one sentence per method says what it did, by one rule with a margin (``verdict``: the interval of
the per-seed ratios must lie wholly below 1), against plain and against each of its controls (the control made for
the same end time where there are several). A time met at the first snapshot, or a reference that never reaches
the target (timed at its whole budget), gives a bound, never a measured ratio.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write, write_json
from ..evaluate import time_to
from .curves import TIMING, as_pairs
from .scenarios import BASELINE, GROUPS, SCENARIOS

UNITS = {"bpd": "bits/dim", "nll_nats": "nats"}


Ratio = tuple  # (value or None, bound): bound '=' measured, '<=' an upper bound, '>=' a lower one, '?' neither


def as_ratio(r) -> Ratio:
    """A ratio as (value, bound); a bare number is a measured one, None one that never reached the target."""
    if isinstance(r, (tuple, list)):
        return tuple(r)
    return (None, "never") if r is None else (float(r), "=")


def interval(ratios: Sequence) -> tuple[float, float]:
    """The range the per-seed ratios of time to target span, their bounds included: an upper bound
    ('<= x', met at the first snapshot) leaves the low end open (0), a lower bound the high end (inf)."""
    rs = [as_ratio(r) for r in ratios if as_ratio(r)[0] is not None]
    lo = min(0.0 if b in ("<=", "?") else v for v, b in rs)
    hi = max(math.inf if b in (">=", "?") else v for v, b in rs)
    return lo, hi


def span(lo: float, hi: float) -> str:
    """An interval of ratios as text: '0.35-0.48x', '<= 0.11x', '>= 1.20x', '0.50x' when both ends agree."""
    if lo == 0 and math.isinf(hi):
        return "unbounded"
    if lo == 0:
        return f"<= {hi:.2f}x"
    if math.isinf(hi):
        return f">= {lo:.2f}x"
    return f"{lo:.2f}x" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}x"


def verdict(ratios: Sequence, failed: bool = False) -> str:
    """The one rule, with a margin: 'helps' only when the whole interval of the per-seed ratios (``interval``)
    lies below 1, 'slower' when it lies above 1, else 'no measurable difference' (so with one seed, which has
    no margin); 'failed' for a failed variant, and a variant that misses the target on a seed says so."""
    if failed:
        return "failed"
    if not ratios:
        return "no verdict (its reference has no result)"
    rs = [as_ratio(r) for r in ratios]
    never = sum(v is None for v, _ in rs)
    if never:
        return f"does not reach the target on {never} of {len(rs)} seeds"
    rng = span(*interval(rs))
    if len(rs) == 1:
        return f"no measurable difference: one seed, no margin ({rng})"
    lo, hi = interval(rs)
    if hi < 1:
        return f"helps: {rng} time to target ({len(rs)} seeds)"
    if lo > 1:
        return f"slower: {rng} time to target ({len(rs)} seeds)"
    return f"no measurable difference ({rng}, {len(rs)} seeds)"


def time_ratio(curve: list[dict], reference: list[dict], target: float, key: str = "nll") -> Ratio:
    """(t(curve reaches target) / t(reference reaches it), bound); (None, 'never') if the curve never does.
    A time met at a curve's first snapshot is only an upper bound (``evaluate.time_to``), so the ratio is
    then '<=' (the variant's) or '>=' (the reference's). A reference that never reaches the target is timed
    at its last point (its whole budget): the ratio is then '<=', a bound that can only count against the
    curve."""
    mine, exact = time_to(as_pairs(curve, key), target, bounded=True)
    if mine is None:
        return None, "never"
    theirs, their_exact = time_to(as_pairs(reference, key), target, bounded=True)
    upper, lower = not exact, not their_exact
    if theirs is None:
        theirs, upper, lower = reference[-1]["wall"], True, False
    bound = "?" if upper and lower else "<=" if upper else ">=" if lower else "="
    return mine / max(theirs, 1e-12), bound


def middle(values: Sequence[float | None]) -> float | None:
    """The median of some values, None ranking last (a median that falls on a None is None: 'never')."""
    v = sorted(values, key=lambda x: (x is None, x))
    half = len(v) // 2
    return v[half] if len(v) % 2 or v[half] is None or v[half - 1] is None else (v[half - 1] + v[half]) / 2


def spread3(values: Sequence[float | None], spec: str = ".3f") -> str:
    """min / median / max as text (one value when they agree); None ranks last and reads 'never'."""
    if not values:
        return "-"
    v = sorted(values, key=lambda x: (x is None, x))
    parts = ["never" if x is None else format(x, spec) for x in (v[0], middle(v), v[-1])]
    return parts[0] if len(set(parts)) == 1 else " / ".join(parts)


class Tables:
    """The rows of a study grouped by data set and variant, with plain's final NLL per seed as the target."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.parts = list(dict.fromkeys(r["data"] for r in rows))

    def of(self, data: str, variant: str) -> list[dict]:
        return [r for r in self.rows if r["data"] == data and r["variant"] == variant]

    def ok(self, data: str, variant: str) -> dict[int, dict]:
        return {r["seed"]: r for r in self.of(data, variant) if r["status"] == "ok"}

    def variants(self, data: str) -> list[str]:
        return list(dict.fromkeys(r["variant"] for r in self.rows if r["data"] == data))

    def key(self, data: str) -> str:
        """What a seed's target is set on: the held-out NLL, or the sample metric (``Protocol.target``; ssim_gap)."""
        ok = [r for r in self.rows if r["data"] == data and r["status"] == "ok"]
        return "metric" if ok and (ok[0].get("target") == "metric" or ok[0]["curve"]["metric_name"] == "ssim_gap") \
            else "nll"

    def targets(self, data: str, key: str = "nll") -> dict[int, float]:
        return {s: r["curve"]["points"][-1][key] for s, r in self.ok(data, BASELINE).items()
                if r["curve"]["points"][-1][key] is not None}

    def ratios(self, data: str, variant: str, reference: str, key: str = "nll") -> list[Ratio]:
        """Per seed (where the reference ran and plain set a target): the variant's time ratio to the
        reference, paired by seed, with its bound (``time_ratio``)."""
        mine, theirs, targets = self.ok(data, variant), self.ok(data, reference), self.targets(data, key)
        seeds = sorted(s for s in theirs if s in targets and any(r["seed"] == s for r in self.of(data, variant)))
        return [time_ratio(mine[s]["curve"]["points"], theirs[s]["curve"]["points"], targets[s], key)
                if s in mine else (None, "never") for s in seeds]

    def scenario(self, data: str, variant: str):
        return SCENARIOS[self.of(data, variant)[0]["scenario"]]

    def controls_of(self, data: str, variant: str) -> list[str]:
        """The variants that control ``variant``: each of the controls its study named (its scenario's own in a
        row that names none), a baseline among them; the one made for the same end time where a control runs
        once per T (the SpeeD-style split at the variant's own T)."""
        first = self.of(data, variant)[0]
        mine = first.get("variant_T")
        found = []
        for control in first.get("controls", self.scenario(data, variant).controls):
            labels = [v for v in self.variants(data) if self.of(data, v)[0]["scenario"] == control]
            paired = [v for v in labels if self.of(data, v)[0].get("variant_T") in (None, mine)]
            found += paired[:1] or labels[:1]
        return found

    def failed(self, data: str, variant: str) -> bool:
        return any(r["status"] == "failed" for r in self.of(data, variant))

    def members(self, data: str, group: str) -> list[str]:
        """plain, the group's variants, then the controls its methods name (from other groups too)."""
        present = self.variants(data)
        own = [v for v in present if self.scenario(data, v).group == group]
        controls = [c for v in own for c in self.controls_of(data, v)]
        ordered = [v for v in own if v not in controls] + controls
        return list(dict.fromkeys(([BASELINE] if group != "baselines" else []) + ordered))

    def same_as_plain(self, data: str, variant: str) -> bool:
        """Whether every seed of ``variant`` ran the very configuration of plain (the same run directory)."""
        mine, plain = self.ok(data, variant), self.ok(data, BASELINE)
        return bool(mine) and variant != BASELINE and all(s in plain and r["hash"] == plain[s]["hash"]
                                                          for s, r in mine.items())

    def row_verdict(self, data: str, name: str, ratios: list[Ratio]) -> str:
        if name == BASELINE:
            return "reference"
        if self.same_as_plain(data, name):
            return "the same configuration as plain"
        if all(r["status"] == "n/a" for r in self.of(data, name)):
            return "not applicable"
        return verdict(ratios, self.failed(data, name))

    def table(self, data: str, group: str) -> dict:
        """One table: its rows of statistics and its verdict sentences."""
        names = self.members(data, group)
        first = next((r for n in names for r in self.ok(data, n).values()), None)
        unit = UNITS.get(first["curve"]["nll_key"], "") if first else ""
        metric = first["curve"]["metric_name"] if first else "metric"
        key = self.key(data)
        other = "nll" if key == "metric" else "metric"
        out = {"data": data, "group": group, "unit": unit, "metric": metric, "target": key, "rows": [],
               "sentences": []}
        for name in names:
            mine, every = self.ok(data, name), self.of(data, name)
            failed = [r for r in every if r["status"] != "ok"]
            ratios = self.ratios(data, name, BASELINE, key)
            out["rows"].append({
                "variant": name, "role": every[0]["role"], "seeds": len(every),
                "error": failed[0]["error"] if failed else None, "status": failed[0]["status"] if failed else "ok",
                "final_nll": [r["curve"]["points"][-1]["nll"] for r in mine.values()],
                "final_metric": [r["curve"]["points"][-1]["metric"] for r in mine.values()],
                "wall": [r["curve"]["points"][-1]["wall"] for r in mine.values()],
                "time_to_target": [time_to(as_pairs(r["curve"]["points"], key),
                                           self.targets(data, key).get(s, math.nan)) for s, r in mine.items()],
                "ratio": ratios, "ratio_other": self.ratios(data, name, BASELINE, other),
                "resources": resources(mine.values()), "verdict": self.row_verdict(data, name, ratios)})
            if mine:
                out["sentences"] += [f"{name}, seed {r['seed']} failed: {r['error']}" for r in failed]
            sc = SCENARIOS[every[0]["scenario"]]
            if self.same_as_plain(data, name):
                out["sentences"].append(f"**{name}** is the same configuration as plain here (one run serves both).")
            elif sc.group == group and name != BASELINE and sc.role != "control" and every[0]["status"] != "n/a":
                said = [f"**{name}** against plain: {verdict(ratios, self.failed(data, name))}"]
                for control in self.controls_of(data, name):
                    against = verdict(self.ratios(data, name, control, key), self.failed(data, name))
                    said.append(f"against {control}: {against}")
                out["sentences"].append("; ".join(said) + ".")
        return out

    def all_tables(self) -> list[dict]:
        return [self.table(d, g) for d in self.parts for g in GROUPS if self.members(d, g) != [BASELINE]
                and self.members(d, g)]


def markdown(table: dict) -> list[str]:
    """A table as markdown lines."""
    unit, metric = table["unit"], table["metric"]
    target, other = (metric, "NLL") if table.get("target") == "metric" else ("NLL", metric)
    lines = [f"| variant | role | resources | final NLL [{unit}] | final {metric} | wall-clock s | time to plain's "
             f"final {target}, s | x plain ({target}) | x plain ({other}) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        if r["status"] != "ok" and not r["final_nll"]:
            why = "not applicable" if r["status"] == "n/a" else "failed"
            lines.append(f"| {r['variant']} | {r['role']} | | {why}: {r['error']} | | | | | | {r['verdict']} |")
            continue
        lines.append(f"| {r['variant']} | {r['role']} | {r.get('resources', '?')} | {spread3(r['final_nll'])} | "
                     f"{spread3(r['final_metric'], '.4g')} | {spread3(r['wall'], '.1f')} | "
                     f"{spread3(r['time_to_target'], '.1f')} | "
                     f"{ratio_cell(r['ratio'])} | {ratio_cell(r['ratio_other'])} | {r['verdict']} |")
    return lines


def ratio_cell(ratios: Sequence) -> str:
    """The per-seed ratios of a table cell: their interval (``span``), and how many seeds never got there."""
    rs = [as_ratio(r) for r in ratios]
    reached, never = [r for r in rs if r[0] is not None], sum(r[0] is None for r in rs)
    return ", ".join(([span(*interval(reached))] if reached else []) + ([f"{never} never"] if never else [])) or "-"


def resources(rows) -> str:
    """What a variant's runs trained on: one process with its threads, or workers x threads plus the
    median seconds torchrun's launch cost them."""
    rows = list(rows)
    if not rows or "resources" not in rows[0]:
        return "?"
    workers, threads = rows[0]["resources"]["workers"], rows[0]["resources"]["threads"]
    each = f"{threads} thread{'s' if threads != 1 else ''}" if threads else "default threads"
    if workers == 1:
        return f"1 process x {each}"
    launch = statistics.median(r["curve"].get("launch_seconds", 0.0) for r in rows)
    return f"{workers} workers x {each}, launch {launch:.1f} s"


def machine_info() -> dict:
    """Platform, cores, torch, the accelerator if any, and the load average (the machines are shared)."""
    import torch
    info = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    return info


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "data"


def curves_of(tables: Tables, data: str, names: list[str], key: str) -> dict[str, list[list[tuple[float, float]]]]:
    """Each variant's seed curves of ``key`` (a variant that is plain's very configuration is plain's line)."""
    return {v: [[(p["wall"], p[key]) for p in r["curve"]["points"] if p[key] is not None]
                for r in tables.ok(data, v).values()] for v in names
            if tables.ok(data, v) and not tables.same_as_plain(data, v)}


def heldout(run: str) -> np.ndarray:
    """The held-out split of a run's data (what its samples are compared with)."""
    from ..run import RunDir, split_data
    return split_data(RunDir(run).read_config())[1].x.numpy()


def fp_field(run: str, path: Path) -> None:
    """The Fokker-Planck score field that a grid-target run regressed on, solved again from its configuration
    (its training data, grid and bandwidth), as ``scorefast fp`` draws it."""
    from .. import plots
    from ..methods.fokker_planck import solve_fp
    from ..run import RunDir, split_data
    cfg = RunDir(run).read_config()
    sol = solve_fp(split_data(cfg)[0].x.flatten(1), cfg.sde.build(), grid=cfg.target.fp_grid,
                   steps=cfg.target.fp_steps, bandwidth=cfg.target.bandwidth, progress=False)
    plots.plot_fp(sol.axes, sol.t, sol.logp, sol.score, path)


def pictures(tables: Tables, every: list[dict], out: Path) -> dict[str, list[str]]:
    """Every picture of the study (file names relative to ``out``): quality against wall-clock per table
    (keyed 'data: group'); per data set the samples, the FP score field of a grid target, the T trade-off and
    the data-efficiency curve."""
    from .. import plots
    made: dict[str, list[str]] = {}
    for t in every:
        names = [r["variant"] for r in t["rows"] if r["status"] == "ok" or r["final_nll"]]
        name = f"quality_vs_wallclock_{slug(t['data'])}_{t['group']}.png"
        plots.plot_quality_curves([(f"held-out NLL [{t['unit']}]", curves_of(tables, t["data"], names, "nll")),
                                   (t["metric"], curves_of(tables, t["data"], names, "metric"))],
                                  out / name, title=f"{t['data']}: {t['group']}")
        made[f"{t['data']}: {t['group']}"] = [name]
    for data in tables.parts:
        files = made.setdefault(data, [])
        first = next((r for v in tables.variants(data) for r in tables.ok(data, v).values()), None)
        if first is None:
            continue
        unit = UNITS.get(first["curve"]["nll_key"], "")
        panels = [("data (held-out)", heldout(first["run"]))]
        for v in tables.variants(data):
            ok = tables.ok(data, v)
            if ok and (Path(ok[min(ok)]["run"]) / "samples.npy").exists():
                panels.append((v, np.load(Path(ok[min(ok)]["run"]) / "samples.npy")))
        if len(panels) > 1:
            name = f"samples_{slug(data)}.png"
            plots.plot_sample_panels(panels, out / name)
            files.append(name)
        grid_run = next((r for v in tables.variants(data) for r in tables.ok(data, v).values()
                         if r["scenario"] == "fp-regress"), None)
        if grid_run is not None:
            name = f"fp_score_field_{slug(data)}.png"
            if not (out / name).exists():  # solved once per study folder: a re-report does not solve again
                fp_field(grid_run["run"], out / name)
            files.append(name)
        truncated = [v for v in tables.variants(data) if tables.ok(data, v) and
                     any(r["curve"]["T"] < 1 for r in tables.ok(data, v).values())]
        if truncated:
            quality: dict[str, list[tuple[float, float]]] = {}
            speed: dict[str, list[tuple[float, float]]] = {}
            for v in [BASELINE, *truncated]:
                ok = tables.ok(data, v)
                if not ok:
                    continue
                T = next(iter(ok.values()))["curve"]["T"]
                label = "standard (plain)" if v == BASELINE else re.sub(r"-T[0-9.]+$", "", v)
                finals = [r["curve"]["points"][-1]["nll"] for r in ok.values()]
                if any(f is not None for f in finals):
                    quality.setdefault(label, []).append((T, statistics.median(f for f in finals if f is not None)))
                ratios = [value for value, _ in tables.ratios(data, v, BASELINE) if value is not None]
                if ratios:
                    speed.setdefault(label, []).append((T, statistics.median(ratios)))
            name = f"T_tradeoff_{slug(data)}.png"
            plots.plot_T_tradeoff([(f"final held-out NLL [{unit}]", quality),
                                   ("time to target, x plain (seeds that reached it)", speed)],
                                  out / name, title=data)
            files.append(name)
    specs = {r["spec"] for r in tables.rows}
    for spec in specs:
        sizes = sorted({r["n_data"] for r in tables.rows if r["spec"] == spec and r["n_data"] is not None})
        if len(sizes) > 1:
            series = {}
            for v in dict.fromkeys(r["variant"] for r in tables.rows if r["spec"] == spec):
                if tables.same_as_plain(f"{spec} n={sizes[0]}", v):
                    continue
                for n in sizes:
                    finals = [r["curve"]["points"][-1]["nll"] for r in tables.ok(f"{spec} n={n}", v).values()]
                    finals = [f for f in finals if f is not None]
                    if finals:
                        series.setdefault(v, []).append((n, statistics.median(finals)))
            name = f"data_efficiency_{slug(spec)}.png"
            plots.plot_data_efficiency(series, out / name, ylabel="final NLL on each run's own held-out split",
                                       title=spec)
            made.setdefault(f"{spec} n={sizes[0]}", []).append(name)
    return made


def write_report(rows: list[dict], out: Path, command: str, study: dict, machine: dict) -> dict:
    """Write report.md, results.json and the pictures; returns the results."""
    tables = Tables(rows)
    every = tables.all_tables()
    made = pictures(tables, every, out)
    results = json_safe({"command": command, "machine": machine, "study": study, "tables": every, "rows": rows,
                         "pictures": made, "timing": TIMING, "date": time.strftime("%Y-%m-%d", time.gmtime())})
    write_json(out / "results.json", results)
    write_markdown(out, f"Regenerate (finished runs are reused, so this only re-reports):\n\n    {command}\n", results)
    return results


def write_markdown(out: Path, head: str, results: dict) -> None:
    """report.md, atomically: ``head``, the machine, the rules, then per data set its tables and pictures."""
    machine, study, made = results["machine"], results["study"], results["pictures"]
    lines = ["# scorefast bench", "", head,
             f"Machine: {machine.get('platform')}, {machine.get('cpus')} CPUs"
             f"{', ' + machine['cuda'] if 'cuda' in machine else ''}, torch {machine.get('torch')}, "
             f"{machine.get('threads')} torch threads, load average {machine.get('loadavg_start', '?')} at the start "
             f"and {machine.get('loadavg', '?')} at the end.", "",
             f"Budget {study.get('budget')} per network, seeds {study.get('seeds')}. Target of a seed = plain DSM's "
             "final held-out NLL, or its final sample metric where the study's protocol says so (for a few images to "
             "memorise, which leave nothing held out: ssim_gap, 1 - the mean best-match SSIM of its samples); 'x plain'"
             " = the variant's time to it / plain's, paired by seed (evaluate.time_to, linear between snapshots; where"
             f" a curve meets its target, up to {study.get('refine', 0)} rounds of bisection over the run's kept "
             f"snapshots, bench.bracket). Wall-clock as the run ran (timing rules {TIMING}): precomputation included, "
             "interval networks queued on a worker one after the other, workers side by side as the slowest plus "
             "torchrun's launch; every variant had the same cores (the resources column). A target met at a run's "
             "first snapshot gives only a bound ('<= x'), as does a reference that never reaches it (timed at its "
             "whole budget). Ratio cells span the seeds, other cells are min / median / max. Verdict: 'helps' only "
             "when the whole interval lies below 1, 'slower' when above, else 'no measurable difference' (always so "
             "with one seed).", ""]
    for data in dict.fromkeys(r["data"] for r in results["rows"]):
        lines += [f"## {data}", ""]
        for t in (t for t in results["tables"] if t["data"] == data):
            lines += [f"### {t['group']}", "", *markdown(t), "", *(f"- {s}" for s in t["sentences"]), "",
                      *(f"![{name}]({name})" for name in made.get(f"{data}: {t['group']}", [])), ""]
        lines += [f"![{name}]({name})" for name in made.get(data, [])] + [""]
    atomic_write(out / "report.md", lambda f: f.write("\n".join(lines).encode()), what="report")


def json_safe(obj):
    """Non-finite floats as null (strict JSON), numpy numbers as Python numbers, tuples as lists."""
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


__all__ = ["Tables", "json_safe", "machine_info", "markdown", "pictures", "spread3", "time_ratio", "verdict",
           "write_markdown", "write_report"]
