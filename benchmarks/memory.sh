#!/bin/bash
# Peak resident memory (and seconds) of the reading commands on large inputs, one torch thread.
#   bash benchmarks/memory.sh [WORKDIR]        (default: a fresh temporary folder; about 20 minutes)
# Prints, per command, "PEAK_KB ... SECONDS ..." from /usr/bin/time and the command itself.
set -e
PY=${PY:-.venv/bin/python}
WORK=${1:-$(mktemp -d)}
export OMP_NUM_THREADS=1
$PY - "$WORK" <<'PY'
import sys
import numpy as np, torch
from scorefast.data import sample_toy, load_data
work = sys.argv[1]
np.save(f"{work}/checker100k.npy", sample_toy("checkerboard", 100_000, torch.Generator().manual_seed(5)).numpy())
d = load_data("digits").x.numpy()
reps = np.concatenate([d] * 6)[:10_000]
np.save(f"{work}/digits10k.npy", ((reps + 1) * 8).round().astype(np.uint8)[:, 0])  # 17 levels, as sklearn's digits
PY
$PY -m scorefast.cli train --data checkerboard --out "$WORK/run2d" --steps 4000 --recipe plain --threads 1 --quiet
$PY -m scorefast.cli train --data digits --out "$WORK/digits-run" --steps 20 --eval-every 1000 --eval-samples 50 \
    --eval-steps 5 --batch-size 64 --recipe plain --quiet
for cmd in \
  "nll --run $WORK/run2d --data $WORK/checker100k.npy --n 100000 --steps 20 --threads 1 --json --quiet" \
  "nll --run $WORK/digits-run --data $WORK/digits10k.npy --n 10000 --steps 10 --hutchinson 1 --threads 1 --json --quiet" \
  "sample --run $WORK/run2d --n 200000 --out $WORK/s200k.npy --steps 20 --threads 1 --quiet" \
  "sample --run $WORK/run2d --n 2000 --out $WORK/s2k.npy --steps 20 --threads 1 --quiet"; do
  /usr/bin/time -f "PEAK_KB %M  SECONDS %e" $PY -m scorefast.cli $cmd 2>&1 | tail -2
  echo "^^^ scorefast $cmd"
done
