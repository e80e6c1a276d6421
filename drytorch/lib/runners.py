"""The loop over batches that trainers and evaluators share.

The loop owns the rules that keep ranks in step (see DESIGN.md):

- sync points are a function of the step count: every ``sync_every``
  steps and at the last step of the loop;
- at a sync point one packed all-reduce gives the global running metrics
  and every rank's flags (terminate, non-finite loss, preemption);
- between sync points no collective runs and no value leaves the device.

In one process there is no collective, and a preemption signal is read at
every step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from drytorch.core import exceptions, log_events
from drytorch.core.folders import FILE_ROOM, validate_folder_name
from drytorch.distributed import ranks
from drytorch.distributed.preemption import watcher
from drytorch.distributed.reduce import Flag, PackedReducer, Reduced
from drytorch.lib.loading import DataLoader, Plan
from drytorch.lib.models import Model
from drytorch.lib.objectives import MetricAccumulator, Objective

__all__ = ['LoopOutcome', 'Runner', 'SyncSchedule', 'unpack_batch']

_TARGET_SYNC_SECONDS = 0.25
_FIRST_SYNC = 10
_MAX_SYNC = 500


class SyncSchedule:
    """Which steps are sync points.

    Args:
        every: a fixed interval; None adapts it so that a sync happens about
            every quarter of a second.  The adaptation uses the step time
            averaged over ranks by the reduction itself, so every rank picks
            the same interval at the same step.

    """

    def __init__(self, every: int | None = None) -> None:
        if every is not None and every < 1:
            raise ValueError(f'sync_every must be >= 1, got {every!r}.')
        self.fixed = every
        self.every = every or _FIRST_SYNC
        #: sync points (hence preemption stops) fall on multiples of this
        #: step count only, besides the last step: a trainer that
        #: accumulates gradients over k micro-batches sets it to k, so that
        #: no stop lands inside an accumulation window
        self.stride = 1

    def is_sync(self, steps_since: int, step: int, total: int) -> bool:
        """Whether ``step`` (1-based) is a sync point."""
        if step == total:
            return True
        return steps_since >= self.every and step % self.stride == 0

    def may_stop(self, step: int) -> bool:
        """Whether a loop may stop after ``step`` (1-based) steps."""
        return step % self.stride == 0

    def adapt(self, seconds_per_step: float) -> None:
        """Choose the next interval from a globally agreed step time."""
        if self.fixed is not None or seconds_per_step <= 0:
            return
        wanted = int(_TARGET_SYNC_SECONDS / seconds_per_step)
        self.every = max(1, min(_MAX_SYNC, wanted))


@dataclasses.dataclass
class LoopOutcome:
    """How a loop ended.

    Attributes:
        metrics: global means at the last sync point.
        steps_done: steps completed (from the start of the pass).
        preempted: whether it stopped early for a preemption.
        terminate: whether some rank asked to terminate training.

    """

    metrics: dict[str, float]
    steps_done: int
    preempted: bool = False
    terminate: bool = False
    total: int = 0

    @property
    def finished(self) -> bool:
        """Whether every step of the pass ran."""
        return self.steps_done >= self.total


def unpack_batch(batch: Any, source: str) -> tuple[Any, Any]:
    """Split a loader item into (inputs, targets), or say what is wrong."""
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    kind = type(batch).__name__
    size = f' of {len(batch)} items' if isinstance(batch, tuple | list) else ''
    raise ValueError(
        f'{source}: loader items must be (inputs, targets) pairs, got a '
        f'{kind}{size}. Make the data set return (inputs, targets).'
    )


def to_device(data: Any, device: torch.device) -> Any:
    """Move tensors (possibly nested in tuples, lists, dicts) to a device."""
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, tuple | list):
        return type(data)(to_device(d, device) for d in data)
    if isinstance(data, dict):
        return {k: to_device(v, device) for k, v in data.items()}
    return data


class Runner:
    """A named actor that runs loops of a model over a loader.

    Args:
        model: the model.
        name: the source name in logs; defaults to the class name.
        loader: the data.
        objective: what to compute on each batch.
        sync_every: steps between sync points (None: adaptive).

    """

    def __init__(
        self,
        model: Model,
        name: str,
        *,
        loader: DataLoader,
        objective: Objective,
        sync_every: int | None = None,
    ) -> None:
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f'loader must be a drytorch.DataLoader, got '
                f'{type(loader).__name__}; wrap the data set in '
                'drytorch.DataLoader(dataset, batch_size).'
            )
        # the source name becomes a file of every dumper
        # (``csv_metrics/<model>/<source>.csv``): refuse a bad one now, not
        # at the first metric
        self.name = validate_folder_name(
            self.__class__.__name__,
            name or self.__class__.__name__,
            room=FILE_ROOM,
        )
        self.model = model
        self.loader = loader
        self.objective = objective
        self.sync = SyncSchedule(sync_every)
        self.accumulator = MetricAccumulator(objective.names, model.device)
        self.reducer = PackedReducer(model.device)
        self.terminate_requested = False
        self.non_finite_epoch = 0

    def register(self) -> None:
        """Document this actor in the run."""
        from drytorch.core.experimenting import Experiment

        Experiment.get_current().metadata_manager.register_actor(
            self.name, self, self.model.name
        )

    def run_loop(
        self,
        plan: Plan,
        step: Callable[[Any, int], None],
        *,
        start_batch: int = 0,
        check_finite: bool = False,
    ) -> LoopOutcome:
        """Run ``step(batch, n)`` over the plan from ``start_batch`` on."""
        total = len(plan)
        event = log_events.IterateBatchEvent(
            source_name=self.name,
            batch_size=self.loader.batch_size,
            dataset_size=plan.num_samples,
            n_iter=total,
            start_batch=start_batch,
            model_name=self.model.name,
        )
        alone = not ranks.is_distributed()
        since = 0
        outcome = LoopOutcome({}, start_batch, total=total)
        if start_batch >= total:
            outcome.metrics = self._reduce(set(), 0.0, 0).means(
                self.accumulator.names
            )
            return outcome
        clock = time.perf_counter()
        index = start_batch
        for index, (batch, n) in enumerate(
            self.loader.iterate(plan, start_batch), start=start_batch + 1
        ):
            if batch is None:
                if self.model.collective_forward:
                    self._idle_step()
                self.accumulator.add_empty()
            else:
                step(batch, n)
            since += 1
            if (
                alone
                and watcher.requested
                and index < total
                and self.sync.may_stop(index)
            ):
                outcome = self._sync(
                    event, check_finite, start_batch, since, clock, index
                )
                outcome.preempted = True
                outcome.total = total
                return outcome
            if self.sync.is_sync(since, index, total):
                outcome = self._sync(
                    event, check_finite, start_batch, since, clock, index
                )
                since = 0
                clock = time.perf_counter()
                outcome.total = total
                if outcome.preempted and index < total:
                    return outcome
        outcome.steps_done = index
        outcome.total = total
        return outcome

    def _idle_step(self) -> None:
        """What a step without samples runs when forward passes are collective.

        Nothing here; an evaluation runs a forward pass that it discards
        (training steps always have samples).
        """

    def _sync(
        self,
        event: log_events.IterateBatchEvent,
        check_finite: bool,
        start_batch: int,
        since: int,
        clock: float,
        index: int,
    ) -> LoopOutcome:
        bad = self.accumulator.fold()
        flags: set[Flag] = set()
        if self.terminate_requested:
            flags.add(Flag.terminate)
        if watcher.requested:
            flags.add(Flag.preempt)
        if check_finite and bad is not None:
            flags.add(Flag.non_finite)
        elapsed = time.perf_counter() - clock
        reduced = self._reduce(flags, elapsed, since)
        world = ranks.get_world_size()
        self.sync.adapt(reduced.extras[0] / world / max(since, 1))
        means = reduced.means(self.accumulator.names)
        if Flag.non_finite in reduced.flags:
            self._raise_non_finite(means, bad, start_batch)
        # increments that add up to the loop's length (DRYTorch's
        # contract): the first one also counts the batches of a resume
        before = index - since
        resumed = before if before == start_batch else 0
        event.update(self._pushed(means), since + resumed)
        return LoopOutcome(
            means,
            index,
            preempted=Flag.preempt in reduced.flags,
            terminate=Flag.terminate in reduced.flags,
        )

    def _pushed(self, means: dict[str, float]) -> dict[str, float]:
        """What a sync point shows the progress trackers: the means here."""
        return means

    def _reduce(self, flags: set[Flag], elapsed: float, steps: int) -> Reduced:
        return self.reducer.reduce(
            self.accumulator.sums,
            self.accumulator.count,
            flags,
            extras=(elapsed, float(steps)),
        )

    def _raise_non_finite(
        self, means: dict[str, float], bad: int | None, start_batch: int
    ) -> None:
        """Raise on every rank, naming where the first bad value appeared.

        The flag only says that some rank saw one; when it is raised (once,
        and training stops) the ranks exchange their first bad batch, so
        that every rank names the same rank and the earliest batch (the
        lowest rank among those that saw it first).
        """
        epoch = self.model.epoch + 1
        value = next(iter(means.values()), float('nan'))
        mine = None if bad is None else start_batch + bad + 1
        found: list[Any] = [mine]
        if ranks.is_distributed():
            found = [None] * ranks.get_world_size()
            dist.all_gather_object(found, mine)
        seen = [(batch, rank) for rank, batch in enumerate(found) if batch]
        if not seen:
            raise exceptions.ConvergenceError(value, epoch, None)
        # the earliest batch: under DDP a NaN gradient of one rank makes
        # every rank's next loss NaN, which must not hide where it began
        batch, rank = min(seen)
        where = rank if ranks.is_distributed() else None
        raise exceptions.ConvergenceError(value, epoch, batch, where)

    def describe(self) -> dict[str, Any]:
        return {
            'name': self.name,
            'objective': self.objective,
            'loader': self.loader,
            'sync_every': self.sync.fixed or 'adaptive',
        }
