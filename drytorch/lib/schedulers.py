"""Learning-rate schedules as pure functions of the epoch.

A scheduler is called as ``scheduler(base_lr, epoch)`` where ``epoch`` is
the number of epochs already completed: 0 gives the learning rate of the
first epoch trained, ``k`` the rate of the epoch that follows ``k``
completed ones.  The value depends on nothing else, so a scheduler keeps no
state that a checkpoint must save: a resumed run that knows its epoch gets
exactly the rate of an uninterrupted one.

All schedules here decay, so every value lies in ``[0, base_lr]``.  The
wrappers compose: ``CosineScheduler(100).with_warmup(5).with_restart(105)``
warms up again at each restart.

The same functions serve a schedule per optimizer step: ``.per_step()``
(a :class:`PerStepScheduler`) tells the trainer to call it with the number
of optimizer steps already taken instead of the epochs, and to set the
rate before every step.  ``CosineScheduler(10_000).with_warmup(500)
.per_step()`` warms up linearly over 500 steps, then decays over 10,000.
The step count is the trainer's, saved in its checkpoints, so a resume in
the middle of an epoch (of a warmup) continues the same curve.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    'AbstractScheduler',
    'ConstantScheduler',
    'CosineScheduler',
    'ExponentialScheduler',
    'PerStepScheduler',
    'PolynomialScheduler',
    'RestartScheduler',
    'StepScheduler',
    'WarmupScheduler',
]


def _check_real(
    owner: object,
    name: str,
    value: object,
    rule: str,
    test: Callable[[float], bool],
) -> None:
    """Raise if ``value`` is not a finite real number satisfying ``test``."""
    where = type(owner).__name__
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f'{where}: {name} must be a real number {rule}; '
            f'got {value!r} of type {type(value).__name__}.'
        )
    if not (math.isfinite(value) and test(float(value))):
        raise ValueError(f'{where}: {name} must be {rule}; got {value!r}.')


def _check_int(owner: object, name: str, value: object, minimum: int) -> None:
    """Raise if ``value`` is not an integer of at least ``minimum``."""
    where = type(owner).__name__
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f'{where}: {name} must be an integer >= {minimum}; '
            f'got {value!r} of type {type(value).__name__}.'
        )
    if value < minimum:
        raise ValueError(
            f'{where}: {name} must be an integer >= {minimum}; got {value!r}.'
        )


def _check_min_decay(owner: Any) -> None:
    """Raise unless ``owner.min_decay``, the floor of a decay, is in [0, 1]."""
    _check_real(
        owner, 'min_decay', owner.min_decay, 'in [0, 1]', lambda v: 0 <= v <= 1
    )


def _between(low: float, progress: float) -> float:
    """The factor ``progress`` of the way down from 1 to ``low``.

    Clamped so that rounding never lifts a rate above ``base_lr``.
    """
    return min(1.0, low + (1.0 - low) * progress)


@dataclasses.dataclass(frozen=True)
class AbstractScheduler(abc.ABC):
    """Base class: validates the call, subclasses compute the value."""

    def __call__(self, base_lr: float, epoch: int) -> float:
        """The learning rate after ``epoch`` completed epochs.

        Raises:
            TypeError: if ``epoch`` is not an integer.
            ValueError: if ``epoch`` is negative or ``base_lr`` is not a
                finite non-negative number.

        """
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral):
            raise TypeError(
                f'{self!r}: epoch must be an integer (the number of '
                f'completed epochs); got {epoch!r}.'
            )
        if epoch < 0:
            raise ValueError(
                f'{self!r}: epoch must be >= 0 (the number of completed '
                f'epochs, 0 for the first epoch); got {epoch}.'
            )
        _check_real(
            self, 'base_lr', base_lr, 'finite and >= 0', lambda v: v >= 0
        )
        return float(self._compute(float(base_lr), int(epoch)))

    @abc.abstractmethod
    def _compute(self, base_lr: float, epoch: int) -> float:
        """The value for a validated ``base_lr`` and ``epoch``."""

    def with_warmup(self, warmup_steps: int = 10) -> WarmupScheduler:
        """This schedule, preceded by ``warmup_steps`` epochs of warmup."""
        return WarmupScheduler(self, warmup_steps)

    def with_restart(
        self, restart_interval: int, restart_fraction: float = 1.0
    ) -> RestartScheduler:
        """This schedule, restarted every ``restart_interval`` epochs."""
        return RestartScheduler(self, restart_interval, restart_fraction)

    def per_step(self) -> PerStepScheduler:
        """This schedule counted in optimizer steps rather than epochs."""
        return PerStepScheduler(self)

    @property
    def counts_steps(self) -> bool:
        """Whether the argument is optimizer steps (else epochs)."""
        return False


@dataclasses.dataclass(frozen=True)
class ConstantScheduler(AbstractScheduler):
    """Keeps ``base_lr``: the default, so that no schedule is a schedule."""

    def _compute(self, base_lr: float, epoch: int) -> float:
        return base_lr


@dataclasses.dataclass(frozen=True)
class ExponentialScheduler(AbstractScheduler):
    """Decays by ``exp_decay`` per epoch towards ``min_decay * base_lr``.

    ``lr = base_lr * (min_decay + (1 - min_decay) * exp_decay ** epoch)``:
    the floor is approached smoothly instead of being hit with a kink.
    """

    exp_decay: float = 0.975
    min_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_real(
            self,
            'exp_decay',
            self.exp_decay,
            'in (0, 1]',
            lambda v: 0 < v <= 1,
        )
        _check_min_decay(self)

    def _compute(self, base_lr: float, epoch: int) -> float:
        return base_lr * _between(self.min_decay, self.exp_decay**epoch)


@dataclasses.dataclass(frozen=True)
class CosineScheduler(AbstractScheduler):
    """Half a cosine from ``base_lr`` to ``min_decay * base_lr``.

    The floor is reached after ``decay_steps`` epochs and kept afterwards;
    wrap it in :class:`RestartScheduler` for warm restarts.
    """

    decay_steps: int = 250
    min_decay: float = 0.01

    def __post_init__(self) -> None:
        _check_int(self, 'decay_steps', self.decay_steps, 1)
        _check_min_decay(self)

    def _compute(self, base_lr: float, epoch: int) -> float:
        done = min(epoch, self.decay_steps) / self.decay_steps
        progress = (1.0 + math.cos(math.pi * done)) / 2.0
        return base_lr * _between(self.min_decay, progress)


@dataclasses.dataclass(frozen=True)
class PolynomialScheduler(AbstractScheduler):
    """Decays as ``(1 - epoch / max_epochs) ** power`` to a floor.

    With ``power=1`` the rate falls linearly; the floor
    ``min_decay * base_lr`` is kept after ``max_epochs``.
    """

    max_epochs: int = 1000
    power: float = 1.0
    min_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_int(self, 'max_epochs', self.max_epochs, 1)
        _check_real(self, 'power', self.power, '> 0', lambda v: v > 0)
        _check_min_decay(self)

    def _compute(self, base_lr: float, epoch: int) -> float:
        left = 1.0 - min(epoch, self.max_epochs) / self.max_epochs
        return base_lr * _between(self.min_decay, left**self.power)


@dataclasses.dataclass(frozen=True)
class StepScheduler(AbstractScheduler):
    """Multiplies the rate by ``gamma`` once ``epoch`` reaches a milestone.

    After ``epoch`` completed epochs the rate is ``base_lr * gamma ** n``
    with ``n`` the number of milestones ``<= epoch``, as in
    ``torch.optim.lr_scheduler.MultiStepLR``.
    """

    milestones: Sequence[int]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.milestones, str | bytes) or not isinstance(
            self.milestones, Sequence
        ):
            raise TypeError(
                f'StepScheduler: milestones must be a sequence of epochs; '
                f'got {self.milestones!r}.'
            )
        milestones = tuple(self.milestones)
        if not milestones:
            raise ValueError(
                'StepScheduler: milestones is empty; give at least one '
                'epoch, or use ConstantScheduler() for a constant rate.'
            )
        for milestone in milestones:
            _check_int(self, 'each milestone', milestone, 0)
        for before, after in itertools.pairwise(milestones):
            if after <= before:
                raise ValueError(
                    f'StepScheduler: milestones must be strictly '
                    f'increasing; got {after} after {before} in '
                    f'{list(milestones)}.'
                )
        # A tuple keeps the frozen instance immutable and hashable.
        object.__setattr__(self, 'milestones', milestones)
        _check_real(
            self, 'gamma', self.gamma, 'in (0, 1]', lambda v: 0 < v <= 1
        )

    def _compute(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** bisect.bisect_right(
            self.milestones, epoch
        )


def _check_base(owner: object, base: object) -> None:
    """Raise unless ``base`` is a scheduler a wrapper can wrap."""
    if not isinstance(base, AbstractScheduler):
        raise TypeError(
            f'{type(owner).__name__}: base must be a scheduler such as '
            f'ConstantScheduler(); got {base!r}.'
        )
    if base.counts_steps:
        raise TypeError(
            f'{type(owner).__name__}: {base!r} counts optimizer steps and '
            'cannot be wrapped; apply .per_step() last, to the whole '
            'schedule.'
        )


@dataclasses.dataclass(frozen=True)
class WarmupScheduler(AbstractScheduler):
    """A linear ramp over ``warmup_steps`` epochs, then the base schedule.

    During warmup the rate climbs in equal steps from 0 towards the base
    schedule's first value: epoch ``e < warmup_steps`` gets the fraction
    ``(e + 1) / (warmup_steps + 1)`` of it, so that no epoch is spent
    training at rate 0.  The base schedule then starts at its own epoch 0,
    which makes the curve continuous.
    """

    base: AbstractScheduler
    warmup_steps: int = 10

    def __post_init__(self) -> None:
        _check_base(self, self.base)
        _check_int(self, 'warmup_steps', self.warmup_steps, 0)

    def _compute(self, base_lr: float, epoch: int) -> float:
        if epoch >= self.warmup_steps:
            return self.base(base_lr, epoch - self.warmup_steps)
        fraction = (epoch + 1) / (self.warmup_steps + 1)
        return self.base(base_lr, 0) * fraction


@dataclasses.dataclass(frozen=True)
class RestartScheduler(AbstractScheduler):
    """Restarts the base schedule every ``restart_interval`` epochs.

    The ``k``-th restart (``k = epoch // restart_interval``) runs the base
    schedule from its epoch 0 with ``base_lr * restart_fraction ** k``, so
    that each cycle may start lower than the previous one.
    """

    base: AbstractScheduler
    restart_interval: int
    restart_fraction: float = 1.0

    def __post_init__(self) -> None:
        _check_base(self, self.base)
        _check_int(self, 'restart_interval', self.restart_interval, 1)
        _check_real(
            self,
            'restart_fraction',
            self.restart_fraction,
            'in (0, 1]',
            lambda v: 0 < v <= 1,
        )

    def _compute(self, base_lr: float, epoch: int) -> float:
        cycle, position = divmod(epoch, self.restart_interval)
        return self.base(base_lr * self.restart_fraction**cycle, position)


@dataclasses.dataclass(frozen=True)
class PerStepScheduler(AbstractScheduler):
    """The base schedule as a function of optimizer steps, not epochs.

    ``scheduler(base_lr, n)`` is the base schedule's value after ``n``
    completed optimizer steps (the argument is still named ``epoch`` in
    the base class's signature); every parameter of the base schedule
    (``decay_steps``, ``warmup_steps``, ``restart_interval``) then counts
    steps.  With gradient accumulation a step is one window of
    micro-batches.  Wrapping it again (``.with_warmup``) is refused: the
    wrappers would count epochs inside a schedule of steps.
    """

    base: AbstractScheduler

    def __post_init__(self) -> None:
        _check_base(self, self.base)  # refuses a base counting steps

    @property
    def counts_steps(self) -> bool:
        return True

    def _compute(self, base_lr: float, epoch: int) -> float:
        return self.base(base_lr, epoch)

    def with_warmup(self, warmup_steps: int = 10) -> WarmupScheduler:
        raise TypeError(
            'Add the warmup before .per_step(): '
            f'scheduler.with_warmup({warmup_steps}).per_step().'
        )

    def with_restart(
        self, restart_interval: int, restart_fraction: float = 1.0
    ) -> RestartScheduler:
        raise TypeError(
            'Add the restarts before .per_step(): '
            f'scheduler.with_restart({restart_interval}).per_step().'
        )


# DRYTorch's transformations live in their own module; imported last, once
# every schedule above exists, so that DRYTorch's imports from here work.
from drytorch.lib.scheduler_compositions import (  # noqa: E402
    RescaleScheduler,
    rescale,
    restart,
    warmup,
)

__all__ += ['RescaleScheduler', 'rescale', 'restart', 'warmup']
