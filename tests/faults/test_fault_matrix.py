"""The fault matrix: stops of every kind, each against the uninterrupted run.

The scenarios are generated (see ``_matrix.py``), not listed: where the
stop comes (ten places, from the first batch to between two runs of a
sweep), how (SIGUSR2, SIGTERM, SIGKILL, ``terminate_training``), who gets
it (one process; rank 0, rank 1 or both of two gloo ranks) and the data
loading (0 or 2 workers).  Each runs the interrupted attempt and, but for a
termination, the resumed one, then compares with the uninterrupted run:
final weights and optimiser bit for bit, test metrics, each rank's epochs
and termination reason, every tracker's records (each epoch once, same
values; W&B left out after a SIGKILL, which it cannot undo), the registry's
attempts and status, no temporary file left, and after a SIGKILL that the
restart loaded the last complete checkpoint.  A termination is compared
with the same termination asked on every rank, and with the uninterrupted
run up to its epoch.

The default run takes the pairwise subset; ``-m faults`` runs the product.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.faults._harness import (
    differences,
    new_job,
    run_scenario,
    termination_differences,
)
from tests.faults._matrix import (
    AXES,
    HOW,
    WHERE,
    WHO,
    WORKERS,
    Scenario,
    covered_pairs,
    full_matrix,
    pairwise,
    possible,
)
from tests.faults._references import OUTCOMES, References

MATRIX = full_matrix()
PAIRWISE = pairwise(MATRIX)
LOG_TAIL = 6000


def check(
    scenario: Scenario, references: References, root: pathlib.Path
) -> None:
    """Run one scenario; fail with every difference found."""
    job = new_job(references.zygote, root, scenario)
    outcome = run_scenario(scenario, job)
    problems = outcome.problems
    world, workers = scenario.world_size, scenario.workers
    if scenario.how == 'terminate':
        uninterrupted = references.uninterrupted(world, workers)
        problems += termination_differences(scenario, job, uninterrupted)
        same = job
        if scenario.who in ('rank0', 'rank1'):
            same = references.terminated(scenario)
        problems += differences(scenario, job, same, outcome)
    else:
        reference = references.uninterrupted(world, workers, scenario.sweep)
        problems += differences(scenario, job, reference, outcome)
    OUTCOMES[scenario.id] = problems
    if problems:
        report = '\n'.join(problems)
        pytest.fail(
            f'{scenario}: {len(problems)} differences\n{report}\n'
            f'--- logs (tail):\n{job.logs()[-LOG_TAIL:]}',
            pytrace=False,
        )


@pytest.mark.parametrize('scenario', PAIRWISE, ids=str)
def test_pairwise(
    scenario: Scenario, references: References, tmp_path: pathlib.Path
) -> None:
    check(scenario, references, tmp_path)


@pytest.mark.faults
@pytest.mark.parametrize('scenario', MATRIX, ids=str)
def test_full_product(
    scenario: Scenario, references: References, tmp_path: pathlib.Path
) -> None:
    check(scenario, references, tmp_path)


# ------------------------------------------------------------ the generator
def test_the_matrix_is_the_product_less_the_impossible() -> None:
    everything = len(WHERE) * len(HOW) * len(WHO) * len(WORKERS)
    # terminate_training has no place in 5 of the 10 places; a second
    # SIGKILL none at all
    impossible = (5 + 1) * len(WHO) * len(WORKERS)
    assert len(MATRIX) == everything - impossible == 272
    assert len(set(MATRIX)) == len(MATRIX)
    assert not possible('during_test', 'terminate', 'single', 0)
    assert not possible('second_signal', 'KILL', 'both', 2)
    assert possible('second_signal', 'TERM', 'rank1', 2)


def test_the_subset_holds_every_pair_and_every_value() -> None:
    assert covered_pairs(PAIRWISE) == covered_pairs(MATRIX)
    for axis, values in zip(AXES, (WHERE, HOW, WHO, WORKERS), strict=True):
        assert {getattr(s, axis) for s in PAIRWISE} == set(values)
    assert len(PAIRWISE) <= len(MATRIX) // 5
    assert pairwise(MATRIX) == PAIRWISE  # the same subset at every run


def test_random_batches_are_inside_the_epoch_and_repeatable() -> None:
    for scenario in MATRIX:
        if scenario.where in ('mid_batch', 'second_signal'):
            assert 8 <= scenario.at <= 11  # batches 2 to 5 of epoch 2
        if scenario.where == 'validation':
            assert 4 <= scenario.at <= 6
        assert scenario.at == Scenario(*vars(scenario).values()).at
