"""The data-efficiency study's reference row: the held-out NLL of the Gaussian KDE itself (Scott's bandwidth on the
training split), the density whose score the `empirical` target regresses on.

    .venv/bin/python benchmarks/kde_reference.py --data checkerboard --n-data 320,2000 --seeds 3

Per (size, seed): the run's own split (scorefast's ``split_data`` with that seed, as every bench run uses), the
first ``--n`` held-out points, and -mean log KDE(x) in nats; for digits, bits/dim of the held-out digits
uniformly dequantised as ``evaluate.test_nll`` does in the bench's protocol (the same points and noise as its curves).
min / median / max over seeds.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from scorefast import Config
from scorefast.likelihood import bits_per_dim, dequantize
from scorefast.methods.fokker_planck import log_kde, scott_bandwidth
from scorefast.run import split_data


def kde_nll(data: str, n_data: int, seed: int, n: int) -> tuple[float, str]:
    train, test = split_data(Config(data=data, n_data=n_data, seed=seed, batch_size=1))
    x = test.x[:n]
    if test.levels:  # as evaluate.test_nll does it in the bench's protocol (seed 7)
        x = dequantize(x, test.levels, generator=torch.Generator().manual_seed(7))
    x = x.flatten(1).double()
    centres = train.x.flatten(1).double().numpy()
    logp = torch.as_tensor(log_kde(x.numpy(), centres, scott_bandwidth(centres)))
    if test.levels:
        return float(bits_per_dim(logp, x.shape[1], test.levels).mean()), "bits/dim"
    return float(-logp.mean()), "nats"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="checkerboard")
    p.add_argument("--n-data", default="320,2000")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n", type=int, default=1000, help="held-out points (the bench's protocol: 1,000)")
    args = p.parse_args()
    for n_data in (int(v) for v in args.n_data.split(",")):
        values = [kde_nll(args.data, n_data, s, args.n) for s in range(args.seeds)]
        v = sorted(x for x, _ in values)
        print(f"{args.data} n={n_data}: KDE (Scott) held-out NLL {v[0]:.3f} / {statistics.median(v):.3f} / {v[-1]:.3f} "
              f"{values[0][1]} (min / median / max over {args.seeds} seeds)")


if __name__ == "__main__":
    main()
