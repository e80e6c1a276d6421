"""``drytorch-launch``: submit a training script as a job.

    drytorch-launch [OPTIONS] SCRIPT.py [ARGS...]
    drytorch-launch [OPTIONS] -m MODULE [ARGS...]

Options come before the script, as with ``python``; everything after it is
the script's own command line.  It prints the job id, the log files and how
to follow the job, and with ``--wait`` waits for the end.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from drytorch.launch.entry import ScriptJob
from drytorch.launch.errors import LaunchError
from drytorch.launch.jobs import Job
from drytorch.launch.request import CLUSTERS
from drytorch.launch.submitting import submit

__all__ = ['main']

PROG = 'drytorch-launch'


def build_parser() -> argparse.ArgumentParser:
    """The options of the command line (the script's are not parsed)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            'Submit a training script to SLURM (or run it as local '
            'processes) with drytorch: every rank runs it, and a preempted '
            'job requeues and resumes by itself.'
        ),
        usage=f'{PROG} [OPTIONS] (SCRIPT.py | -m MODULE) [ARGS...]',
    )
    add = parser.add_argument
    add(
        '--cluster',
        choices=CLUSTERS,
        default='slurm',
        help='slurm: a batch job; local: processes here; debug: this '
        'process (default: slurm)',
    )
    add('--nodes', type=int, default=1, help='nodes (default: 1)')
    add(
        '--gpus-per-node',
        type=int,
        default=0,
        help='GPUs per node (default: 0)',
    )
    add(
        '--tasks-per-node',
        type=int,
        default=None,
        help='ranks per node (default: one per GPU, else 1)',
    )
    add(
        '--tasks',
        type=int,
        default=None,
        help='ranks of the whole job, instead of --tasks-per-node, e.g. '
        '--nodes 3 --tasks 5 runs 2, 2 and 1',
    )
    add(
        '--cpus-per-task',
        type=int,
        default=1,
        help='CPU cores per rank (default: 1)',
    )
    add('--mem', default=None, help="memory per node, e.g. '32G'")
    add(
        '--timeout-min',
        type=int,
        default=60,
        help='time limit in minutes (default: 60)',
    )
    add('--partition', default=None, help='SLURM partition')
    add('--account', default=None, help='SLURM account')
    add('--qos', default=None, help='SLURM quality of service')
    add('--constraint', default=None, help='SLURM node features')
    add(
        '--signal-delay-s',
        type=int,
        default=90,
        help='SIGUSR2 this many seconds before the time limit (default: 90)',
    )
    add(
        '--sbatch',
        action='append',
        default=[],
        metavar='KEY[=VALUE]',
        help='an extra sbatch option, e.g. --sbatch exclusive '
        '--sbatch mail-type=END (repeatable)',
    )
    add(
        '--srun-arg',
        action='append',
        default=[],
        metavar='ARG',
        help='an extra srun argument, e.g. --srun-arg=--mpi=pmix (repeatable)',
    )
    add(
        '--folder',
        default='drytorch_jobs/%j',
        help='job files and logs; %%j is the job id '
        '(default: drytorch_jobs/%%j)',
    )
    add('--name', default=None, help="the job's name (default: the script)")
    add(
        '--wait',
        action='store_true',
        help="wait for the job to end and report rank zero's result",
    )
    return parser


def split_command(
    argv: Sequence[str],
) -> tuple[list[str], ScriptTarget | None]:
    """Split ``argv`` into the launcher's options and the script's command.

    The script is the first word that is neither an option nor an option's
    value; ``-m MODULE`` names a module instead.  None when there is none.
    """
    parser = build_parser()
    takes_value = {
        option
        for action in parser._actions
        if action.nargs != 0
        for option in action.option_strings
    }
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == '-m':
            if index + 1 >= len(argv):
                return list(argv), None
            module = ScriptTarget(
                argv[index + 1], list(argv[index + 2 :]), module=True
            )
            return list(argv[:index]), module
        if not token.startswith('-') or token == '-':
            return list(argv[:index]), ScriptTarget(
                token, list(argv[index + 1 :])
            )
        if token in takes_value:
            index += 2
            continue
        index += 1
    return list(argv), None


class ScriptTarget:
    """The script (or module) and its own arguments."""

    def __init__(
        self, target: str, args: list[str], module: bool = False
    ) -> None:
        self.target = target
        self.args = args
        self.module = module

    def job(self) -> ScriptJob:
        """The script as a job entry."""
        if self.module:
            return ScriptJob.module(self.target, *self.args)
        return ScriptJob(self.target, *self.args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status is 0 when all went well."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options, target = split_command(argv)
    parser = build_parser()
    args = parser.parse_args(options)
    if target is None:
        parser.error('give the script to run (SCRIPT.py) or -m MODULE')
    try:
        job = submit(
            target.job(),
            cluster=args.cluster,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            tasks_per_node=args.tasks_per_node,
            tasks=args.tasks,
            cpus_per_task=args.cpus_per_task,
            mem=args.mem,
            timeout_min=args.timeout_min,
            partition=args.partition,
            account=args.account,
            qos=args.qos,
            constraint=args.constraint,
            signal_delay_s=args.signal_delay_s,
            sbatch_args=_sbatch_options(args.sbatch, parser),
            srun_args=args.srun_arg,
            folder=args.folder,
            name=args.name,
        )
    except LaunchError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 1
    assert isinstance(job, Job)
    if args.cluster != 'debug':
        print(f'{PROG}: submitted {job.describe()}', flush=True)
        if not args.wait:
            return 0
    try:
        value = job.result()
    except LaunchError as err:
        print(f'{PROG}: {err}', file=sys.stderr)
        return 1
    print(f'{PROG}: {job.cluster} job {job.job_id} finished: {value!r}')
    return 0


def _sbatch_options(
    items: list[str], parser: argparse.ArgumentParser
) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for item in items:
        key, sep, value = item.partition('=')
        key = key.strip().lstrip('-')
        if not key:
            parser.error(
                f'--sbatch {item!r}: give KEY or KEY=VALUE, e.g. '
                '--sbatch exclusive or --sbatch mail-type=END'
            )
        options[key] = value if sep else True
    return options


if __name__ == '__main__':
    sys.exit(main())
