"""Functions that the launch tests submit as jobs.

They run in the job's processes, which need not be able to import this
module: the tests register it with cloudpickle to be pickled by value.
"""

from __future__ import annotations

import functools
import os
import pathlib
import time
from typing import Any

PAUSE_LIMIT_S = 120.0


def train_demo(
    par_dir: str,
    epochs: int = 5,
    pause_after: int | None = None,
    markers: str | None = None,
) -> dict[str, float]:
    """The digits demo; optionally waits after an epoch for a signal.

    With ``pause_after``, every rank of the first attempt stops after that
    epoch, writes ``paused.<rank>`` (holding its pid) in ``markers`` and
    waits until a preemption signal arrives: the test signals the job at
    a known point of the training, whatever the machine's speed.
    """
    from drytorch.demo import DemoConfig, train_digits
    from drytorch.lib import hooks

    if pause_after is not None and markers is not None:
        hooks.SaveEveryEpochs = functools.partial(  # type: ignore[misc]
            _PausingSave,
            base=hooks.SaveEveryEpochs,
            pause_after=pause_after,
            markers=markers,
        )
    return train_digits(DemoConfig(epochs=epochs), par_dir)


def die(code: int = 1) -> None:
    """End the process at once, before any result is written."""
    print('about to die without a result', flush=True)
    os._exit(code)


def echo(**params: Any) -> dict[str, Any]:
    """The keyword arguments, and the array task that got them."""
    return {**params, 'array_task': os.environ.get('SLURM_ARRAY_TASK_ID')}


def where() -> dict[str, Any]:
    """What the task sees: rank, world size, launcher, group."""
    import torch.distributed as dist

    from drytorch.distributed import detect_environment, ranks

    env = detect_environment()
    return {
        'rank': ranks.get_rank(),
        'world_size': ranks.get_world_size(),
        'launcher': env.name,
        'group': dist.is_initialized(),
    }


class _PausingSave:
    """SaveEveryEpochs that waits for a signal after one epoch."""

    def __init__(
        self, interval: int, base: type, pause_after: int, markers: str
    ) -> None:
        self._save = base(interval)
        self.pause_after = pause_after
        self.markers = pathlib.Path(markers)

    def __call__(self, trainer: Any) -> None:
        from drytorch.core.experimenting import Experiment
        from drytorch.distributed import ranks
        from drytorch.distributed.preemption import watcher

        self._save(trainer)
        run = Experiment.get_current().run
        if trainer.model.epoch != self.pause_after or run.attempt != 1:
            return
        marker = self.markers / f'paused.{ranks.get_rank()}'
        marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while not watcher.requested and time.monotonic() < deadline:
            time.sleep(0.05)


def fail_on(rank: int) -> str:
    """Raise on one rank; the others return."""
    from drytorch.distributed import ranks

    if ranks.get_rank() == rank:
        raise ValueError(f'rank {rank} broke on purpose')
    return 'fine'
