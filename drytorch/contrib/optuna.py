"""Optuna studies over drytorch trainings (DRYTorch's ``contrib.optuna``).

``TrialCallback`` reports a monitored metric to an Optuna trial after each
epoch and prunes the trial when Optuna says so; ``suggest_overrides`` turns
a search space written in a (Hydra) configuration into overrides;
``get_final_value`` reduces a trial's reported values to one.

Under a process group only rank zero talks to the study (its storage is a
shared file or server): pass the trial on rank zero and ``None`` on the
others.  Rank zero reports and asks whether to prune, and every rank learns
the answer from one broadcast at the same hook call, so all ranks stop
together (``drytorch.distributed.agreement.on_rank_zero``).  The monitored
value is global, the same on every rank.

A pruned trial raises ``optuna.TrialPruned`` on every rank, as in DRYTorch,
so that Optuna records it as PRUNED; the run it ends is recorded as
completed (the exception is an :class:`~drytorch.core.exceptions.
EndsRunCleanly`), not failed.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from drytorch.core import exceptions
from drytorch.distributed import ranks
from drytorch.distributed.agreement import on_rank_zero
from drytorch.lib.metric_monitor import BestIs, MetricMonitor, get_last

if TYPE_CHECKING:
    import optuna

    from drytorch.lib.training import Trainer

__all__ = [
    'OptunaError',
    'TrialCallback',
    'get_final_value',
    'suggest_overrides',
]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as err:
        raise exceptions.MissingDependencyError('optuna', 'optuna') from err
    return optuna


class OptunaError(exceptions.DryTorchError):
    """A search space or a trial that cannot be used."""


def _pruned_class() -> type[BaseException]:
    optuna = _optuna()

    class TrialPrunedCleanly(optuna.TrialPruned, exceptions.EndsRunCleanly):
        """``optuna.TrialPruned`` that ends the drytorch run as completed."""

    return TrialPrunedCleanly


_PRUNED: list[type[BaseException]] = []  # made once optuna is imported


def _pruned(message: str) -> BaseException:
    if not _PRUNED:
        _PRUNED.append(_pruned_class())
    return _PRUNED[0](message)


class TrialCallback:
    """Reports the monitored metric to ``trial``; prunes when told to.

    Register it in ``trainer.post_epoch_hooks``.  Arguments as DRYTorch's.

    Args:
        trial: the Optuna trial on rank zero; ``None`` on the other ranks.
        filter_fn: reduces the metric's history to the reported value.
        metric: the metric's name or objective; the loss by default.
        monitor: the evaluation to read; validation if any, else training.
        min_delta: passed to the monitor.
        best_is: 'higher', 'lower' or 'auto' (from the objective).

    Attributes:
        reported: epoch -> the value reported at that epoch.
        pruned: whether this callback pruned the trial.

    """

    def __init__(
        self,
        trial: optuna.Trial | None,
        filter_fn: Callable[[Sequence[float]], float] = get_last,
        metric: Any = None,
        monitor: Any = None,
        min_delta: float = 1e-8,
        best_is: BestIs = 'auto',
    ) -> None:
        _optuna()  # the install line now, not after the first epoch
        if trial is None and ranks.is_rank_zero():
            raise OptunaError(
                'TrialCallback needs the trial on rank zero (None is only '
                'for the other ranks, which never talk to the study).'
            )
        self.trial = trial
        self.monitor = MetricMonitor(
            metric, monitor, min_delta, 0, best_is, filter_fn
        )
        self.reported: dict[int, float] = {}
        self.pruned = False

    def __call__(self, trainer: Trainer) -> None:
        """Report this epoch's value; prune on every rank if Optuna says."""
        monitor = self.monitor
        if not monitor.has_new_value(trainer):  # the same on every rank
            return
        monitor.record_metric_value(trainer)
        epoch = trainer.model.epoch
        value = monitor.filtered_value
        self.reported[epoch] = value
        # a collective on every rank, at the same hook call
        prune = on_rank_zero(
            lambda: self._report(value, epoch), 'report to the Optuna study'
        )
        if prune:
            self.pruned = True
            reason = (
                f'Optuna pruned the trial at epoch {epoch} '
                f'({monitor.metric_name}={value:.4g})'
            )
            trainer.terminate_training(reason)
            raise _pruned(reason)

    def _report(self, value: float, epoch: int) -> bool:
        assert self.trial is not None
        self.trial.report(value, epoch)
        return bool(self.trial.should_prune())

    def state_dict(self) -> dict[str, Any]:
        """The monitor and the reported values (saved with the run)."""
        return {
            'monitor': self.monitor.state_dict(),
            'reported': self.reported,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.monitor.load_state_dict(state['monitor'])
        self.reported = {
            int(k): float(v) for k, v in state.get('reported', {}).items()
        }


def _display_name(setting: str) -> str:
    """``'model.layers.0'`` -> ``'Layers 0'``, ``'optim.lr'`` -> ``'Lr'``."""
    *prefix, last = setting.rsplit('.', maxsplit=2)
    if last.isdigit() and prefix:
        last = f'{prefix[-1]} {last}'
    return string.capwords(last.replace('_', ' '))


def _suggester(trial: Any, method: str) -> Callable[..., Any]:
    suggest = getattr(trial, method, None)
    if not (method.startswith('suggest_') and callable(suggest)):
        raise OptunaError(
            f'{method!r} is not a suggest method of optuna.Trial (use '
            'suggest_float, suggest_int, suggest_categorical, or '
            'suggest_list).'
        )
    return suggest


def suggest_overrides(
    tune_cfg: Any, trial: optuna.Trial, use_full_name: bool = False
) -> list[str]:
    """Overrides (``'optim.lr=0.01'``) sampled from a search space.

    ``tune_cfg`` (an OmegaConf / Hydra config, or anything with attribute
    access) has ``overrides`` (a list of fixed overrides) and
    ``tune.params``: setting -> ``{suggest: <Trial method>, settings:
    {...}}``; ``suggest: suggest_list`` samples a list whose length is
    drawn between ``settings.min_length`` and ``settings.max_length`` and
    whose items use ``settings.suggest`` with ``settings.settings``.

    Under a process group call it on rank zero (it samples from the study)
    and share the result, e.g. with ``on_rank_zero``.

    Args:
        tune_cfg: the search space, as above.
        trial: the trial to sample from.
        use_full_name: name the parameters by their full setting name
            rather than a readable short one.

    Raises:
        OptunaError: for a suggest method Optuna does not have.

    """
    overrides = [str(item) for item in tune_cfg.overrides]
    for setting, spec in tune_cfg.tune.params.items():
        name = setting if use_full_name else _display_name(setting)
        if spec.suggest == 'suggest_list':
            inner = spec.settings
            length = trial.suggest_int(
                f'{name} #', inner.min_length, inner.max_length
            )
            suggest = _suggester(trial, inner.suggest)
            value: Any = [
                suggest(f'{name} {i}', **inner.settings) for i in range(length)
            ]
        else:
            value = _suggester(trial, spec.suggest)(name, **spec.settings)
        overrides.append(f'{setting}={value}')
    return overrides


def get_final_value(
    trial: optuna.Trial,
    filter_fn: Callable[[Sequence[float]], float] | None = None,
) -> float:
    """The trial's reported values reduced to one (best by default).

    With no ``filter_fn``: the minimum for a minimising study, else the
    maximum.  Reads the study's storage: call it on rank zero.

    Raises:
        OptunaError: if the study does not know the trial or it reported
            nothing.

    """
    study = trial.study
    if filter_fn is None:
        filter_fn = min if study.direction.name == 'MINIMIZE' else max
    frozen = next(
        (t for t in reversed(study.trials) if t.number == trial.number), None
    )
    if frozen is None:
        raise OptunaError(f'The study has no trial number {trial.number}.')
    values = [
        frozen.intermediate_values[k]
        for k in sorted(frozen.intermediate_values)
    ]
    if not values:
        raise OptunaError(
            f'Trial {trial.number} reported no value; register a '
            'TrialCallback in the trainer.post_epoch_hooks.'
        )
    return float(filter_fn(values))
