"""DRYTorch's hook API: registries, wrappers, pruning and plateau hooks."""

from __future__ import annotations

import pathlib
import statistics
from typing import Any

import pytest

import drytorch
from drytorch.core import exceptions
from drytorch.lib import hooks, schedulers
from drytorch.lib.learning import LearningSchema
from tests.lib import _support

needs_run = pytest.mark.usefixtures('run')


def test_registry_registers_in_order_and_refuses_non_callables() -> None:
    registry: hooks.HookRegistry[list[str]] = hooks.HookRegistry()
    registry.register(lambda seen: seen.append('a'))
    registry.register_all(
        [
            lambda seen: seen.append('b'),
            lambda seen: seen.append('c'),
        ]
    )
    seen: list[str] = []
    registry.execute(seen)
    assert seen == ['a', 'b', 'c']
    assert len(registry) == 3
    with pytest.raises(TypeError, match='A hook must be a callable'):
        registry.register(3)  # type: ignore[arg-type]


@needs_run
def test_call_every_runs_at_its_epochs_and_at_a_termination() -> None:
    trainer = _support.make_trainer()
    epochs: list[int] = []
    every = hooks.call_every(3, start=2)(
        lambda t: epochs.append(t.model.epoch)
    )
    trainer.post_epoch_hooks.register(every)
    trainer.post_epoch_hooks.register(
        lambda t: t.terminate_training('enough') if t.model.epoch == 6 else 0
    )
    trainer.train(10)
    # 2, 5 by the interval; 6 because the training was terminated there
    assert epochs == [2, 5]  # the stop is decided after this hook ran
    assert trainer.model.epoch == 6
    with pytest.raises(ValueError, match='interval must be positive'):
        hooks.call_every(0)
    with pytest.raises(ValueError, match='start must be non-negative'):
        hooks.call_every(1, start=-1)


@needs_run
def test_call_every_sees_the_stop_of_an_earlier_hook() -> None:
    trainer = _support.make_trainer()
    epochs: list[int] = []
    trainer.post_epoch_hooks.register(
        lambda t: t.terminate_training('enough') if t.model.epoch == 4 else 0
    )
    trainer.post_epoch_hooks.register(
        hooks.call_every(10)(lambda t: epochs.append(t.model.epoch))
    )
    trainer.train(10)
    assert epochs == [4]


@needs_run
def test_hook_static_hook_and_bind() -> None:
    calls: list[Any] = []

    @hooks.static_hook_class
    class Beep:
        def __init__(self, sound: str) -> None:
            self.sound = sound

        def __call__(self) -> None:
            calls.append(self.sound)

    beep = Beep(sound='beep')
    assert isinstance(beep, hooks.StaticHook)
    assert beep.parameters == {'sound': 'beep'}
    hook = hooks.Hook(lambda t: calls.append(t.model.epoch))
    every_other = hook.bind(hooks.call_every(2))
    trainer = _support.make_trainer()
    trainer.post_epoch_hooks.register_all([beep, every_other])
    trainer.train(4)
    assert calls == ['beep', 'beep', 2, 'beep', 'beep', 4]
    assert every_other.parameters == {'interval': 2, 'start': 0}


@needs_run
def test_saving_hook_writes_a_checkpoint(tmp_path: pathlib.Path) -> None:
    trainer = _support.make_trainer(
        checkpoint=drytorch.LocalCheckpoint(tmp_path / 'ckpt')
    )
    trainer.post_epoch_hooks.register(hooks.call_every(2)(hooks.saving_hook))
    trainer.train(2)
    assert list((tmp_path / 'ckpt').rglob('epoch_*2*.pt'))


@needs_run
def test_prune_callback_stops_below_the_threshold() -> None:
    trainer = _support.make_trainer(schema=LearningSchema.sgd(0.05))
    # the loss never falls below 1e-9 at epoch 2: pruned there
    prune = hooks.PruneCallback({2: 1e-9, 4: None}, monitor=trainer)
    trainer.post_epoch_hooks.register(prune)
    trainer.train(6)
    assert trainer.model.epoch == 2
    assert 'pruned at epoch 2' in str(trainer.terminated)
    assert list(prune.trial_values) == [2]
    assert prune.trial_values[2] == pytest.approx(
        trainer.computed_metrics['MSE']
    )


