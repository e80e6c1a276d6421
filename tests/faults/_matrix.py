"""The fault matrix: its axes, its scenarios, and a pairwise subset of them.

A scenario is one value of each axis: where the stop happens, how, who
gets it, and how the data is loaded.  The full matrix is the product of
the axes less the combinations that mean nothing (:func:`possible`); the
default test run takes a pairwise subset of it (:func:`pairwise`), which
holds every pair of values of any two axes that some scenario holds, and so
every value of every axis, in about a sixth of the scenarios.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterable, Sequence

WHERE = (
    'first_batch',
    'mid_batch',
    'last_batch',
    'validation',
    'post_epoch_hook',
    'before_test',
    'during_test',
    'checkpoint_write',
    'second_signal',
    'between_runs',
)
HOW = ('USR2', 'TERM', 'KILL', 'terminate')
WHO = ('single', 'rank0', 'rank1', 'both')
WORKERS = (0, 2)
AXES = ('where', 'how', 'who', 'workers')

# the reference training (see _reference.py): per epoch and per rank
TRAIN_BATCHES = 6
EVAL_BATCHES = 3
STOP_EPOCH = 2  # the epoch in which the in-training cues come
# where the training is over, or a write is the point: no termination there
NOT_TERMINABLE = frozenset(
    {
        'before_test',
        'during_test',
        'checkpoint_write',
        'second_signal',
        'between_runs',
    }
)
CUE_RANKS = {'single': '0', 'rank0': '0', 'rank1': '1', 'both': '0,1'}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One cell of the matrix."""

    where: str
    how: str
    who: str
    workers: int

    @property
    def id(self) -> str:
        return f'{self.where}-{self.how}-{self.who}-w{self.workers}'

    def __str__(self) -> str:
        return self.id

    @property
    def world_size(self) -> int:
        return 1 if self.who == 'single' else 2

    @property
    def cue_ranks(self) -> list[int]:
        return [int(r) for r in CUE_RANKS[self.who].split(',')]

    @property
    def sweep(self) -> bool:
        """Whether the script runs two runs (``sweep-a``, then ``run``)."""
        return self.where == 'between_runs'

    @property
    def at(self) -> int:
        """The pass, epoch or write number of the cue (see _reference).

        A "random" batch is drawn from the scenario's id, so that a
        failing scenario fails again at the same batch.
        """
        draw = random.Random(self.id)
        mid = TRAIN_BATCHES * (STOP_EPOCH - 1) + draw.randint(2, 5)
        return {
            'first_batch': 1,
            'mid_batch': mid,
            'last_batch': TRAIN_BATCHES * STOP_EPOCH,
            'validation': EVAL_BATCHES * (STOP_EPOCH - 1)
            + draw.randint(1, EVAL_BATCHES),
            # not the last test batch: a stop there has nothing to stop
            'during_test': draw.randint(1, EVAL_BATCHES - 1),
            'post_epoch_hook': STOP_EPOCH,
            'checkpoint_write': STOP_EPOCH,  # the write after epoch 2
            'second_signal': mid,
        }.get(self.where, 0)

    @property
    def terminated_epoch(self) -> int:
        """The last epoch of a terminated training (terminate only)."""
        return 1 if self.where == 'first_batch' else STOP_EPOCH

    def cue_options(self) -> list[str]:
        where = 'test' if self.where == 'during_test' else self.where
        return [
            '--where',
            where,
            '--how',
            self.how,
            '--at',
            str(self.at),
            '--cue-ranks',
            CUE_RANKS[self.who],
        ]


def possible(where: str, how: str, who: str, workers: int) -> bool:
    """Whether the combination means something.

    ``terminate_training`` is asked by a hook or a forward pass of the
    training, so it has no place once the training is over nor inside a
    write; a second SIGKILL cannot follow the first.
    """
    del who, workers  # every rank and loader combine with everything
    if how == 'terminate' and where in NOT_TERMINABLE:
        return False
    return not (how == 'KILL' and where == 'second_signal')


def full_matrix() -> list[Scenario]:
    """Every possible scenario, in the order of the axes."""
    return [
        Scenario(*values)
        for values in itertools.product(WHERE, HOW, WHO, WORKERS)
        if possible(*values)
    ]


Pair = tuple[tuple[str, object], tuple[str, object]]


def pairs_of(scenario: Scenario) -> set[Pair]:
    """The pairs of (axis, value) that a scenario holds."""
    values = [(axis, getattr(scenario, axis)) for axis in AXES]
    return set(itertools.combinations(values, 2))


def pairwise(scenarios: Sequence[Scenario]) -> list[Scenario]:
    """A small subset that holds every pair that ``scenarios`` hold.

    Greedy: take the scenario that adds the most pairs not yet held; on a
    tie the one-process scenario (cheaper), then the first in order, so
    that the subset is the same at every run.
    """
    uncovered = covered_pairs(scenarios)
    chosen: list[Scenario] = []
    while uncovered:
        best = max(
            scenarios,
            key=lambda s: (len(pairs_of(s) & uncovered), s.world_size == 1),
        )
        chosen.append(best)
        uncovered -= pairs_of(best)
    return chosen


def covered_pairs(scenarios: Iterable[Scenario]) -> set[Pair]:
    found: set[Pair] = set()
    for scenario in scenarios:
        found |= pairs_of(scenario)
    return found
