"""Models of modules made by ``torch.compile``: plain names in every state.

``torch.compile`` wraps a module in an ``OptimizedModule`` whose state keys
start with ``_orig_mod.``.  A Model runs the compiled module but keeps the
plain one for its state, so checkpoints load into either kind.

The modules are compiled with a backend that runs the captured graph as it
is (and counts the captures): what is tested is the wrapping, not a code
generator, and it stays fast on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import drytorch
from drytorch.core import exceptions
from tests.lib import _support

pytestmark = pytest.mark.usefixtures('run')


class CountingBackend:
    """A ``torch.compile`` backend that runs graphs eagerly and counts them."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(
        self, graph: torch.fx.GraphModule, example_inputs: list[Any]
    ) -> Callable[..., Any]:
        del example_inputs
        self.graphs += 1
        return graph.forward


def network(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(_support.IN_FEATURES, 8), nn.Tanh(), nn.Linear(8, 1)
    )


def plain_names(seed: int = 0) -> list[str]:
    return list(network(seed).state_dict())


def test_a_compiled_module_is_unwrapped_for_its_state() -> None:
    plain = network()
    compiled = torch.compile(plain, backend=CountingBackend())
    model = drytorch.Model(compiled, name='compiled', device='cpu')
    assert model.module is plain
    assert model.compiled is compiled
    assert model.forward_module is compiled
    assert list(model.state_dict()['module']) == plain_names()
    assert [n for n, _ in model.module.named_parameters()] == plain_names()
    assert model.describe()['compiled'] is True
    assert model.describe()['module'] == 'Sequential'


def test_the_forward_pass_runs_the_compiled_module() -> None:
    backend = CountingBackend()
    model = drytorch.Model(
        torch.compile(network(), backend=backend), device='cpu'
    )
    inputs = torch.randn(4, _support.IN_FEATURES)
    expected = model.module(inputs)
    assert backend.graphs == 0  # the plain module is not compiled
    assert torch.equal(model(inputs), expected)
    assert backend.graphs == 1


def test_states_move_between_plain_and_compiled_models() -> None:
    plain = drytorch.Model(network(seed=1), name='plain', device='cpu')
    compiled = drytorch.Model(
        torch.compile(network(seed=2), backend=CountingBackend()),
        name='compiled',
        device='cpu',
    )
    plain.epoch = 3
    compiled.load_state_dict(plain.state_dict())
    assert compiled.epoch == 3
    for name, value in plain.module.state_dict().items():
        assert torch.equal(compiled.module.state_dict()[name], value)

    other = drytorch.Model(network(seed=3), name='other', device='cpu')
    other.load_state_dict(compiled.state_dict())
    for name, value in compiled.module.state_dict().items():
        assert torch.equal(other.module.state_dict()[name], value)


def test_a_state_saved_under_compiled_names_still_loads() -> None:
    """Checkpoints written before the fix hold ``_orig_mod.`` names."""
    source = torch.compile(network(seed=1), backend=CountingBackend())
    old_state = {'module': source.state_dict(), 'epoch': 2}
    assert all(k.startswith('_orig_mod.') for k in old_state['module'])
    model = drytorch.Model(network(seed=2), device='cpu')
    model.load_state_dict(old_state)
    for name, value in source._orig_mod.state_dict().items():
        assert torch.equal(model.module.state_dict()[name], value)
    assert all(k.startswith('_orig_mod.') for k in old_state['module'])


def test_a_module_wrapped_plain_and_compiled_is_one_module() -> None:
    plain = network()
    drytorch.Model(plain, name='once', device='cpu')
    with pytest.raises(
        exceptions.ModuleAlreadyRegisteredError, match="as model 'once'"
    ):
        drytorch.Model(torch.compile(plain, backend=CountingBackend()))


