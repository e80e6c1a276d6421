"""SLURM: the tasks of one ``srun`` step (submitit's jobs included).

Only the tasks of an srun step are ranks.  The batch shell of ``sbatch`` sees
``SLURM_NTASKS=4`` and even ``SLURM_PROCID=0`` but is one process, and the
shell of ``salloc`` sees ``SLURM_NTASKS`` without ``SLURM_PROCID``; treating
either as rank 0 of 4 would wait for three ranks that never come.  Both lack
a numbered ``SLURM_STEP_ID``, which srun sets for every task it starts, so
that is what detection requires.  (An ``salloc`` shell in an interactive
step, and the batch and extern steps, carry SLURM's reserved step ids, which
are rejected too.)

Step variables win over job variables: ``srun -n 2`` inside a 4-task
allocation is a world of 2, on the step's nodes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import ClassVar

from drytorch.distributed.environment import ClusterEnvironment

__all__ = ['SlurmEnvironment', 'expand_nodelist', 'expand_tasks_per_node']

# The master port is derived from the job id, so every rank finds the same
# one without talking.  The range stays below Linux's ephemeral ports
# (32768 and up) so that no outgoing connection can already hold it.
PORT_BASE = 15000
PORT_SPAN = 17000

# SLURM numbers its pseudo-steps (pending, batch, extern, interactive...)
# from 0xfffffff0 up; no srun step gets such an id.
_FIRST_RESERVED_STEP = 0xFFFFFFF0

_STEP_IDS = ('SLURM_STEP_ID', 'SLURM_STEPID')
_JOB_IDS = ('SLURM_JOB_ID', 'SLURM_JOBID')
_NODELISTS = ('SLURM_STEP_NODELIST', 'SLURM_JOB_NODELIST', 'SLURM_NODELIST')
_TASKS_PER_NODE = ('SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE')
_BRACKETS = re.compile(r'([^\[\]]*)\[([^\[\]]*)\](.*)')
_TASK_COUNT = re.compile(r'(\d+)(?:\(x(\d+)\))?')


class SlurmEnvironment(ClusterEnvironment):
    """The tasks of an srun step, one rank per task."""

    variables: ClassVar[Mapping[str, tuple[str, ...]]] = {
        'rank': ('SLURM_PROCID',),
        'world_size': ('SLURM_STEP_NUM_TASKS', 'SLURM_NTASKS', 'SLURM_NPROCS'),
        'local_rank': ('SLURM_LOCALID',),
        'node_rank': ('SLURM_NODEID',),
    }
    context: ClassVar[tuple[str, ...]] = _JOB_IDS + _STEP_IDS
    hint: ClassVar[str] = (
        'that the script runs under srun with one task per rank '
        '(srun --ntasks=N, or --nodes=M --ntasks-per-node=K), and not '
        'directly in the sbatch script or the salloc shell'
    )

    @classmethod
    def detected(cls, environ: Mapping[str, str] | None = None) -> bool:
        """Whether this process is a task of an srun step."""
        source = os.environ if environ is None else environ
        if 'SLURM_PROCID' not in source:
            return False
        if not any(name in source for name in _JOB_IDS):
            return False
        step = next((source[n] for n in _STEP_IDS if n in source), None)
        if step is None or not step.strip().isdecimal():
            return False
        return int(step) < _FIRST_RESERVED_STEP

    @property
    def job_id(self) -> str:
        """SLURM's id of the job (one per array task), stable on requeue."""
        return next(self._read[n] for n in _JOB_IDS if n in self._read)

    def _derive(self, field: str, values: Mapping[str, int]) -> int:
        if field != 'local_world_size':
            return super()._derive(field, values)
        name, text = self._first_of(_TASKS_PER_NODE)
        if text is None:
            per_node = self._int('SLURM_NTASKS_PER_NODE')
            if per_node is None:
                raise self.setup_error(
                    'none of SLURM_STEP_TASKS_PER_NODE, SLURM_TASKS_PER_NODE'
                    ' or SLURM_NTASKS_PER_NODE is set',
                    self.hint,
                )
            return per_node
        try:
            counts = expand_tasks_per_node(text)
        except ValueError as exc:
            raise self.setup_error(str(exc), self.hint) from exc
        node = values['node_rank']
        if node >= len(counts):
            raise self.setup_error(
                f'node {node} is not among the {len(counts)} nodes of '
                f'{name}={text!r}',
                self.hint,
            )
        return counts[node]

    def _find_master(self) -> tuple[str, int]:
        name, nodelist = self._first_of(_NODELISTS)
        if nodelist is None:
            raise self.setup_error(
                'SLURM_STEP_NODELIST and SLURM_JOB_NODELIST are not set',
                self.hint,
            )
        try:
            addr = expand_nodelist(nodelist)[0]
        except ValueError as exc:
            raise self.setup_error(
                f'{name}={nodelist!r} is not a SLURM node list ({exc})',
                self.hint,
            ) from exc
        port = self._port('MASTER_PORT')
        if port is None:
            port = PORT_BASE + self._job_number() % PORT_SPAN
        return addr, port

    def _job_number(self) -> int:
        name, job = self._first_of(_JOB_IDS)
        # Also a plain number for each task of an array job.
        digits = (job or '').strip()
        if not digits.isdecimal():
            raise self.setup_error(
                f'{name}={job!r} is not a job number',
                'that SLURM_JOB_ID is set by SLURM, or set MASTER_PORT',
            )
        return int(digits)

    def _first_of(self, names: tuple[str, ...]) -> tuple[str, str | None]:
        for name in names:
            value = self._get(name)
            if value is not None:
                return name, value
        return names[0], None


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a SLURM node list, in SLURM's order.

    ``node[01-03,07]`` gives ``node01 node02 node03 node07`` (zero padding
    kept from the lower bound), ``a[1-2],b3`` gives ``a1 a2 b3``, and
    several bracket groups in one name give every combination, the first
    group varying slowest, as ``scontrol show hostnames`` lists them.

    Raises:
        ValueError: the text is empty, a bracket is unbalanced or a range is
            not ``lo-hi`` with ``lo <= hi``.

    """
    hosts: list[str] = []
    for item in _split_outside_brackets(nodelist):
        hosts.extend(_expand_host(item))
    return hosts


def expand_tasks_per_node(text: str) -> list[int]:
    """Tasks on each node from SLURM's compressed count, e.g. ``2(x3),1``.

    Raises:
        ValueError: the text is not in SLURM's format.

    """
    counts: list[int] = []
    for item in text.split(','):
        match = _TASK_COUNT.fullmatch(item.strip())
        if match is None:
            raise ValueError(
                f'tasks per node {text!r} is not in the form "2(x3),1"'
            )
        counts.extend([int(match[1])] * int(match[2] or 1))
    return counts


def _split_outside_brackets(nodelist: str) -> list[str]:
    items: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(nodelist):
        if char == '[':
            depth += 1
        elif char == ']':
            depth -= 1
        elif char == ',' and depth == 0:
            items.append(nodelist[start:index])
            start = index + 1
        if depth not in (0, 1):
            raise ValueError(f'unbalanced brackets in {nodelist!r}')
    if depth:
        raise ValueError(f'unbalanced brackets in {nodelist!r}')
    items.append(nodelist[start:])
    if any(not item.strip() for item in items):
        raise ValueError(f'empty host name in {nodelist!r}')
    return [item.strip() for item in items]


def _expand_host(pattern: str) -> list[str]:
    match = _BRACKETS.fullmatch(pattern)
    if match is None:
        if '[' in pattern or ']' in pattern:
            raise ValueError(f'unbalanced brackets in {pattern!r}')
        return [pattern]
    prefix, ranges, rest = match.groups()
    tails = _expand_host(rest)
    return [
        prefix + number + tail
        for number in _expand_ranges(ranges)
        for tail in tails
    ]


def _expand_ranges(ranges: str) -> list[str]:
    numbers: list[str] = []
    for part in ranges.split(','):
        low, _, high = part.strip().partition('-')
        high = high or low
        if not (low.isdecimal() and high.isdecimal()):
            raise ValueError(f'range {part!r} is not "lo-hi" or a number')
        if int(low) > int(high):
            raise ValueError(f'range {part!r} runs backwards')
        width = len(low)
        numbers.extend(
            str(n).zfill(width) for n in range(int(low), int(high) + 1)
        )
    return numbers
