#!/usr/bin/env bash
# The digits demo on one node under torchrun, NPROC processes (2 by default).
#
#   bash launchers/torchrun.sh [--epochs N] [--par-dir DIR] [--seed S]
#   NPROC=4 bash launchers/torchrun.sh
#
# torchrun exports RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT...; the
# first run the script starts brings the process group up from them (NCCL
# when every process has a GPU of its own, gloo otherwise).  Only rank zero
# prints and writes; results go under DIR/Digits/runs/<run id>.
set -euo pipefail
exec torchrun --standalone --nproc-per-node "${NPROC:-2}" -m drytorch.demo "$@"
