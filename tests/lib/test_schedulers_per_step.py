"""Per-step learning-rate schedules: closed forms, the trainer, the logs.

The preemption in the middle of a warmup (a resume without a jump, bit
for bit the same weights) is in ``tests/preemption``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import drytorch
from drytorch.core import log_events
from drytorch.lib import schedulers
from tests.helpers.kernel import RecordingTracker
from tests.lib import _support
from tests.lib.test_training import PushRecorder

pytestmark = pytest.mark.usefixtures('run')

BASE_LR = 0.1
WARMUP = 4
DECAY = 10
MIN_DECAY = 0.01


def closed_form(step: int) -> float:
    """Linear warmup to ``BASE_LR``, then half a cosine to its floor."""
    if step < WARMUP:
        return BASE_LR * (step + 1) / (WARMUP + 1)
    done = min(step - WARMUP, DECAY) / DECAY
    cosine = (1 + math.cos(math.pi * done)) / 2
    return BASE_LR * (MIN_DECAY + (1 - MIN_DECAY) * cosine)


def warmup_cosine() -> schedulers.PerStepScheduler:
    return (
        schedulers.CosineScheduler(DECAY, min_decay=MIN_DECAY)
        .with_warmup(WARMUP)
        .per_step()
    )


def _trainer(
    steps: int = 1, **kwargs: Any
) -> tuple[drytorch.Trainer, list[float]]:
    """40 samples in batches of 8: 5 batches an epoch."""
    schema = drytorch.LearningSchema.sgd(
        base_lr=BASE_LR, scheduler=warmup_cosine()
    )
    trainer = _support.make_trainer(
        schema=schema, accumulation_steps=steps, **kwargs
    )
    rates: list[float] = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, *_: rates.append(opt.param_groups[0]['lr'])
    )
    return trainer, rates


def test_the_rate_of_every_step_is_the_closed_form() -> None:
    trainer, rates = _trainer()
    trainer.train(4)  # 20 steps: warmup, decay, and the floor after it
    assert trainer.optimizer_steps == 20
    assert rates == pytest.approx([closed_form(s) for s in range(20)])
    assert rates[WARMUP - 1] < rates[WARMUP] == pytest.approx(BASE_LR)


def test_a_step_is_a_window_of_micro_batches() -> None:
    trainer, rates = _trainer(steps=2)
    trainer.train(2)  # 5 batches an epoch: windows of 2, 2 and 1
    assert trainer.optimizer_steps == 6
    assert rates == pytest.approx([closed_form(s) for s in range(6)])


def test_the_rate_is_logged(
    experiment: drytorch.Experiment[Any], recorder: RecordingTracker
) -> None:
    bar = PushRecorder()
    experiment.trackers.subscribe(bar)
    trainer, rates = _trainer(sync_every=2)
    trainer.train(2)
    # each epoch's metrics carry the rate of its last step
    logged = [
        e.metrics
        for e in recorder.of_type(log_events.MetricEvent)
        if e.source_name == trainer.name
    ]
    assert [m['lr'] for m in logged] == [rates[4], rates[9]]
    # each sync point shows the rate of the step it follows (the pushes
    # carry the batches run since the one before, DRYTorch's increments)
    pushes = [(done, m['lr']) for _, m, done in bar.pushes]
    assert pushes == [
        (2, rates[1]),
        (2, rates[3]),
        (1, rates[4]),
        (2, rates[6]),
        (2, rates[8]),
        (1, rates[9]),
    ]
    # the rate is no metric: hooks and checkpoints see the loss alone
    assert set(trainer.computed_metrics) == {'MSE'}


def test_per_epoch_schedules_log_no_rate(
    recorder: RecordingTracker,
) -> None:
    trainer = _support.make_trainer()
    trainer.train(1)
    (metric,) = recorder.of_type(log_events.MetricEvent)
    assert 'lr' not in metric.metrics


def test_the_step_count_comes_back_with_a_checkpoint() -> None:
    trainer, rates = _trainer()
    trainer.train(2)
    trainer.save_checkpoint()
    trainer.optimizer_steps = 0
    trainer.load_checkpoint()
    assert trainer.optimizer_steps == 10
    trainer.train(1)
    assert rates[10:] == pytest.approx([closed_form(s) for s in range(10, 15)])


# ---------------------------------------------------------------- schedules
def test_per_step_is_the_same_function() -> None:
    schedule = warmup_cosine()
    assert schedule.counts_steps
    assert not schedule.base.counts_steps
    for step in range(20):
        assert schedule(BASE_LR, step) == pytest.approx(closed_form(step))


def test_a_per_step_schedule_is_not_wrapped_again() -> None:
    schedule = warmup_cosine()
    with pytest.raises(TypeError, match=r'before \.per_step\(\)'):
        schedule.with_warmup(3)
    with pytest.raises(TypeError, match=r'before \.per_step\(\)'):
        schedule.with_restart(3)
    with pytest.raises(TypeError, match='counts optimizer steps'):
        schedule.per_step()
    with pytest.raises(TypeError, match='counts optimizer steps'):
        schedulers.WarmupScheduler(schedule, 2)


def test_the_schema_knows_its_unit() -> None:
    per_step = drytorch.LearningSchema.sgd(scheduler=warmup_cosine())
    assert per_step.per_step
    assert not drytorch.LearningSchema.sgd().per_step
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)
    per_step.apply_learning_rate(optimizer, 2, base_lr=BASE_LR)
    assert optimizer.param_groups[0]['lr'] == pytest.approx(closed_form(2))
