"""DRYTorch's scheduler transformations: ``rescale``, ``restart``, ``warmup``.

Each returns a function that wraps a schedule, so that compositions read as
DRYTorch's do: ``warmup(2)(rescale(0.5)(CosineScheduler(10)))``.  The
results are the frozen, picklable schedules of ``drytorch.lib.schedulers``
(a checkpoint keeps them, and a resumed run gets the same rates).
Importable from ``drytorch.lib.schedulers``, where DRYTorch has them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from drytorch.lib import schedulers as _s

__all__ = ['RescaleScheduler', 'rescale', 'restart', 'warmup']


@dataclasses.dataclass(frozen=True)
class RescaleScheduler(_s.AbstractScheduler):
    """The base schedule's rate times ``factor`` (positive)."""

    base: _s.AbstractScheduler
    factor: float

    def __post_init__(self) -> None:
        _s._check_base(self, self.base)
        _s._check_real(
            self, 'factor', self.factor, 'positive and finite', lambda v: v > 0
        )

    def _compute(self, base_lr: float, epoch: int) -> float:
        return self.factor * self.base(base_lr, epoch)


def rescale(
    factor: float,
) -> Callable[[_s.AbstractScheduler], RescaleScheduler]:
    """A transformation multiplying a schedule's rates by ``factor``."""
    RescaleScheduler(_s.ConstantScheduler(), factor)  # checked now

    def transform(base: _s.AbstractScheduler) -> RescaleScheduler:
        return RescaleScheduler(base, factor)

    return transform


def restart(
    restart_interval: int, restart_fraction: float = 1.0
) -> Callable[[_s.AbstractScheduler], _s.RestartScheduler]:
    """A transformation restarting a schedule every ``restart_interval``.

    The ``k``-th cycle starts at ``base_lr * restart_fraction ** k`` (see
    ``RestartScheduler``).  DRYTorch's ``max_restart`` is not here yet.
    """
    _s.RestartScheduler(
        _s.ConstantScheduler(), restart_interval, restart_fraction
    )

    def transform(base: _s.AbstractScheduler) -> _s.RestartScheduler:
        return _s.RestartScheduler(base, restart_interval, restart_fraction)

    return transform


def warmup(
    warmup_steps: int = 10,
) -> Callable[[_s.AbstractScheduler], _s.WarmupScheduler]:
    """A transformation preceding a schedule by a linear warm-up."""
    _s.WarmupScheduler(_s.ConstantScheduler(), warmup_steps)  # checked now

    def transform(base: _s.AbstractScheduler) -> _s.WarmupScheduler:
        return _s.WarmupScheduler(base, warmup_steps)

    return transform
