"""DDP's options on Model: checked when the model is made, in one process.

That they reach ``DistributedDataParallel`` (and what they change there)
is tested on 2 gloo ranks in ``tests/distributed_training``.
"""

from __future__ import annotations

from typing import Any

import pytest

import drytorch
from drytorch.distributed.parallel import DDPOptions
from tests.lib import _support

pytestmark = pytest.mark.usefixtures('run')


def test_options_are_kept_and_documented() -> None:
    model = drytorch.Model(
        _support.linear(),
        name='ddp',
        find_unused_parameters=True,
        static_graph=True,
        gradient_as_bucket_view=True,
        bucket_cap_mb=4,
    )
    assert model.ddp_options == DDPOptions(True, True, True, 4)
    assert model.describe()['ddp'] == {
        'find_unused_parameters': True,
        'static_graph': True,
        'gradient_as_bucket_view': True,
        'bucket_cap_mb': 4,
    }
    # one process: nothing to replicate, the plain module trains
    assert model.training_module() is model.module


def test_defaults_add_nothing() -> None:
    model = drytorch.Model(_support.linear(), name='plain')
    assert model.ddp_options.is_default
    assert 'ddp' not in model.describe()
    assert DDPOptions().kwargs() == {
        'find_unused_parameters': False,
        'static_graph': False,
        'gradient_as_bucket_view': False,
    }


@pytest.mark.parametrize(
    ('options', 'error', 'match'),
    [
        (
            {'find_unused_parameters': 'yes'},
            TypeError,
            "find_unused_parameters must be True or False, got str 'yes'",
        ),
        ({'static_graph': 1}, TypeError, 'static_graph must be True or'),
        (
            {'gradient_as_bucket_view': None},
            TypeError,
            'gradient_as_bucket_view must be True or False',
        ),
        ({'bucket_cap_mb': 0}, ValueError, 'positive and finite, got 0'),
        ({'bucket_cap_mb': float('inf')}, ValueError, 'got inf'),
        ({'bucket_cap_mb': '25'}, TypeError, "number of MiB .* str '25'"),
        (
            {'parallel': 'fsdp', 'static_graph': True},
            ValueError,
            r'static_graph=True: options of DistributedDataParallel, .* '
            r"parallel='fsdp'.* pass parallel='ddp'",
        ),
    ],
)
def test_bad_options_are_refused(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        drytorch.Model(_support.linear(), name='bad', **options)


def test_static_graph_refuses_gradient_accumulation() -> None:
    """DDP's static graph fails under no_sync: refused at construction."""
    model = drytorch.Model(_support.linear(), name='static', static_graph=True)
    with pytest.raises(ValueError, match=r"Make 'static' with static_graph"):
        drytorch.Trainer(
            model,
            loader=drytorch.DataLoader(_support.regression_data(), 8),
            loss=drytorch.Loss('MSE'),
            learning_schema=drytorch.LearningSchema.sgd(),
            accumulation_steps=2,
        )
