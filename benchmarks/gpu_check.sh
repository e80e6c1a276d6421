#!/usr/bin/env bash
# GPU check: the digits demo and the Trainer's step time, with NCCL on one GPU.
#
#   bash benchmarks/gpu_check.sh          # from anywhere; about 1-2 minutes
#   EPOCHS=10 ROUNDS=10 RESULTS_DIR=/tmp/out bash benchmarks/gpu_check.sh
#
# Needs a CUDA build of torch and at least one GPU; installs nothing.  When
# drytorch is not installed, the repository is put on PYTHONPATH instead.
# The demo needs scikit-learn (its digits ship with it): without it the demo
# step is skipped with a message and the timing still runs.
#
# One process starts no process group, so DRYTORCH_FORCE_PROCESS_GROUP=1
# asks for a group of one: the backend is then chosen as for many ranks
# (NCCL where the process has a GPU), the model is wrapped in DDP and the
# metrics go through the packed all-reduce on the GPU, as they would on
# every rank of a multi-GPU job.
#
# Steps:
#   1. torch, CUDA and the GPU(s), as torch sees them;
#   2. the demo under `torchrun --standalone --nproc-per-node 1`, with the
#      process group's backend and device printed; its test accuracy must
#      exceed 90%;
#   3. benchmarks/ddp_overhead.py --nproc 1 --device cuda: median step time
#      of the Trainer and of a hand-written DDP loop doing the same work,
#      and collectives per step; and --nproc 2 when there are 2 GPUs or more;
#   4. unless CPU_BENCH=0: the 2-rank gloo comparison on the CPU, as in the
#      README, where a GPU machine's idle cores give a quieter figure than
#      a busy 2-core box.
# Exit status: 0 when every step that ran passed.
#
# GPU_CHECK_ON_CPU=1 runs steps 1-3 on the CPU with gloo: a check of the
# script itself on a machine without a GPU.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
EPOCHS="${EPOCHS:-30}"
ROUNDS="${ROUNDS:-20}"
RESULTS_DIR="${RESULTS_DIR:-$ROOT/benchmarks/results}"
if [ "${GPU_CHECK_ON_CPU:-0}" = 1 ]; then
  DEVICE=cpu BACKEND=gloo
else
  DEVICE=cuda BACKEND=nccl
fi
export GPU_CHECK_DEVICE="$DEVICE"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$RESULTS_DIR"

# Checked from a neutral folder: in $ROOT the package imports from the
# working directory even when it is not installed, and the demo runs
# elsewhere.
if ! (cd / && "$PYTHON" -c 'import drytorch' 2>/dev/null); then
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  echo "[gpu_check] drytorch is not installed; using $ROOT via PYTHONPATH"
fi

echo "=== [gpu_check] 1. torch and the GPU"
"$PYTHON" - <<'EOF'
import os
import sys

import torch
import torch.distributed as dist

print(f'torch {torch.__version__}, CUDA build {torch.version.cuda}')
if os.environ['GPU_CHECK_DEVICE'] == 'cuda':
    if not torch.cuda.is_available():
        sys.exit('[gpu_check] no CUDA device is visible to torch')
    for index in range(torch.cuda.device_count()):
        print(f'  cuda:{index}: {torch.cuda.get_device_name(index)}')
    print(f'  NCCL available: {dist.is_nccl_available()}, version '
          f'{torch.cuda.nccl.version()}')
else:
    print('  GPU_CHECK_ON_CPU=1: checking the script on the CPU with gloo')
EOF
GPUS=0
if [ "$DEVICE" = cuda ]; then
  GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')"
fi

echo "=== [gpu_check] 2. the demo under torchrun, one process, $BACKEND"
if "$PYTHON" -c 'import sklearn' 2>/dev/null; then
  cat >"$WORK/demo_nccl.py" <<'EOF'
"""The demo, reporting the process group it runs in."""
import sys

import torch
import torch.distributed as dist

from drytorch import demo
from drytorch.distributed import ranks

ensure = ranks.ensure_process_group


def ensure_and_report() -> None:
    ensure()
    print(
        f'[gpu_check] process group: backend={dist.get_backend()}, '
        f'world size {dist.get_world_size()}, '
        f'device {_device()}, '
        f'distributed paths on: {ranks.is_distributed()}',
        flush=True,
    )


def _device() -> str:
    if torch.cuda.is_available():
        return f'cuda:{torch.cuda.current_device()}'
    return 'cpu'


ranks.ensure_process_group = ensure_and_report
sys.exit(demo.main(sys.argv[1:]))
EOF
  DRYTORCH_FORCE_PROCESS_GROUP=1 DRYTORCH_INIT_MODE=minimal \
    "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 \
    "$WORK/demo_nccl.py" --epochs "$EPOCHS" --par-dir "$WORK/experiments" \
    | tee "$WORK/demo.log"
  grep -q "backend=$BACKEND" "$WORK/demo.log" \
    || { echo "[gpu_check] FAIL: the demo did not run on $BACKEND"; exit 1; }
  ACCURACY="$(sed -n 's/.*test accuracy: *\([0-9.]*\)%.*/\1/p' "$WORK/demo.log")"
  "$PYTHON" -c "import sys; a = float('${ACCURACY:-0}'); \
print(f'[gpu_check] demo test accuracy {a:.2f}%'); \
sys.exit(0 if a > 90 else '[gpu_check] FAIL: accuracy not above 90%')"
else
  echo "[gpu_check] SKIPPED: scikit-learn is not installed (the demo's data)"
fi

echo "=== [gpu_check] 3. step time: Trainer against a hand-written DDP loop"
"$PYTHON" benchmarks/ddp_overhead.py --nproc 1 --device "$DEVICE" \
  --rounds "$ROUNDS" --hidden 1024 --batch-size 256 \
  --out "$RESULTS_DIR/gpu_ddp_overhead_1${DEVICE}.json"
if [ "$GPUS" -ge 2 ]; then
  "$PYTHON" benchmarks/ddp_overhead.py --nproc 2 --device cuda \
    --rounds "$ROUNDS" --hidden 1024 --batch-size 256 \
    --out "$RESULTS_DIR/gpu_ddp_overhead_2cuda.json"
fi
if [ "${CPU_BENCH:-1}" = 1 ] && [ "$DEVICE" = cuda ]; then
  echo "=== [gpu_check] 4. the same comparison on the CPU, 2 gloo ranks"
  "$PYTHON" benchmarks/ddp_overhead.py --nproc 2 --device cpu \
    --rounds "$ROUNDS" --out "$RESULTS_DIR/ddp_overhead_quiet_cpu.json"
fi
echo "=== [gpu_check] passed; timings in $RESULTS_DIR"