def test_a_trained_compiled_model_checkpoints_the_plain_module() -> None:
    backend = CountingBackend()
    plain = network()
    initial = {k: v.clone() for k, v in plain.state_dict().items()}
    trainer = _support.make_trainer(torch.compile(plain, backend=backend))
    trainer.add_validation(drytorch.DataLoader(_support.regression_data(8), 4))
    trainer.train(1)
    assert backend.graphs >= 1  # training and validation ran compiled
    trainer.save_checkpoint()

    (saved,) = trainer.model.checkpoint.available()
    state = torch.load(saved.path, map_location='cpu', weights_only=False)
    fresh = network(seed=5)
    fresh.load_state_dict(state['model']['module'], strict=True)
    trained = plain.state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, trained[name])


@pytest.mark.usefixtures('run')
def test_a_compiled_submodule_checkpoints_plain_names() -> None:
    """``net[0] = torch.compile(net[0])``: the keys are those of ``net``."""
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    compiled_inside = nn.Sequential(
        torch.compile(nn.Linear(3, 4)), nn.ReLU(), nn.Linear(4, 1)
    )
    model = drytorch.Model(compiled_inside, name='inside', device='cpu')
    state = model.state_dict()['module']
    assert list(state) == list(plain.state_dict())
    plain.load_state_dict(state)  # strict
    other = drytorch.Model(
        nn.Sequential(
            torch.compile(nn.Linear(3, 4)), nn.ReLU(), nn.Linear(4, 1)
        ),
        name='other',
        device='cpu',
    )
    other.load_state_dict({'module': plain.state_dict(), 'epoch': 0})
    loaded = other.module.state_dict()
    assert all(
        torch.equal(v, plain.state_dict()[k.replace('_orig_mod.', '')])
        for k, v in loaded.items()
    )


# ---------------------------------------------------------------- compile=
def _compiled_trainer(compile: Any) -> drytorch.Trainer:
    model = drytorch.Model(network(), name='net', compile=compile)
    return drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(_support.regression_data(), 8, seed=0),
        loss=drytorch.Loss('MSE'),
        learning_schema=drytorch.LearningSchema.sgd(0.05),
    )


def test_compile_true_trains_with_inductor() -> None:
    """torch.compile's default backend (C++ code generated on the CPU)."""
    trainer = _compiled_trainer(True)
    model = trainer.model
    assert model.compiled is not None
    assert model.forward_module is model.compiled is not model.module
    assert model.describe()['compiled'] is True
    trainer.add_validation(drytorch.DataLoader(_support.regression_data(8), 4))
    trainer.train(2)
    assert trainer.computed_metrics['MSE'] < 10
    # the same numbers as the plain module: it is the plain module's code
    inputs = _support.regression_data(8).tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), model.module(inputs))
    trainer.save_checkpoint()
    (saved,) = model.checkpoint.available()
    state = torch.load(saved.path, map_location='cpu', weights_only=False)
    plain = network(seed=5)
    plain.load_state_dict(state['model']['module'], strict=True)
    for name, value in plain.state_dict().items():
        assert torch.equal(value, model.module.state_dict()[name])


def test_compile_takes_torch_compile_arguments() -> None:
    backend = CountingBackend()
    trainer = _compiled_trainer({'backend': backend, 'dynamic': False})
    trainer.train(1)
    assert backend.graphs >= 1  # the training ran compiled, with them
    assert list(trainer.model.state_dict()['module']) == plain_names()


@pytest.mark.parametrize(
    ('value', 'error', 'match'),
    [
        ('yes', TypeError, "compile= takes True, False or a dict .* 'yes'"),
        (
            {'mod': 'max-autotune'},
            TypeError,
            r"got 'mod', which torch.compile does not take.* mode=None",
        ),
    ],
)
def test_bad_compile_values_are_refused(
    value: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        drytorch.Model(network(), name='bad', compile=value)


def test_compiling_a_compiled_module_is_refused() -> None:
    compiled = torch.compile(network(), backend=CountingBackend())
    with pytest.raises(ValueError, match=r'torch\.compile made already'):
        drytorch.Model(compiled, name='twice', compile=True)
