"""The SLURM job of launchers/slurm_submitit.py, on this machine.

    python launchers/local_dev.py                  # 2 processes (gloo)
    python launchers/local_dev.py --tasks 4
    python launchers/local_dev.py --debug          # this process: pdb works

The same submit() call with cluster='local': submitit starts the tasks as
processes here, and drytorch sees them as ranks exactly as it sees srun's
tasks on a cluster.  What works here works there: change cluster='local'
to cluster='slurm' and add nodes, GPUs and a partition.
"""

from __future__ import annotations

import argparse
import sys

from drytorch.demo import DemoConfig, train_digits
from drytorch.launch import LaunchError, submit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tasks', type=int, default=2)
    parser.add_argument('--gpus', type=int, default=0)
    parser.add_argument('--epochs', type=int, default=DemoConfig.epochs)
    parser.add_argument('--par-dir', default='experiments')
    parser.add_argument('--folder', default='drytorch_jobs/%j')
    parser.add_argument(
        '--debug', action='store_true', help='run in this process instead'
    )
    args = parser.parse_args()
    try:
        job = submit(
            train_digits,
            DemoConfig(epochs=args.epochs),
            args.par_dir,
            cluster='debug' if args.debug else 'local',
            tasks_per_node=1 if args.debug else args.tasks,
            gpus_per_node=args.gpus,
            folder=args.folder,
            name='digits',
        )
    except LaunchError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if not args.debug:
        print(f'started {job.describe()}', flush=True)
    print(f'test metrics: {job.result()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
