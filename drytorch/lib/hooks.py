"""Hooks that act between epochs: early stopping, pruning, plateaus, saving.

The names and arguments are DRYTorch's.  Hooks run on every rank with the
global metrics, so they take the same decision everywhere without any
collective of their own (a stop is agreed by the trainer at the end of the
epoch).  Stateful hooks expose ``state_dict``/``load_state_dict`` and are
saved in checkpoints, so a resumed run keeps its patience counters, its
histories and its changed schedules.

Register them with ``trainer.post_epoch_hooks.register(hook)`` (or
``register_all([...])``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from drytorch.lib.hook_registry import HookRegistry
from drytorch.lib.hook_wrappers import (
    CallEvery,
    Hook,
    StaticHook,
    TrainerHook,
    call_every,
    saving_hook,
    static_hook_class,
)
from drytorch.lib.metric_monitor import BestIs, MetricMonitor, get_last
from drytorch.lib.schedulers import AbstractScheduler, RestartScheduler

if TYPE_CHECKING:
    from drytorch.lib.training import Trainer

__all__ = [
    'CallEvery',
    'ChangeSchedulerOnPlateauCallback',
    'EarlyStoppingCallback',
    'Hook',
    'HookRegistry',
    'MetricMonitor',
    'PruneCallback',
    'ReduceLROnPlateau',
    'RestartScheduleOnPlateau',
    'SaveEveryEpochs',
    'StaticHook',
    'TrainerHook',
    'call_every',
    'saving_hook',
    'static_hook_class',
]

_Filter = Callable[[Sequence[float]], float]


class _MonitorHook:
    """A hook that decides from a :class:`MetricMonitor`."""

    monitor: MetricMonitor

    def state_dict(self) -> dict[str, Any]:
        return {'monitor': self.monitor.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if 'monitor' in state:
            self.monitor.load_state_dict(state['monitor'])
        else:  # written before the monitor kept a history
            self.monitor.load_state_dict(state)


class EarlyStoppingCallback(_MonitorHook):
    """Terminates training when the metric stops improving.

    Args:
        metric: the metric's name or objective; the loss by default.
        monitor: the evaluation to read; validation if any, else training.
        min_delta: the smallest change that counts as an improvement.
        patience: checks without improvement before stopping.
        best_is: 'higher', 'lower' or 'auto' (from the objective).
        filter_fn: reduces the history to the compared value.
        start_from_epoch: no stop before this epoch (values before it are
            recorded).

    """

    def __init__(
        self,
        metric: Any = None,
        monitor: Any = None,
        min_delta: float = 1e-8,
        patience: int = 10,
        best_is: BestIs = 'auto',
        filter_fn: _Filter = get_last,
        start_from_epoch: int = 2,
    ) -> None:
        if patience < 1:
            raise ValueError(f'patience must be >= 1, got {patience!r}.')
        self.monitor = MetricMonitor(
            metric, monitor, min_delta, patience, best_is, filter_fn
        )
        self.start_from_epoch = start_from_epoch

    def __call__(self, trainer: Trainer) -> None:
        """Record the epoch's value; stop once patience has run out."""
        monitor = self.monitor
        if not monitor.has_new_value(trainer):
            return
        monitor.record_metric_value(trainer)
        if trainer.model.epoch < self.start_from_epoch:
            return
        if monitor.is_improving() or monitor.is_patient():
            return
        trainer.terminate_training(
            f'no improvement of {monitor.metric_name} for '
            f'{monitor.patience} epochs (best {monitor.best_value:.4g})'
        )


class PruneCallback(_MonitorHook):
    """Terminates training when the metric misses a threshold at an epoch.

    Args:
        thresholds: epoch -> the value the metric must beat at that epoch
            (``None``: stop there whatever the value).
        (others: see :class:`EarlyStoppingCallback`)

    Attributes:
        trial_values: the values at the epochs where training was pruned.

    """

    def __init__(
        self,
        thresholds: Mapping[int, float | None],
        metric: Any = None,
        monitor: Any = None,
        min_delta: float = 1e-8,
        best_is: BestIs = 'auto',
        filter_fn: _Filter = get_last,
    ) -> None:
        self.monitor = MetricMonitor(
            metric, monitor, min_delta, 0, best_is, filter_fn
        )
        self.thresholds = dict(thresholds)
        self.trial_values: dict[int, float] = {}

    def __call__(self, trainer: Trainer) -> None:
        """Stop if this epoch has a threshold the metric does not beat."""
        monitor = self.monitor
        if not monitor.has_new_value(trainer):
            return
        monitor.record_metric_value(trainer)
        epoch = trainer.model.epoch
        if epoch not in self.thresholds:
            return
        threshold = self.thresholds[epoch]
        value = monitor.filtered_value
        if threshold is None or not monitor.is_better(value, threshold):
            self.trial_values[epoch] = value
            trainer.terminate_training(
                f'pruned at epoch {epoch}: {monitor.metric_name}={value:.4g} '
                f'does not beat the threshold {threshold}'
            )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), 'trial_values': self.trial_values}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.trial_values = {
            int(k): float(v) for k, v in state.get('trial_values', {}).items()
        }


