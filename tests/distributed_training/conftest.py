"""Fixtures of the distributed training tests: one launch per world size.

Starting ranks is the expensive part (each imports torch), so every world
size is launched once per session and the tests read what its ranks
returned.  A world of one runs the same worker and is the single-process
reference.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from tests.distributed_training import _training_worker as worker
from tests.helpers.multiprocess import LaunchResult, run_distributed

# The evaluation batch of each world: 101 samples leave one rank a sample
# short, and these sizes make that rank run its last step with no sample.
EVAL_BATCH = {1: 16, 2: 10, 3: 11}
# (metrics M, sync every N) of the collective-counting loops.
COUNT_CONFIGS = ((1, 1), (1, 4), (4, 4), (4, 5), (1, 100), (4, 100))


@dataclasses.dataclass
class Launch:
    """One launch of ``train_and_evaluate`` and where it wrote."""

    world_size: int
    par_dir: pathlib.Path
    result: LaunchResult

    @property
    def ranks(self) -> list[dict[str, Any]]:
        """What each rank returned, in rank order."""
        return self.result.values

    @property
    def zero(self) -> dict[str, Any]:
        return self.ranks[0]


@pytest.fixture(scope='session')
def launch(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[int], Launch]:
    """``launch(world_size)``: the ranks' observations, launched once."""
    done: dict[int, Launch] = {}

    def get(world_size: int) -> Launch:
        if world_size not in done:
            root = tmp_path_factory.mktemp(f'world{world_size}')
            par_dir = root / 'experiments'
            cwd = root / 'cwd'
            cwd.mkdir()
            result = run_distributed(
                world_size,
                func=worker.train_and_evaluate,
                args=(str(par_dir), EVAL_BATCH[world_size], COUNT_CONFIGS),
                env={'DRYTORCH_INIT_MODE': 'none'},
                cwd=cwd,
                timeout=90,
            ).check()
            done[world_size] = Launch(world_size, par_dir, result)
        return done[world_size]

    return get
