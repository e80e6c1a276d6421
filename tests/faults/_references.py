"""The reference runs of the fault matrix, and what each scenario found.

Kept out of the conftest so that the test module and the conftest share
one copy of :data:`OUTCOMES` whatever the import mode.
"""

from __future__ import annotations

import pathlib

from tests.faults._harness import (
    FaultZygote,
    Job,
    new_job,
    options,
    run_scenario,
)
from tests.faults._matrix import Scenario
from tests.faults._reference import REASON

# scenario id -> its differences, in the order the scenarios ran
OUTCOMES: dict[str, list[str]] = {}


class References:
    """Reference runs, each computed once per session when first needed.

    Attributes:
        zygote: what forks their attempts.
        root: the folder under which each gets a folder of its own.

    """

    def __init__(self, zygote: FaultZygote, root: pathlib.Path) -> None:
        self.zygote = zygote
        self.root = root
        self._done: dict[str, Job] = {}

    def uninterrupted(
        self, world_size: int, workers: int, sweep: bool = False
    ) -> Job:
        """The run with no cue; checked to stop early at epoch 3."""
        key = f'plain-{world_size}-w{workers}' + ('-sweep' if sweep else '')
        if key not in self._done:
            job = Job(
                self.zygote,
                self.root / key,
                world_size,
                options(world_size, workers, sweep),
            )
            attempt = job.attempt()
            assert attempt.codes == [0] * world_size, job.logs()
            for rank in range(world_size):
                result = job.rank_result('run', rank)
                assert result is not None, job.logs()
                # the early stop ends the 4 epochs after the third: a resume
                # must bring its state back for the run to stop there too
                assert result['epoch'] == 3, result
                assert result['terminated'].startswith('no improvement')
            self._done[key] = job
        return self._done[key]

    def terminated(self, scenario: Scenario) -> Job:
        """The same termination, asked on every rank at once."""
        every = 'both' if scenario.world_size > 1 else 'single'
        same = Scenario(scenario.where, scenario.how, every, scenario.workers)
        if same.id not in self._done:
            job = new_job(self.zygote, self.root / same.id, same)
            outcome = run_scenario(same, job)
            assert not outcome.problems, (outcome.problems, job.logs())
            result = job.rank_result('run', 0)
            assert result and result['terminated'] == REASON, job.logs()
            self._done[same.id] = job
        return self._done[same.id]
