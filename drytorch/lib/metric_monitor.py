"""Follows one metric over the epochs and says when it stops improving.

The monitor behind DRYTorch's early stopping, pruning and plateau hooks,
with DRYTorch's arguments: ``metric`` (a name or an objective), ``monitor``
(the evaluation to read; validation when the trainer has one, else the
trainer), ``min_delta``, ``patience``, ``best_is`` and ``filter_fn`` (what
the history of values reduces to, the last value by default).

Differences from DRYTorch, on purpose:

- The values are global: every rank reads the same epoch metrics (one
  packed all-reduce made them), so every rank takes the same decision
  without a collective of its own.
- ``best_is='auto'`` reads the direction from the objective
  (``higher_is_better``) instead of guessing it from the first two values.
- With no ``metric``, the trainer's loss is followed.
- An epoch in which the monitored evaluation did not run
  (``add_validation(interval=2)``) records nothing, so a pause of the
  validation never looks like a plateau.
- The history, the best value and the patience count are in
  :meth:`state_dict`, which the trainer saves: a resumed run decides as an
  uninterrupted one would.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from drytorch.core import exceptions

if TYPE_CHECKING:
    from drytorch.lib.training import Trainer

__all__ = ['MetricMonitor', 'get_last']

get_last: Final = operator.itemgetter(-1)
BestIs = Literal['auto', 'higher', 'lower']


def _metric_name(metric: object) -> str | None:
    if metric is None or isinstance(metric, str):
        return metric
    name = getattr(metric, 'name', None)
    return str(name) if name else type(metric).__name__


class MetricMonitor:
    """The history of one metric, its best value and a patience count.

    Args:
        metric: the metric's name or the objective computing it; the
            trainer's loss by default.
        monitor: the evaluation (or trainer) whose ``computed_metrics`` to
            read; the trainer's validation if any, else the trainer.
        min_delta: the smallest change that counts as an improvement.
        patience: checks without improvement that are tolerated.
        best_is: 'higher', 'lower', or 'auto' (from the objective).
        filter_fn: reduces the history to the value that is compared.

    """

    def __init__(
        self,
        metric: Any = None,
        monitor: Any = None,
        min_delta: float = 1e-8,
        patience: int = 0,
        best_is: BestIs = 'auto',
        filter_fn: Callable[[Sequence[float]], float] = get_last,
    ) -> None:
        if best_is not in ('auto', 'higher', 'lower'):
            raise ValueError(
                f'best_is must be auto, higher or lower; got {best_is!r}.'
            )
        if isinstance(patience, bool) or not isinstance(patience, int):
            raise TypeError(f'patience must be an int; got {patience!r}.')
        if patience < 0:
            raise ValueError(f'patience must be >= 0; got {patience}.')
        if not callable(filter_fn):
            raise TypeError(f'filter_fn must be callable; got {filter_fn!r}.')
        self.metric = metric
        self.optional_monitor = monitor
        self.min_delta = min_delta
        self.patience = patience
        self.best_is: BestIs = best_is
        higher = getattr(metric, 'higher_is_better', None)
        if best_is == 'auto' and isinstance(higher, bool):
            self.best_is = 'higher' if higher else 'lower'
        self.filter_fn = filter_fn
        self.history: list[float] = []
        self._best: float | None = None
        self._wait = 0
        self._name = _metric_name(metric)

    # -------------------------------------------------------------- reading
    @property
    def metric_name(self) -> str | None:
        """The monitored metric, once known."""
        return self._name

    @property
    def best_value(self) -> float:
        """The best filtered value so far (the first value at first).

        Raises:
            ResultNotAvailableError: before any value was recorded.

        """
        if self._best is not None:
            return self._best
        if not self.history:
            raise exceptions.ResultNotAvailableError()
        return self.history[0]

    @property
    def filtered_value(self) -> float:
        """``filter_fn`` of the history."""
        if not self.history:
            raise exceptions.ResultNotAvailableError()
        return float(self.filter_fn(self.history))

    def source(self, trainer: Trainer) -> Any:
        """The evaluation (or trainer) whose metrics are read."""
        if self.optional_monitor is not None:
            return self.optional_monitor
        return trainer.validation or trainer

    def has_new_value(self, trainer: Trainer) -> bool:
        """Whether the monitored evaluation ran this epoch."""
        validation = trainer.validation
        if validation is None or self.source(trainer) is not validation:
            return True
        return trainer.model.epoch % trainer.validation_interval == 0

    def record_metric_value(self, trainer: Trainer) -> None:
        """Append this epoch's value of the metric to the history.

        Raises:
            MetricNotFoundError: if the evaluation did not compute it.

        """
        source = self.source(trainer)
        metrics = source.computed_metrics
        if self._name is None:
            self._name = trainer.loss.name
        if self._name not in metrics:
            raise exceptions.MetricNotFoundError(
                getattr(source, 'name', repr(source)), self._name, metrics
            )
        if self.best_is == 'auto':
            objective = getattr(source, 'objective', None)
            directions = getattr(objective, 'higher_is_better', {})
            higher = directions.get(self._name, False)
            self.best_is = 'higher' if higher else 'lower'
        self.history.append(float(metrics[self._name]))

    # ------------------------------------------------------------- deciding
    def is_better(self, value: float, reference: float) -> bool:
        """Whether ``value`` beats ``reference`` by more than ``min_delta``."""
        if math.isnan(value):
            return False
        if self.best_is == 'higher':
            return value > reference + self.min_delta
        return value < reference - self.min_delta

    def is_improving(self) -> bool:
        """Whether the filtered value is a new best; counts a plateau if not.

        The first value is always an improvement.
        """
        if len(self.history) <= 1:
            if self.history and not math.isnan(self.history[0]):
                self._best = self.history[0]
            return True
        value = self.filtered_value
        new_best = self._best is None or self.is_better(value, self._best)
        if new_best and not math.isnan(value):
            self._best = value
            self._wait = 0
            return True
        self._wait += 1
        return False

    def is_patient(self) -> bool:
        """Whether the plateau is still within ``patience``."""
        return self._wait < self.patience

    def reset_patience(self) -> None:
        """Start counting the plateau again (after acting on it)."""
        self._wait = 0

    @property
    def epochs_without_improvement(self) -> int:
        """Checks since the last improvement."""
        return self._wait

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to decide as an uninterrupted one."""
        return {
            'history': list(self.history),
            'best': self._best,
            'wait': self._wait,
            'name': self._name,
            'best_is': self.best_is,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.history = [float(v) for v in state.get('history', [])]
        self._best = state['best']
        self._wait = int(state['wait'])
        self._name = state.get('name', self._name)
        self.best_is = state.get('best_is', self.best_is)
