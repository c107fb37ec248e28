"""Systems levers of the training step, measured: bf16 autocast and torch.compile against fp32 eager.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/systems.py --repeats 5                 # CPU: MLP, 8x8 U-Net
    .venv/bin/python benchmarks/systems.py --device cuda --models mlp,unet8,cifar10      # on a GPU

Each model is trained by the real step of a run (``training.systems.training_step`` around the loss
module, the Optimiser with clipping, the EMA) for every mode - fp32, bf16, compile, compile+bf16 - on
the same data; compilation and warm-up steps are excluded. A repeat times ``--steps`` steps of every mode
in turn (rotating the order) and keeps each mode's median step; the table shows the median [min, max]
over repeats of the step time and of its ratio to fp32 eager within the repeat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from scorefast.nets import make_model
from scorefast.objective import Objective
from scorefast.sde import make_sde
from scorefast.training.optim import EMA, Optimiser
from scorefast.training.systems import check_compile, training_step

MODELS = {  # name -> (data shape, batch, make_model keywords)
    "mlp": ((2,), 512, {}),
    "unet8": ((1, 8, 8), 128, {}),
    "cifar10": ((3, 32, 32), 64, {"preset": "cifar10"}),
}
MODES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "compile": ("fp32", True), "compile+bf16": ("bf16", True)}


def stepper(shape, batch: int, kwargs: dict, precision: str, compiled: bool, device: torch.device):
    """One training step of the model, as a function, in the given mode."""
    torch.manual_seed(0)
    sde = make_sde("vp")
    model = make_model(sde, shape, **kwargs).to(device)
    ema = EMA(model, 0.999)
    opt = Optimiser(model.parameters(), lr=1e-4, grad_clip=1.0)
    objective = training_step(Objective(model, sde), device, precision, compiled)
    x = torch.randn(batch, *shape, device=device)
    count = [0]

    def step() -> None:
        loss = objective(x).mean()
        opt.step(loss)
        count[0] += 1
        ema.update(model, count[0])
        loss.item()
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="mlp,unet8")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode and repeat")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps after building (compilation happens here)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    modes = args.modes.split(",")
    if any(MODES[m][1] for m in modes):
        check_compile()
    print("$ " + " ".join([sys.executable, *sys.argv]))
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} thread(s)") + "\n")
    print("| model | batch | mode | ms per step | ratio to fp32 eager | build + warm-up s |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        shape, batch, kwargs = MODELS[name]
        steps, build = {}, {}
        for mode in modes:
            t0 = time.perf_counter()
            steps[mode] = stepper(shape, batch, kwargs, *MODES[mode], device)
            for _ in range(args.warmup):
                steps[mode]()
            sync(device)
            build[mode] = time.perf_counter() - t0
        times = {m: [] for m in modes}
        for r in range(args.repeats):
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for mode in order:
                per = []
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    steps[mode]()
                    sync(device)
                    per.append(time.perf_counter() - t0)
                times[mode].append(statistics.median(per) * 1e3)
        for mode in modes:
            ratios = [a / b for a, b in zip(times[mode], times[modes[0]])]
            print(f"| {name} | {batch} | {mode} | {summary(times[mode], '{:.2f}')} | {summary(ratios, '{:.2f}')} | "
                  f"{build[mode]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
