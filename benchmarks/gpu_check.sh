#!/usr/bin/env bash
# One check of scorefast on a GPU machine, in at most 8 minutes (7.5 by the parts' limits), with no network:
#   1. the machine: GPUs, driver, torch's CUDA;
#   2. the test suite on CUDA (SCOREFAST_TEST_DEVICE=cuda; the fast tests, 4 minutes at most);
#   3. step times of the MLP, the 8x8 U-Net and the CIFAR-sized U-Net (23.8 M parameters) in fp32 / bf16 /
#      compiled (benchmarks/systems.py);
#   4. the parallel trainer with NCCL: one interval network per GPU (needs 2 or more GPUs);
#   5. a short CIFAR-shaped training on generated 32x32 colour images (the cifar10 preset, bf16), with its
#      loss curve.
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (PY=... picks the Python; the default is .venv/bin/python)
# Each part has its own time limit and the script goes on after a failure; the summary lists every part.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SCOREFAST_CACHE="$OUT/cache"
status=()

part() {  # part NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (at most ${limit}s)"
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local code=$?
    tail -n 25 "$OUT/$name.log"
    status+=("$name: exit $code after $((SECONDS - began)) s")
}

part machine 30 bash -c "nvidia-smi || true; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, \
torch.cuda.is_available(), torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'"
NGPU=$($PY -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)

part tests 150 env SCOREFAST_TEST_DEVICE=cuda "$PY" -m pytest -q -x -m "not slow" -p no:cacheprovider

part steps 120 "$PY" benchmarks/systems.py --device cuda --models mlp,unet8,cifar10 --modes fp32,bf16,compile \
    --repeats 2 --steps 10

if [ "$NGPU" -ge 2 ]; then
    part nccl 60 "$PY" -m scorefast.cli train --data moons --out "$OUT/nccl" --intervals "$NGPU" --workers "$NGPU" \
        --steps 500 --eval-every 250 --quiet
else
    echo "=== nccl: skipped (1 GPU; NCCL groups need one GPU per worker)"
    status+=("nccl: skipped, $NGPU GPU(s)")
fi

part cifar 90 bash -c "
$PY - <<'EOF'
import pickle, numpy as np, os
rng = np.random.default_rng(0)
os.makedirs('$OUT/cifar', exist_ok=True)
x = np.clip(rng.normal(128, 40, (2048, 3, 32, 32)).cumsum(axis=3) / 8 % 256, 0, 255).astype(np.uint8)
with open('$OUT/cifar/data_batch_1', 'wb') as f:
    pickle.dump({b'data': x.reshape(2048, -1), b'labels': [0] * 2048}, f)
EOF
$PY -m scorefast.cli train --data '$OUT/cifar' --out '$OUT/cifar-run' --net-preset cifar10 --precision bf16 \
    --steps 300 --batch-size 64 --eval-every 50 --eval-samples 64 --eval-steps 10 --sampler dpmpp-2m --quiet &&
$PY -c \"import json; [print(r['step'], round(r['loss'], 4), round(r['wall'], 1)) for r in map(json.loads, open('$OUT/cifar-run/metrics.jsonl'))]\"
"

echo "=== summary"
printf '%s\n' "${status[@]}" | tee "$OUT/summary.txt"
