"""Gradient accumulation in one process: k batches of b equal one of k * b.

The multi-rank cases (the same weights on 2 gloo ranks, one all-reduce
round per optimizer step) are in ``tests/distributed_training``; the
preemption inside a window in ``tests/preemption``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import drytorch
from drytorch.core import log_events
from drytorch.lib import objectives
from drytorch.lib.accumulation import Accumulation
from drytorch.lib.gradient_ops import GradNormClipper
from tests.helpers.kernel import RecordingTracker

pytestmark = pytest.mark.usefixtures('run')

# 100 samples: 13 batches of 8 (the last of 4) against 4 batches of 32 (the
# last of 4), so the epoch's last window holds one micro-batch
N_SAMPLES = 100
RTOL = 1e-5


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(N_SAMPLES, 5, generator=generator)
    labels = torch.randint(0, 3, (N_SAMPLES,), generator=generator)
    return TensorDataset(features, labels)


def _network() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def _train(
    name: str,
    batch_size: int,
    steps: int,
    *,
    epochs: int = 1,
    schema: drytorch.LearningSchema | None = None,
) -> drytorch.Trainer:
    model = drytorch.Model(_network(), name=name)
    trainer = drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(_data(), batch_size, seed=2),
        loss=drytorch.Loss(objectives.cross_entropy, 'CE'),
        learning_schema=schema or drytorch.LearningSchema.sgd(base_lr=0.5),
        accumulation_steps=steps,
    )
    trainer.train(epochs)
    return trainer


def _assert_close(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=RTOL, atol=1e-7)


def test_four_batches_of_8_step_as_one_of_32() -> None:
    big = _train('big', 32, 1)
    small = _train('small', 8, 4)
    _assert_close(
        small.model.module.state_dict(), big.model.module.state_dict()
    )
    # the epoch's training loss: the same samples under the same weights
    assert small.computed_metrics['CE'] == pytest.approx(
        big.computed_metrics['CE'], rel=RTOL
    )


def test_adam_with_clipping_over_two_epochs() -> None:
    """The step happens once per window: Adam's moments and the clip too."""

    def schema() -> drytorch.LearningSchema:
        return drytorch.LearningSchema.adam(
            base_lr=0.01, gradient_op=GradNormClipper(0.1)
        )

    big = _train('big', 32, 1, epochs=2, schema=schema())
    small = _train('small', 8, 4, epochs=2, schema=schema())
    _assert_close(
        small.model.module.state_dict(), big.model.module.state_dict()
    )
    (state,) = {p['step'].item() for p in small.optimizer.state.values()}
    assert state == 8  # 4 optimizer steps per epoch, not 13


def test_one_step_is_the_plain_trainer() -> None:
    """accumulation_steps=1 changes nothing, bit for bit."""
    once = _train('once', 8, 1)
    again = _train('again', 8, 1)
    for key, value in once.model.module.state_dict().items():
        assert torch.equal(value, again.model.module.state_dict()[key])


def test_progress_counts_micro_batches(recorder: RecordingTracker) -> None:
    trainer = _train('small', 8, 4)
    (iterate,) = [
        e
        for e in recorder.of_type(log_events.IterateBatchEvent)
        if e.source_name == trainer.name
    ]
    assert iterate.n_iter == 13
    assert iterate.batch_size == 8
    assert iterate.dataset_size == N_SAMPLES


def test_windows_of_an_epoch() -> None:
    """Weights are shares of the window's samples; the last may be short."""
    accumulation = Accumulation(4)
    loader = drytorch.DataLoader(_data(), 8)
    plan = loader.plan(training=True, epoch=1)
    accumulation.plan(plan)
    assert accumulation.optimizer_steps(len(plan)) == 4
    assert [accumulation.weight(p) for p in range(4)] == [0.25] * 4
    assert accumulation.weight(12) == 1.0  # a window of one micro-batch
    closes = [p for p in range(13) if accumulation.closes(p, 13)]
    assert closes == [3, 7, 11, 12]


@pytest.mark.parametrize(
    ('value', 'error', 'match'),
    [
        (0, ValueError, 'accumulation_steps must be >= 1, got 0'),
        (2.5, TypeError, r'whole number >= 1 .* got float 2\.5'),
        (True, TypeError, 'got True'),
    ],
)
def test_bad_accumulation_steps_are_refused(
    value: Any, error: type[Exception], match: str
) -> None:
    model = drytorch.Model(_network(), name='bad')
    with pytest.raises(error, match=match):
        drytorch.Trainer(
            model,
            loader=drytorch.DataLoader(_data(), 8),
            loss=drytorch.Loss(objectives.cross_entropy, 'CE'),
            learning_schema=drytorch.LearningSchema.sgd(),
            accumulation_steps=value,
        )


def test_a_resume_inside_a_window_is_refused() -> None:
    match = r'not a boundary .*accumulation_steps=4'
    with pytest.raises(ValueError, match=match):
        Accumulation(4).check_resume(6)
    Accumulation(4).check_resume(8)
