"""Hooks that act between epochs: early stopping, plateaus, saving.

Hooks run on every rank with the global metrics, so they take the same
decision everywhere without any collective of their own.  Stateful hooks
expose ``state_dict``/``load_state_dict`` and are saved in checkpoints, so a
resumed run keeps its patience counters.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from drytorch.lib.training import Trainer

__all__ = [
    'EarlyStoppingCallback',
    'MetricMonitor',
    'ReduceLROnPlateau',
    'SaveEveryEpochs',
]


class MetricMonitor:
    """Follows one metric of a trainer and says when it improves.

    Args:
        metric: the metric name; the trainer's loss by default.
        source: 'validation' (falls back to training when the trainer has
            no validation) or 'training'.
        min_delta: the smallest change that counts as an improvement.
        best_is: 'auto' reads the direction from the objective.

    """

    def __init__(
        self,
        metric: str | None = None,
        source: Literal['validation', 'training'] = 'validation',
        min_delta: float = 0.0,
        best_is: Literal['auto', 'higher', 'lower'] = 'auto',
    ) -> None:
        if best_is not in ('auto', 'higher', 'lower'):
            raise ValueError(
                f'best_is must be auto, higher or lower, got {best_is!r}.'
            )
        self.metric = metric
        self.source = source
        self.min_delta = min_delta
        self.best_is = best_is
        self.best: float | None = None
        self.epochs_without_improvement = 0

    def _value(self, trainer: Trainer) -> tuple[str, float]:
        validation = trainer.validation
        use_validation = self.source == 'validation' and validation
        metrics = validation.metrics if use_validation else trainer.metrics
        name = self.metric or trainer.loss.name
        if name not in metrics:
            raise KeyError(
                f'Monitored metric {name!r} is not among {sorted(metrics)}; '
                'pass one of those as `metric`.'
            )
        return name, metrics[name]

    def _higher(self, trainer: Trainer, name: str) -> bool:
        if self.best_is != 'auto':
            return self.best_is == 'higher'
        objective = (
            trainer.validation.objective
            if (self.source == 'validation' and trainer.validation)
            else trainer.objective
        )
        return objective.higher_is_better.get(name, False)

    def has_new_value(self, trainer: Trainer) -> bool:
        """Whether the metric was computed this epoch.

        Validation every ``interval`` epochs leaves the epochs in between
        without a new value: counting the old one again would take a pause
        of the validation for a plateau.
        """
        validation = trainer.validation
        if self.source != 'validation' or validation is None:
            return True
        return trainer.model.epoch % trainer.validation_interval == 0

    def update(self, trainer: Trainer) -> bool:
        """Record this epoch's value; True when it is a new best.

        An epoch without a new value (see :meth:`has_new_value`) changes
        nothing.
        """
        if not self.has_new_value(trainer):
            return False
        name, value = self._value(trainer)
        if math.isnan(value):
            self.epochs_without_improvement += 1
            return False
        sign = 1.0 if self._higher(trainer, name) else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best = value
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {'best': self.best, 'wait': self.epochs_without_improvement}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state['best']
        self.epochs_without_improvement = int(state['wait'])


class EarlyStoppingCallback(MetricMonitor):
    """Terminates training when the metric stops improving.

    Args:
        patience: epochs without improvement before stopping.
        start_from_epoch: ignore the epochs before this one.
        (others: see :class:`MetricMonitor`)

    """

    def __init__(
        self,
        metric: str | None = None,
        *,
        patience: int = 10,
        start_from_epoch: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, **kwargs)
        if patience < 1:
            raise ValueError(f'patience must be >= 1, got {patience!r}.')
        self.patience = patience
        self.start_from_epoch = start_from_epoch

    def __call__(self, trainer: Trainer) -> None:
        if trainer.model.epoch < self.start_from_epoch:
            return
        if not self.has_new_value(trainer):
            return
        self.update(trainer)
        if self.epochs_without_improvement >= self.patience:
            trainer.terminate_training(
                f'no improvement of {self.metric or trainer.loss.name} '
                f'for {self.patience} epochs (best {self.best:.4g})'
            )


class ReduceLROnPlateau(MetricMonitor):
    """Multiplies the learning rate by ``factor`` on a plateau.

    Args:
        factor: multiplier of the base learning rate, in (0, 1).
        patience: epochs without improvement before reducing.
        cooldown: epochs to wait after a reduction.
        min_lr: the learning rate never goes below this.

    """

    def __init__(
        self,
        metric: str | None = None,
        *,
        factor: float = 0.1,
        patience: int = 5,
        cooldown: int = 0,
        min_lr: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, **kwargs)
        if not 0 < factor < 1:
            raise ValueError(f'factor must be in (0, 1), got {factor!r}.')
        self.factor = factor
        self.patience = patience
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.cooldown_left = 0

    def __call__(self, trainer: Trainer) -> None:
        if not self.has_new_value(trainer):
            return
        self.update(trainer)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.epochs_without_improvement = 0
            return
        if self.epochs_without_improvement < self.patience:
            return
        base = trainer.base_lr or trainer.learning_schema.base_lr
        if isinstance(base, dict):
            new: float | dict[str, float] = {
                k: max(v * self.factor, self.min_lr) for k, v in base.items()
            }
        else:
            new = max(base * self.factor, self.min_lr)
        trainer.update_learning_rate(base_lr=new)
        self.cooldown_left = self.cooldown
        self.epochs_without_improvement = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), 'cooldown': self.cooldown_left}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.cooldown_left = int(state['cooldown'])


class SaveEveryEpochs:
    """Saves a full checkpoint every ``interval`` epochs."""

    def __init__(self, interval: int = 1) -> None:
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval!r}.')
        self.interval = interval

    def __call__(self, trainer: Trainer) -> None:
        if trainer.model.epoch % self.interval == 0:
            trainer.save_checkpoint()