class ChangeSchedulerOnPlateauCallback(_MonitorHook, abc.ABC):
    """Changes the learning-rate schedule when the metric plateaus.

    After a change the plateau count starts again, and the next
    ``cooldown`` checks are skipped.  The changed schedule is part of the
    trainer's checkpoint.

    Args:
        patience: checks without improvement before changing.
        cooldown: checks skipped after a change.
        (others: see :class:`EarlyStoppingCallback`)

    """

    def __init__(
        self,
        metric: Any = None,
        monitor: Any = None,
        min_delta: float = 1e-8,
        patience: int = 0,
        best_is: BestIs = 'auto',
        filter_fn: _Filter = get_last,
        cooldown: int = 0,
    ) -> None:
        if cooldown < 0:
            raise ValueError(f'cooldown must be >= 0, got {cooldown!r}.')
        self.monitor = MetricMonitor(
            metric, monitor, min_delta, patience, best_is, filter_fn
        )
        self.cooldown = cooldown
        self._cooldown_counter = 0

    def __call__(self, trainer: Trainer) -> None:
        """Record the epoch's value; change the schedule on a plateau."""
        monitor = self.monitor
        if not monitor.has_new_value(trainer):
            return
        monitor.record_metric_value(trainer)
        if self._cooldown_counter > 0:
            self._cooldown_counter -= 1
            monitor.reset_patience()
            return
        if monitor.is_improving() or monitor.is_patient():
            return
        self.change(trainer)
        monitor.reset_patience()
        self._cooldown_counter = self.cooldown

    def change(self, trainer: Trainer) -> None:
        """Give the trainer the schedule of :meth:`get_scheduler`."""
        scheduler = trainer.learning_schema.scheduler
        new = self.get_scheduler(trainer.model.epoch, scheduler)
        trainer.update_learning_rate(scheduler=new)

    @abc.abstractmethod
    def get_scheduler(
        self, epoch: int, scheduler: AbstractScheduler
    ) -> AbstractScheduler:
        """The schedule that replaces ``scheduler`` at ``epoch``."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), 'cooldown': self._cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._cooldown_counter = int(state.get('cooldown', 0))


class ReduceLROnPlateau(ChangeSchedulerOnPlateauCallback):
    """Multiplies the base learning rate by ``factor`` on a plateau.

    DRYTorch rescales the schedule's output; here the base rate is scaled
    (the same rates), so that ``min_lr`` can bound it and the trainer's
    checkpoint keeps it.

    Args:
        factor: multiplier of the base learning rate, in (0, 1).
        min_lr: the base rate never goes below this.
        (others: see :class:`ChangeSchedulerOnPlateauCallback`)

    """

    def __init__(
        self,
        metric: Any = None,
        monitor: Any = None,
        min_delta: float = 1e-8,
        patience: int = 0,
        best_is: BestIs = 'auto',
        filter_fn: _Filter = get_last,
        factor: float = 0.1,
        cooldown: int = 0,
        *,
        min_lr: float = 0.0,
    ) -> None:
        super().__init__(
            metric, monitor, min_delta, patience, best_is, filter_fn, cooldown
        )
        if not 0 < factor < 1:
            raise ValueError(f'factor must be in (0, 1), got {factor!r}.')
        self.factor = factor
        self.min_lr = min_lr

    def change(self, trainer: Trainer) -> None:
        """Scale the base rate (every group's) down by ``factor``."""
        base = trainer.base_lr or trainer.learning_schema.base_lr
        if isinstance(base, dict):
            new: float | dict[str, float] = {
                k: max(v * self.factor, self.min_lr) for k, v in base.items()
            }
        else:
            new = max(base * self.factor, self.min_lr)
        trainer.update_learning_rate(base_lr=new)

    def get_scheduler(
        self, epoch: int, scheduler: AbstractScheduler
    ) -> AbstractScheduler:
        """The schedule is kept: the base rate changes (see the class)."""
        return scheduler


class RestartScheduleOnPlateau(ChangeSchedulerOnPlateauCallback):
    """On a plateau, takes the epochs so far as a warm-up and restarts.

    As in DRYTorch, the schedule restarts from its epoch 0 now and every
    ``epoch`` epochs after (``RestartScheduler(scheduler, epoch)``).
    """

    def get_scheduler(
        self, epoch: int, scheduler: AbstractScheduler
    ) -> AbstractScheduler:
        """``scheduler`` restarted every ``epoch`` epochs."""
        return RestartScheduler(scheduler, max(epoch, 1))


class SaveEveryEpochs:
    """Saves a full checkpoint every ``interval`` epochs."""

    def __init__(self, interval: int = 1) -> None:
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval!r}.')
        self.interval = interval

    def __call__(self, trainer: Trainer) -> None:
        """Ask for a checkpoint at the end of the epoch, if due."""
        if trainer.model.epoch % self.interval == 0:
            trainer.save_checkpoint()
