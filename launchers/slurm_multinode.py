"""The digits demo on 4 nodes x 8 GPUs: 32 ranks, one per GPU.

    python launchers/slurm_multinode.py --partition gpu
    python launchers/slurm_multinode.py --nodes 2 --gpus-per-node 4 --wait

One call: SLURM starts one task per GPU on every node, drytorch brings NCCL
up from SLURM's variables (rank zero's node is the master, the port comes
from the job id), every rank trains its shard, and rank zero alone writes
logs and checkpoints.  A preempted job (or one that reaches its time limit:
SIGUSR2 comes --signal-delay-s before it) checkpoints at the same step on
every rank, requeues itself and resumes from that batch.
"""

from __future__ import annotations

import argparse
import sys

from drytorch.demo import DemoConfig, train_digits
from drytorch.launch import LaunchError, submit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--nodes', type=int, default=4)
    parser.add_argument('--gpus-per-node', type=int, default=8)
    parser.add_argument('--cpus-per-task', type=int, default=8)
    parser.add_argument('--mem', default=None, help="per node, e.g. '480G'")
    parser.add_argument('--partition', default=None)
    parser.add_argument('--account', default=None)
    parser.add_argument('--timeout-min', type=int, default=240)
    parser.add_argument('--signal-delay-s', type=int, default=300)
    parser.add_argument('--epochs', type=int, default=DemoConfig.epochs)
    parser.add_argument('--par-dir', default='experiments')
    parser.add_argument('--folder', default='drytorch_jobs/%j')
    parser.add_argument('--wait', action='store_true')
    args = parser.parse_args()
    try:
        job = submit(
            train_digits,
            DemoConfig(epochs=args.epochs),
            args.par_dir,
            cluster='slurm',
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            cpus_per_task=args.cpus_per_task,
            mem=args.mem,
            partition=args.partition,
            account=args.account,
            timeout_min=args.timeout_min,
            signal_delay_s=args.signal_delay_s,
            folder=args.folder,
            name='digits-multinode',
        )
    except LaunchError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'submitted {job.describe()}')
    if args.wait:
        print(f'test metrics: {job.result()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
