"""YamlDumper: config, architecture, actor metadata and attempts as YAML."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
from typing import Any

import pytest
import torch
import yaml

from drytorch import Experiment, PreemptedExit
from drytorch.core import exceptions
from drytorch.trackers import yaml as yaml_tracker
from drytorch.trackers.yaml import YamlDumper


@dataclasses.dataclass
class Config:
    lr: float = 0.01
    layers: tuple[int, ...] = (4, 8)
    name: str = 'baseline'


class Trainer:
    def __init__(self) -> None:
        self.epochs = 3
        self.optimizer = 'Adam'
        self._private = 'hidden'


def load(path: pathlib.Path) -> Any:
    return yaml.safe_load(path.read_text())


def experiment(config: Any, tmp_path: pathlib.Path) -> Experiment[Any]:
    exp: Experiment[Any] = Experiment(
        config, name='YamlExp', par_dir=tmp_path / 'experiments', tags=['t1']
    )
    exp.trackers.subscribe(YamlDumper())
    return exp


def test_writes_config_architecture_and_actor(tmp_path: pathlib.Path) -> None:
    exp = experiment(Config(), tmp_path)
    module = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU())
    with exp.create_run() as run:
        name = exp.metadata_manager.register_model('net', module)
        exp.metadata_manager.register_actor('trainer', Trainer(), name)
    metadata = run.dir / 'metadata'
    assert load(metadata / 'config.yaml') == {
        'Config': {'lr': 0.01, 'layers': [4, 8], 'name': 'baseline'}
    }
    architecture = load(metadata / 'net' / 'architecture.yaml')
    assert architecture['model'] == 'net'
    assert architecture['architecture'] == repr(module)
    datetime.datetime.fromisoformat(architecture['registered'])
    assert load(metadata / 'net' / 'trainer.yaml') == {
        'Trainer': {'epochs': 3, 'optimizer': 'Adam'}
    }


def test_one_attempt_entry_per_attempt(tmp_path: pathlib.Path) -> None:
    exp = experiment({'lr': 0.1}, tmp_path)
    with pytest.raises(PreemptedExit), exp.create_run() as run:
        raise PreemptedExit
    with exp.create_run(resume=True):
        pass
    attempts = load(run.dir / 'metadata' / 'attempts.yaml')
    assert [a['attempt'] for a in attempts] == [1, 2]
    assert [a['resumed'] for a in attempts] == [False, True]
    assert [a['status'] for a in attempts] == ['preempted', 'completed']
    assert all(a['run_id'] == run.id for a in attempts)
    assert all(a['tags'] == ['t1'] for a in attempts)
    for attempt in attempts:
        started = datetime.datetime.fromisoformat(attempt['started'])
        stopped = datetime.datetime.fromisoformat(attempt['stopped'])
        assert started <= stopped


def test_many_attempts_are_all_kept(tmp_path: pathlib.Path) -> None:
    exp = experiment(None, tmp_path)
    with exp.create_run() as run:
        pass
    for _ in range(12):
        with exp.create_run(resume=True):
            pass
    assert 'YamlDumper' in exp.trackers.named_trackers  # it never failed
    attempts = load(run.dir / 'metadata' / 'attempts.yaml')
    assert [a['attempt'] for a in attempts] == list(range(1, 14))
    assert all(a['status'] == 'completed' for a in attempts)


def test_large_config_and_architecture_are_not_cut(
    tmp_path: pathlib.Path,
) -> None:
    config = {
        f'group{i}': {'inner': {'deeper': {'deepest': list(range(15))}}}
        for i in range(12)
    }
    config['description'] = 'x' * 500
    exp = experiment(config, tmp_path)
    module = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(20)])
    with exp.create_run() as run:
        exp.metadata_manager.register_model('big', module)
    assert load(run.dir / 'metadata' / 'config.yaml') == config
    architecture = load(run.dir / 'metadata' / 'big' / 'architecture.yaml')
    assert architecture['architecture'] == repr(module)


def test_failed_run_status(tmp_path: pathlib.Path) -> None:
    exp = experiment(None, tmp_path)
    with pytest.raises(ValueError), exp.create_run() as run:
        raise ValueError
    attempts = load(run.dir / 'metadata' / 'attempts.yaml')
    assert [a['status'] for a in attempts] == ['failed']


def test_explicit_folder(tmp_path: pathlib.Path) -> None:
    exp: Experiment[Any] = Experiment(
        {'a': 1}, name='YamlExp', par_dir=tmp_path / 'experiments'
    )
    exp.trackers.subscribe(YamlDumper(par_dir=tmp_path / 'meta'))
    with exp.create_run('r') as run:
        pass
    metadata = tmp_path / 'meta' / 'YamlExp' / 'runs' / 'r' / 'metadata'
    assert load(metadata / 'config.yaml') == {'a': 1}
    assert not run.dir.exists()


def test_experiments_sharing_a_folder_keep_their_own_metadata(
    tmp_path: pathlib.Path,
) -> None:
    dumper = YamlDumper(par_dir=tmp_path / 'meta')
    configs = {'first': {'lr': 0.1}, 'second': {'lr': 0.2}}
    for name, config in configs.items():
        exp: Experiment[Any] = Experiment(
            config, name=name, par_dir=tmp_path / 'experiments'
        )
        exp.trackers.subscribe(dumper)
        with pytest.raises(PreemptedExit), exp.create_run('r'):
            raise PreemptedExit
        with exp.create_run('r', resume=True):
            pass
        with exp.create_run('other'):
            pass
    for name, config in configs.items():
        runs = tmp_path / 'meta' / name / 'runs'
        for run_id, count in (('r', 2), ('other', 1)):
            metadata = runs / run_id / 'metadata'
            assert load(metadata / 'config.yaml') == config
            attempts = load(metadata / 'attempts.yaml')
            assert [a['attempt'] for a in attempts] == list(
                range(1, count + 1)
            )
            assert all(a['run_id'] == run_id for a in attempts)


def test_missing_pyyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_tracker, 'is_available', lambda: False)
    with pytest.raises(exceptions.MissingDependencyError) as info:
        YamlDumper()
    assert 'drytorch[recommended]' in str(info.value)
