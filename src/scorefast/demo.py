"""``make demo``: the main job on an embedded default, in a few minutes on 2 CPU cores.

Trains a score model on the checkerboard (generated, nothing downloaded), draws samples, measures the
test NLL and the sample quality, and prints where the pictures and numbers are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import Config
from .errors import run_command
from .run import open_run
from .training.recipe import train


def run_demo(out: str | None = None, steps: int = 12000, data: str = "checkerboard") -> dict:
    out = out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = Config(data=data, out=out, steps=steps, eval_every=max(1, steps // 4), batch_size=512, width=128, depth=3,
                 eval_samples=4000)  # the rest is the default recipe's
    print(f"[1/3] training a {cfg.sde.name.upper()} score model on '{data}' for {steps} steps -> {out}")
    summary = train(cfg)
    run = open_run(out)
    print("[2/3] test NLL by the probability-flow ODE (exact divergence)")
    nll = run.nll(data, n=2000, steps=100)
    print("[3/3] sample quality against held-out data")
    quality = run.evaluate(data, n=4000)
    numbers = {"train_seconds": round(summary["train_seconds"], 1), "steps": summary["steps"][0],
               "nll_nats": round(nll["nll_nats"], 3), "swd": round(quality["swd"], 4),
               "mmd": round(quality["mmd"], 5), "sample_seconds_4000": round(quality["sample_seconds"], 2)}
    (Path(out) / "demo.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print("\n| quantity | value |\n|---|---|")
    for k, v in numbers.items():
        print(f"| {k} | {v} |")
    print(f"\npictures: {Path(out) / 'samples.png'} (samples beside the data), {Path(out) / 'metrics.png'} "
          f"(loss and SWD against wall-clock)\nnumbers:  {Path(out) / 'demo.json'}, {Path(out) / 'metrics.jsonl'}")
    return numbers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scorefast.demo", description=__doc__)
    p.add_argument("--out", default=None, help="run directory (default: runs/demo-<timestamp>)")
    p.add_argument("--steps", type=int, default=12000, help="training steps (default: 12000)")
    p.add_argument("--data", default="checkerboard", help="data set (default: checkerboard)")
    args = p.parse_args(argv)
    return run_command(lambda: run_demo(args.out, args.steps, args.data))


if __name__ == "__main__":
    sys.exit(main())
