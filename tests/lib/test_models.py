"""Tests of Model: registration, device, errors, saving and loading."""

from __future__ import annotations

import pytest
import torch

import drytorch
from drytorch.core import exceptions, log_events
from tests.helpers.kernel import RecordingTracker
from tests.lib import _support


@pytest.mark.usefixtures('run')
def test_model_registers_its_architecture(recorder: RecordingTracker) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    model = drytorch.Model(module, name='encoder')
    (event,) = recorder.of_type(log_events.ModelRegistrationEvent)
    assert event.model_name == 'encoder' == model.name
    assert event.architecture_repr == repr(module)
    assert 'Linear(in_features=3, out_features=4' in event.architecture_repr


@pytest.mark.usefixtures('run')
def test_model_name_defaults_to_the_class_and_stays_unique() -> None:
    first = drytorch.Model(torch.nn.Linear(2, 2))
    second = drytorch.Model(torch.nn.Linear(2, 2))
    assert first.name == 'Linear'
    assert second.name == 'Linear_1'


@pytest.mark.usefixtures('run')
def test_model_picks_this_process_device() -> None:
    model = drytorch.Model(torch.nn.Linear(2, 2))
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert model.device.type == expected
    assert all(p.device.type == expected for p in model.module.parameters())
    on_cpu = drytorch.Model(torch.nn.Linear(2, 2), device='cpu')
    assert on_cpu.device == torch.device('cpu')


@pytest.mark.usefixtures('run')
def test_registering_a_module_twice_is_an_error() -> None:
    module = torch.nn.Linear(2, 2)
    drytorch.Model(module, name='once')
    with pytest.raises(
        exceptions.ModuleAlreadyRegisteredError, match="as model 'once'"
    ):
        drytorch.Model(module, name='twice')


def test_a_model_outside_a_run_is_an_error() -> None:
    with pytest.raises(
        exceptions.NoActiveExperimentError, match='needs an active'
    ):
        drytorch.Model(torch.nn.Linear(2, 2))


@pytest.mark.usefixtures('run')
def test_a_model_needs_a_module() -> None:
    with pytest.raises(TypeError, match='got function'):
        drytorch.Model(lambda x: x)  # type: ignore[arg-type]


@pytest.mark.usefixtures('run')
def test_save_state_and_load_state_restore_weights_and_epoch(
    recorder: RecordingTracker,
) -> None:
    model = drytorch.Model(torch.nn.Linear(3, 1), name='net')
    model.epoch = 4
    saved = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.save_state()
    with torch.no_grad():
        for parameter in model.module.parameters():
            parameter.add_(1.0)
    model.epoch = 9
    model.load_state()
    assert model.epoch == 4
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, saved[key])
    (save,) = recorder.of_type(log_events.SaveModelEvent)
    (load,) = recorder.of_type(log_events.LoadModelEvent)
    assert save.definition == load.definition == 'state'
    assert save.location == load.location
    assert save.epoch == load.epoch == 4


@pytest.mark.usefixtures('run')
def test_save_state_keeps_the_trainers_checkpoint_of_that_epoch() -> None:
    trainer = _support.make_trainer()
    trainer.train(1)
    trainer.save_checkpoint()
    trainer.model.save_state()  # same epoch: must not replace it
    trainer.train(1)
    trainer.load_checkpoint(1)
    assert trainer.model.epoch == 1
    # the weights of the trainer's checkpoint load as a model state too
    trainer.model.epoch = 0
    trainer.model.load_state(1)
    assert trainer.model.epoch == 1


@pytest.mark.usefixtures('run')
def test_load_state_without_a_checkpoint_says_so() -> None:
    model = drytorch.Model(torch.nn.Linear(3, 1), name='net')
    with pytest.raises(exceptions.CheckpointNotFoundError, match='epoch 3'):
        model.load_state(3)
