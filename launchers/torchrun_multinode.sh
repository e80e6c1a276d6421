#!/usr/bin/env bash
# The digits demo on NNODES nodes under torchrun: one agent per node, NPROC
# processes each (2 by default), meeting at a c10d rendezvous.
#
#   # inside a SLURM allocation: srun starts one agent on every node
#   salloc --nodes 2 bash launchers/torchrun_multinode.sh [--epochs N] [--par-dir DIR]
#   # by hand, the same command on every node (no SLURM)
#   NNODES=2 RDZV_ENDPOINT=host1:29400 bash launchers/torchrun_multinode.sh
#
# The rendezvous numbers the nodes (torchrun's GROUP_RANK) and the ranks, so
# no node is told its rank; in an allocation its endpoint is the first host of
# the node list, port 15000 + job id modulo 17000 (as drytorch derives it for
# srun tasks), and its id the job id. torchrun exports RANK, LOCAL_RANK,
# WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK and MASTER_ADDR/PORT; drytorch
# detects torchrun before SLURM, so the workers are the ranks, not the agents.
# Only rank zero prints and writes; results go under DIR/Digits/runs/<run id>.
# For a batch job with preemption and requeueing, use
# slurm/templates/torchrun_multi_node.sbatch instead.
set -euo pipefail
NPROC=${NPROC:-2}
in_step() {  # a task of an srun step (not the allocation's own shell)
  [[ "${SLURM_STEP_ID:-}" =~ ^[0-9]+$ ]] && [ "$SLURM_STEP_ID" -lt 4294967280 ]
}
if [ -z "${RDZV_ENDPOINT:-}" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  if in_step; then  # srun started this script: its step's nodes
    nodelist=$SLURM_STEP_NODELIST NNODES=$SLURM_STEP_NUM_NODES
  else
    nodelist=$SLURM_JOB_NODELIST NNODES=${SLURM_JOB_NUM_NODES:-$SLURM_NNODES}
  fi
  head=$(scontrol show hostnames "$nodelist" | head -n 1)
  export NNODES
  export RDZV_ENDPOINT="$head:$(( 15000 + SLURM_JOB_ID % 17000 ))"
  export RDZV_ID=$SLURM_JOB_ID
  if ! in_step; then  # the allocation's shell: this script once per node
    exec srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0 \
      --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" bash "$0" "$@"
  fi
fi
: "${NNODES:?set NNODES to the number of nodes (or run inside salloc/sbatch)}"
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=HOST:PORT, a host every node reaches}"
exec torchrun --nnodes "$NNODES" --nproc-per-node "$NPROC" \
  --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" \
  --rdzv-id "${RDZV_ID:-drytorch-demo}" -m drytorch.demo "$@"
