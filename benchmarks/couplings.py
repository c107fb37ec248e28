"""Noise couplings side by side on 2-D data: quality per step and per second, and the assignment's own cost.

    OMP_NUM_THREADS=1 python benchmarks/couplings.py --out /tmp/couplings      # 18 runs, 2 at a time
    OMP_NUM_THREADS=1 python benchmarks/couplings.py --out /tmp/c --quick      # a smoke test

Every run is ``scorefast train`` with the default recipe, one thread, ``--coupling`` independent,
minibatch-ot or immiscible, on moons and checkerboard, seeds 0..S-1, a fixed step budget; the periodic SWD
(the recipe's DPM-Solver++(2M) evaluation, every ``--eval-every`` steps, never skipped) gives each run's curve
against its training seconds, which count the assignment (it runs inside the step). Per data set the target is
1.25 x the median final SWD of the independent coupling; reported per coupling, median [min, max] over seeds:
steps and seconds to the target (``evaluate.time_to``), the final SWD and the test NLL (PF-ODE, 1,000 held-out
points), the training seconds, and, measured apart in this process, the CPU time of one assignment of a batch.
Training seconds on a shared machine carry its load; the steps to the target and the assignment's CPU time
do not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import scorefast
from scorefast.couplings import COUPLINGS
from scorefast.evaluate import time_to

DATA = ("moons", "checkerboard")


def train_one(out: str, data: str, coupling: str, seed: int, steps: int, batch: int, eval_every: int) -> dict:
    torch.set_num_threads(1)
    path = Path(out)
    if not (path / "summary.json").exists():
        scorefast.train(scorefast.Config(data=data, out=out, coupling=coupling, seed=seed, steps=steps,
                                         batch_size=batch, eval_every=eval_every, eval_budget=0.0, threads=1,
                                         ckpt_every=steps), progress=False)
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    run = scorefast.open_run(path)
    nll = run.nll(data, n=1000, steps=100, progress=False)
    summary = json.loads((path / "summary.json").read_text())
    return {"data": data, "coupling": coupling, "seed": seed, "swd": summary["metric"],
            "train_seconds": summary["train_seconds"], "nll": nll["nll_nats"],
            "curve": [(r["step"], r["wall"], r["metric"]) for r in rows if "metric" in r]}


def assignment_cost(coupling: str, batch: int, repeats: int = 20) -> float:
    """Median CPU seconds of one assignment of a batch of 2-D points to its noise draws (this process)."""
    torch.set_num_threads(1)
    fn, g = COUPLINGS.create(coupling), torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        x0, z = torch.randn(batch, 2, generator=g), torch.randn(batch, 2, generator=g)
        t0 = time.process_time()
        fn(x0, z)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def spread(values: list) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "not reached"
    text = f"{statistics.median(known):.3g} [{min(known):.3g}, {max(known):.3g}]"
    return text + (f" ({len(values) - len(known)} not reached)" if len(known) < len(values) else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder of the runs (finished runs are reused)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="60 steps, one seed")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.eval_every, args.seeds = 60, 20, 1
    began = time.perf_counter()
    jobs = [(str(Path(args.out) / f"{d}-{c}-{s}"), d, c, s, args.steps, args.batch, args.eval_every)
            for s in range(args.seeds) for d in DATA for c in COUPLINGS.names()]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(train_one, *zip(*jobs)))
    costs = {c: assignment_cost(c, args.batch) for c in COUPLINGS.names()}
    lines = [f"# Noise couplings, default recipe, {args.steps} steps of batch {args.batch}, {args.seeds} seeds, "
             f"{args.jobs} runs at a time, 1 thread each ({time.perf_counter() - began:.0f} s in all)", ""]
    for data in DATA:
        mine = [r for r in results if r["data"] == data]
        target = 1.25 * statistics.median(r["swd"] for r in mine if r["coupling"] == "independent")
        lines += [f"## {data}: target SWD {target:.4f} (1.25 x the independent coupling's median final SWD)", "",
                  "| coupling | steps to target | seconds to target | final SWD | test NLL (nats) | training s "
                  "| one assignment (CPU ms) |", "|---|---|---|---|---|---|---|"]
        for c in COUPLINGS.names():
            runs = [r for r in mine if r["coupling"] == c]
            steps = [time_to([(s, v) for s, _, v in r["curve"]], target) for r in runs]
            secs = [time_to([(w, v) for _, w, v in r["curve"]], target) for r in runs]
            lines.append(f"| {c} | {spread(steps)} | {spread(secs)} | {spread([r['swd'] for r in runs])} | "
                         f"{spread([r['nll'] for r in runs])} | {spread([r['train_seconds'] for r in runs])} | "
                         f"{1e3 * costs[c]:.3g} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    (Path(args.out) / "couplings.md").write_text(text)
    (Path(args.out) / "couplings.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
