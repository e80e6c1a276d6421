"""The metadata manager and the readable picture of objects."""

from __future__ import annotations

import dataclasses
import enum
import pathlib
from typing import Any

import pytest
import torch

from drytorch import Experiment
from drytorch.core import exceptions, log_events
from drytorch.core.metadata import readable
from tests.helpers.kernel import RecordingTracker


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Settings:
    lr: float
    path: pathlib.Path


class Described:
    def describe(self) -> dict[str, Any]:
        return {'kind': 'custom', 'size': 3}


class Plain:
    def __init__(self) -> None:
        self.epochs = 2
        self.weights = torch.zeros(3, 4)
        self._cache = 'not shown'


class TestReadable:
    def test_scalars_and_simple_types(self) -> None:
        assert readable(3) == 3
        assert readable(0.5) == 0.5
        assert readable(None) is None
        assert readable(True) is True
        assert readable('text') == 'text'
        assert readable(Color.RED) == 'RED'
        assert readable(pathlib.Path('a', 'b')) == str(pathlib.Path('a', 'b'))
        assert readable(torch.tensor(2.5).item()) == 2.5

    def test_objects(self) -> None:
        assert readable(Settings(0.1, pathlib.Path('x'))) == {
            'Settings': {'lr': 0.1, 'path': 'x'}
        }
        assert readable(Described()) == {'kind': 'custom', 'size': 3}
        assert readable(Plain()) == {
            'Plain': {
                'epochs': 2,
                'weights': 'Tensor(shape=(3, 4), dtype=torch.float32)',
            }
        }

    def test_bounded_by_default(self) -> None:
        many = {f'k{i}': i for i in range(15)}
        picture = readable(many)
        assert len(picture) == 11
        assert picture['...'] == '5 more'
        assert readable(list(range(12)))[-1] == '... 2 more'
        assert len(readable('x' * 500)) == 200
        deep = {'a': {'b': {'c': {'d': 1}}}}
        assert readable(deep) == {'a': {'b': {'c': "{'d': 1}"}}}

    def test_unbounded_when_asked(self) -> None:
        many = {f'k{i}': list(range(20)) for i in range(15)}
        assert readable(many, max_items=None) == many
        assert readable('x' * 500, max_str=None) == 'x' * 500
        deep = {'a': {'b': {'c': {'d': 1}}}}
        assert readable(deep, max_depth=10) == deep


class TestMetadataManager:
    @pytest.fixture
    def exp(self, tmp_path: pathlib.Path) -> Experiment[Any]:
        return Experiment(None, name='Meta', par_dir=tmp_path)

    def test_register_model_publishes_the_architecture(
        self, exp: Experiment[Any]
    ) -> None:
        recorder = RecordingTracker()
        exp.trackers.subscribe(recorder)
        module = torch.nn.Linear(2, 3)
        with exp.create_run():
            name = exp.metadata_manager.register_model('linear', module)
        assert name == 'linear'
        (event,) = recorder.of_type(log_events.ModelRegistrationEvent)
        assert isinstance(event, log_events.ModelRegistrationEvent)
        assert event.model_name == 'linear'
        assert event.architecture_repr == repr(module)

    def test_names_are_made_unique(self, exp: Experiment[Any]) -> None:
        with exp.create_run():
            manager = exp.metadata_manager
            first = manager.register_model('net', torch.nn.Linear(1, 1))
            second = manager.register_model('net', torch.nn.Linear(1, 1))
            third = manager.register_model('net', torch.nn.Linear(1, 1))
        assert [first, second, third] == ['net', 'net_1', 'net_2']

    def test_one_module_twice_is_refused(self, exp: Experiment[Any]) -> None:
        module = torch.nn.Linear(1, 1)
        with exp.create_run():
            exp.metadata_manager.register_model('net', module)
            with pytest.raises(
                exceptions.ModuleAlreadyRegisteredError
            ) as info:
                exp.metadata_manager.register_model('other', module)
            assert "'net'" in str(info.value)
            exp.metadata_manager.unregister_model('net')
            assert exp.metadata_manager.register_model('net', module) == 'net'
        with exp.create_run():  # a new run forgets the old registrations
            assert exp.metadata_manager.register_model('net', module) == 'net'

    def test_register_actor_publishes_its_metadata(
        self, exp: Experiment[Any]
    ) -> None:
        recorder = RecordingTracker()
        exp.trackers.subscribe(recorder)
        with exp.create_run():
            name = exp.metadata_manager.register_model(
                'net', torch.nn.Linear(1, 1)
            )
            exp.metadata_manager.register_actor('trainer', Plain(), name)
            exp.metadata_manager.register_actor('count', 42, name)
        model_event, plain, count = recorder.events[1:4]
        assert isinstance(model_event, log_events.ModelRegistrationEvent)
        assert isinstance(plain, log_events.ActorRegistrationEvent)
        assert plain.actor_name == 'trainer'
        assert plain.model_name == 'net'
        assert plain.model_ts == model_event.model_ts
        assert plain.metadata == readable(Plain())
        assert isinstance(count, log_events.ActorRegistrationEvent)
        assert count.metadata == {'repr': 42}

    def test_registration_outside_a_run_raises(
        self, exp: Experiment[Any]
    ) -> None:
        with pytest.raises(exceptions.NoActiveExperimentError):
            exp.metadata_manager.register_model('net', torch.nn.Linear(1, 1))
