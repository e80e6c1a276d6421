#!/usr/bin/env bash
# GPU check of checkpoints: how long each way of saving blocks training,
# with NCCL on the GPUs there are (one: a forced process group of one).
#
#   bash benchmarks/gpu_checkpoint_check.sh     # about 2-4 minutes
#   MEGABYTES=2000 SAVES=3 RESULTS_DIR=/tmp/out bash benchmarks/gpu_checkpoint_check.sh
#
# Needs a CUDA build of torch and at least one GPU; installs nothing.  When
# drytorch is not installed, the repository goes on PYTHONPATH.  Runs
# benchmarks/checkpoint_blocking.py under DDP and under FSDP with
# --device cuda: the single file from rank zero, the parts of every rank,
# and the background write (staged to host memory, written on a thread, its
# collectives on a gloo group of their own beside NCCL's).  Exit status 0
# when both ran and the background save blocked at most a tenth of the
# single file's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
MEGABYTES="${MEGABYTES:-200}"
SAVES="${SAVES:-3}"
RESULTS_DIR="${RESULTS_DIR:-$ROOT/benchmarks/results}"
mkdir -p "$RESULTS_DIR"
"$PYTHON" -c 'import drytorch' 2>/dev/null || export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if [ "$GPUS" -lt 1 ]; then
  echo "[gpu-checkpoint] no CUDA device: nothing to check" >&2
  exit 1
fi
NPROC=$(( GPUS >= 2 ? 2 : 1 ))
"$PYTHON" -c 'import torch; print("[gpu-checkpoint] torch", torch.__version__, "| CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(0), "| GPUs", torch.cuda.device_count())'

status=0
for parallel in ddp fsdp; do
  out="$RESULTS_DIR/checkpoint_blocking_cuda_${parallel}.json"
  echo "[gpu-checkpoint] $parallel on $NPROC GPU(s), $MEGABYTES MB"
  "$PYTHON" benchmarks/checkpoint_blocking.py --device cuda --nproc "$NPROC" \
    --parallel "$parallel" --megabytes "$MEGABYTES" --saves "$SAVES" --out "$out"
  "$PYTHON" - "$out" <<'PY' || status=1
import json, sys
report = json.load(open(sys.argv[1]))
ratio = report['async_over_file']
print(f'[gpu-checkpoint] async / file blocked = {ratio:.3f}')
sys.exit(0 if ratio <= report['target_async_over_file'] else 1)
PY
done
exit "$status"
