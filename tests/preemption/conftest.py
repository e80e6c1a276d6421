"""Fixtures of the preemption tests: the zygote and the reference runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from drytorch.distributed.preemption import watcher
from tests.helpers.kernel import isolated_kernel
from tests.preemption._support import Trial, Zygote

ALL_TRACKERS = 'csv,sql,tb,wandb,yaml'
# one process: 6 training batches of 16 and 3 validation batches per epoch;
# two ranks: 6 training batches of 8 and 3 validation batches per rank, a
# sync point every 2 steps (and at the last one)
OPTIONS = {
    1: (),
    2: ('--batch-size', '8', '--val-batch-size', '8', '--sync-every', '2'),
}


def options(world_size: int, trackers: str = ALL_TRACKERS) -> list[str]:
    """Worker options of the runs compared with the reference runs."""
    return [*OPTIONS[world_size], '--trackers', trackers]


@pytest.fixture(autouse=True)
def _kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No default tracker, no launcher variable, no preemption flag left."""
    try:
        with isolated_kernel(monkeypatch):
            yield
    finally:
        watcher.reset()


@pytest.fixture(scope='session')
def zygote() -> Iterator[Zygote]:
    """The warm parent of every attempt, for the whole session."""
    for module in ('sqlalchemy', 'tensorboard', 'wandb', 'yaml'):
        # the attempts log to every tracker
        pytest.importorskip(
            module, reason=f"{module} is missing: pip install -e '.[all]'"
        )
    parent = Zygote()
    try:
        yield parent
    finally:
        parent.close()


@pytest.fixture(scope='session')
def reference(
    zygote: Zygote, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[int], Trial]:
    """The uninterrupted run of a world size (computed once), all trackers."""
    done: dict[int, Trial] = {}

    def get(world_size: int) -> Trial:
        if world_size not in done:
            root = tmp_path_factory.mktemp(f'reference-{world_size}')
            trial = Trial(zygote, root, world_size, options(world_size))
            codes = trial.attempt()
            assert codes == [0] * world_size, trial.logs()
            done[world_size] = trial
        return done[world_size]

    return get
