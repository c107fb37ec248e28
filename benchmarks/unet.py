"""U-Net training-step cost on CPU: the default small U-Net against the cifar10 preset, side by side.

    .venv/bin/python benchmarks/unet.py [--repeats 5] [--steps 3] [--threads 1]

One step is forward + backward of mean((net(x, t) - z)^2) with x, z of shape (B, 3, 32, 32) and t uniform,
in train mode (the preset's dropout on): the default small U-Net at batch 8, the cifar10 preset at batch
1 and 2. Within each repeat the variants run in turn, each for one warm-up step and --steps timed steps;
a repeat records each variant's median step. Reported: median [min, max] over repeats of the step time
and of the time per image, and the per-image ratio to the default U-Net. Writes benchmarks/results/unet.txt.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from scorefast.bench.report import machine_info
from scorefast.nets import make_net

SHAPE = (3, 32, 32)
VARIANTS = [("default U-Net", {}, 8), ("cifar10 preset", {"preset": "cifar10"}, 1),
            ("cifar10 preset", {"preset": "cifar10"}, 2)]


def summary(values: list[float], fmt: str = "{:.1f}") -> str:
    """median [min, max]"""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def step_seconds(net: torch.nn.Module, batch: int, steps: int, gen: torch.Generator) -> float:
    """Median wall time of ``steps`` forward + backward passes, after one warm-up pass."""
    times = []
    for i in range(steps + 1):
        x, z = torch.randn(batch, *SHAPE, generator=gen), torch.randn(batch, *SHAPE, generator=gen)
        t = torch.rand(batch, generator=gen)
        t0 = time.perf_counter()
        net.zero_grad(set_to_none=True)
        (net(x, t) - z).square().mean().backward()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def report(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    report(f"command: {shlex.join([sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)])}")
    report(f"machine: {machine_info()}")
    torch.manual_seed(0)
    nets = [make_net(SHAPE, **opts).train() for _, opts, _ in VARIANTS]
    gen = torch.Generator().manual_seed(0)
    times: list[list[float]] = [[] for _ in VARIANTS]
    with threadpool_limits(args.threads):
        for _ in range(args.repeats):
            for k, (net, (_, _, batch)) in enumerate(zip(nets, VARIANTS)):
                times[k].append(step_seconds(net, batch, args.steps, gen))
    report(f"{SHAPE[1]}x{SHAPE[2]} images, {SHAPE[0]} channels; {args.repeats} repeats x {args.steps} steps; "
           "median [min, max] over repeats")
    base = [s / VARIANTS[0][2] for s in times[0]]
    for (name, _, batch), net, ts in zip(VARIANTS, nets, times):
        per_image = [s / batch for s in ts]
        ratios = [a / b for a, b in zip(per_image, base)]
        params = sum(q.numel() for q in net.parameters())
        report(f"{name:15s} {params / 1e6:6.2f} M params  batch {batch}  step {summary([s * 1e3 for s in ts])} ms  "
               f"per image {summary([s * 1e3 for s in per_image])} ms  per-image ratio to default "
               f"{summary(ratios, '{:.1f}')}")
    out = Path(__file__).parent / "results" / "unet.txt"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
