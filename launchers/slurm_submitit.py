"""Submit the digits demo to SLURM with submitit, from Python.

    python launchers/slurm_submitit.py                      # 1 node, 2 tasks
    python launchers/slurm_submitit.py --tasks-per-node 4 --wait
    python launchers/slurm_submitit.py --nodes 2 --gpus-per-node 4
    python launchers/slurm_submitit.py --partition gpu --gpus-per-node 8

Every task trains as one rank (one per GPU by default); a preempted job
checkpoints, requeues and resumes by itself.  The same job runs on this
machine with launchers/local_dev.py.
"""

from __future__ import annotations

import argparse
import sys

from drytorch.demo import DemoConfig, train_digits
from drytorch.launch import LaunchError, submit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--nodes', type=int, default=1)
    parser.add_argument('--gpus-per-node', type=int, default=0)
    parser.add_argument(
        '--tasks-per-node',
        type=int,
        default=None,
        help='default: one per GPU, or 2 CPU tasks without GPUs',
    )
    parser.add_argument('--cpus-per-task', type=int, default=1)
    parser.add_argument('--partition', default=None)
    parser.add_argument('--timeout-min', type=int, default=60)
    parser.add_argument('--epochs', type=int, default=DemoConfig.epochs)
    parser.add_argument('--par-dir', default='experiments')
    parser.add_argument('--folder', default='drytorch_jobs/%j')
    parser.add_argument(
        '--wait', action='store_true', help='wait and print the metrics'
    )
    args = parser.parse_args()
    tasks = args.tasks_per_node
    if tasks is None and not args.gpus_per_node:
        tasks = 2
    try:
        job = submit(
            train_digits,
            DemoConfig(epochs=args.epochs),
            args.par_dir,
            cluster='slurm',
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            tasks_per_node=tasks,
            cpus_per_task=args.cpus_per_task,
            partition=args.partition,
            timeout_min=args.timeout_min,
            folder=args.folder,
            name='digits',
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
