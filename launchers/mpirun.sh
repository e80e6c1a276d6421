#!/usr/bin/env bash
# The digits demo under Open MPI's mpirun, NP processes (2 by default).
#
#   bash launchers/mpirun.sh [--epochs N] [--par-dir DIR] [--seed S]
#   NP=4 bash launchers/mpirun.sh
#
# The ranks come from OMPI_COMM_WORLD_* (PMI_* under MPICH); with mpi4py,
# rank zero picks the rendezvous address and port and broadcasts them, so
# nothing else needs exporting on one node.  torch.distributed then runs
# over gloo or NCCL as under torchrun, not over MPI.
# --allow-run-as-root: containers and CI run as root, which mpirun refuses
# by default; --oversubscribe: more ranks than cores is fine for a demo.
# One OpenMP thread per rank unless OMP_NUM_THREADS says otherwise, as
# torchrun does, so that the ranks do not fight over the cores.
# PYTHON picks the interpreter (python on PATH by default).
set -euo pipefail
exec mpirun --allow-run-as-root --oversubscribe -np "${NP:-2}" \
    -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
    "${PYTHON:-python}" -m drytorch.demo "$@"