@needs_run
def test_prune_callback_passes_a_threshold_that_is_beaten() -> None:
    trainer = _support.make_trainer(schema=LearningSchema.sgd(0.05))
    trainer.post_epoch_hooks.register(
        hooks.PruneCallback({1: 1e9, 3: None}, metric='MSE', monitor=trainer)
    )
    trainer.train(5)
    assert trainer.model.epoch == 3  # None: stop there whatever the value


@needs_run
def test_early_stopping_filters_the_history() -> None:
    trainer = _support.make_trainer(schema=LearningSchema.sgd(0.05))
    seen: list[float] = []

    def mean_of_last_two(history: Any) -> float:
        seen.append(statistics.fmean(history[-2:]))
        return seen[-1]

    stopper = hooks.EarlyStoppingCallback(
        'MSE', trainer, 1e-8, 2, 'lower', mean_of_last_two, 1
    )
    trainer.post_epoch_hooks.register(stopper)
    trainer.train(3)
    history = stopper.monitor.history
    assert len(history) == 3 and seen
    assert stopper.monitor.filtered_value == pytest.approx(
        (history[-1] + history[-2]) / 2
    )


@needs_run
def test_a_missing_metric_is_named() -> None:
    trainer = _support.make_trainer()
    trainer.post_epoch_hooks.register(
        hooks.EarlyStoppingCallback('Accuracy', monitor=trainer)
    )
    with pytest.raises(
        exceptions.MetricNotFoundError, match=r"'Accuracy'.*MSE"
    ):
        trainer.train(1)


def test_restart_on_plateau_restarts_the_schedule_and_resumes_it(
    tmp_path: pathlib.Path,
) -> None:
    """Stopped after epoch 3 and resumed: the rates of an uninterrupted run."""
    experiment: drytorch.Experiment[Any] = drytorch.Experiment(
        None, name='Restart', par_dir=tmp_path
    )
    cosine = schedulers.CosineScheduler(10)

    def build(rates: list[float]) -> drytorch.Trainer:
        trainer = _support.make_trainer(
            schema=LearningSchema.sgd(0.1, scheduler=cosine)
        )
        # min_delta too large for any improvement: a plateau at epoch 2
        trainer.post_epoch_hooks.register(
            hooks.RestartScheduleOnPlateau(
                monitor=trainer, min_delta=1e9, cooldown=100
            )
        )
        trainer.post_epoch_hooks.register(
            lambda t: rates.append(t.optimizer.param_groups[0]['lr'])
        )
        return trainer

    uninterrupted: list[float] = []
    with experiment.create_run(run_id='full'):
        build(uninterrupted).train(6)
    first: list[float] = []
    with experiment.create_run(run_id='a'):
        trainer = build(first)
        trainer.train(3)
        changed = trainer.learning_schema.scheduler
    assert changed == schedulers.RestartScheduler(cosine, 2)
    second: list[float] = []
    with experiment.create_run(run_id='a', resume=True):
        resumed = build(second)
        resumed.load_checkpoint()
        assert resumed.learning_schema.scheduler == changed
        plateau = resumed.post_epoch_hooks.hooks[0]
        assert plateau.state_dict() == (
            trainer.post_epoch_hooks.hooks[0].state_dict()
        )
        resumed.train(3)
    assert first + second == uninterrupted
    assert uninterrupted[2] == pytest.approx(0.1)  # restarted at epoch 3


@needs_run
def test_train_until_a_past_epoch_warns_as_drytorch_does() -> None:
    trainer = _support.make_trainer()
    trainer.train(2)
    with pytest.warns(exceptions.PastEpochWarning, match='already at epoch 2'):
        trainer.train_until(1)
