"""Names that become folders, and folders that turn out to be files.

Every name a user gives that ends up in a path (experiment, run id, model,
source, actor) passes one rule; the cases are generated from that rule so
that a character added to it is tested at once.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

import drytorch
from drytorch import Experiment
from drytorch.core import exceptions, experimenting, folders
from drytorch.trackers.csv import CSVDumper
from drytorch.trackers.yaml import YamlDumper

IN_FEATURES = 3

# (name, what the error must quote): every forbidden character, control
# characters, dot names, a way out of the run's folder, blanks, length
BAD_NAMES: list[tuple[str, str]] = [
    *((f'a{c}b', repr(c)) for c in sorted(folders.FORBIDDEN)),
    *((f'a{chr(code)}b', repr(chr(code))) for code in (0, 9, 10, 31, 127)),
    ('.', 'dot name'),
    ('..', 'dot name'),
    ('../x', "'/'"),
    ('../../../escape', "'/'"),
    ('..\\x', "'\\\\'"),
    ('', 'empty'),
    (' padded', 'whitespace'),
    ('padded ', 'whitespace'),
    ('x' * 256, '256 bytes'),
    ('é' * 128, '256 bytes'),  # 128 characters, but 256 bytes in UTF-8
]

GOOD_NAMES = ['My Experiment', 'exp-1_v2.3', 'run@2026', 'àccénts', '...']


def _model(name: str) -> drytorch.Model:
    return drytorch.Model(
        torch.nn.Linear(IN_FEATURES, 1), name=name, device='cpu'
    )


def _loader() -> drytorch.DataLoader:
    inputs = torch.randn(8, IN_FEATURES)
    data = torch.utils.data.TensorDataset(inputs, inputs.sum(1, True))
    return drytorch.DataLoader(data, 4)


def _trainer(name: str) -> None:
    drytorch.Trainer(
        _model('net'),
        name,
        loader=_loader(),
        loss=drytorch.Loss('MSE'),
        learning_schema=drytorch.LearningSchema.sgd(0.1),
    )


def _test(name: str) -> None:
    drytorch.Test(
        _model('net'), name, loader=_loader(), metric=drytorch.Loss('MSE')
    )


def _actor(name: str) -> None:
    manager = Experiment.get_current().metadata_manager
    manager.register_actor(name, object(), 'net')


# what names the thing in the error, and how to give it a name in a run
IN_A_RUN: dict[str, tuple[str, Callable[[str], Any]]] = {
    'model': ('Model', _model),
    'trainer': ('Trainer', _trainer),
    'test': ('Test', _test),
    'actor': ('Actor', _actor),
}


@pytest.fixture
def experiment(tmp_path: pathlib.Path) -> Experiment[Any]:
    return Experiment(None, name='Names', par_dir=tmp_path / 'experiments')


@pytest.mark.parametrize(('name', 'quoted'), BAD_NAMES)
def test_experiment_and_run_names(name: str, quoted: str) -> None:
    if name:  # an empty experiment name means the class name
        with pytest.raises(exceptions.NameNotValidError) as info:
            Experiment(None, name=name, par_dir='experiments')
        assert quoted in str(info.value)
        assert 'Experiment name' in str(info.value)
    exp = Experiment(None, name='Good', par_dir='experiments')
    with pytest.raises(exceptions.NameNotValidError, match='Run name') as info:
        exp.create_run(run_id=name)
    assert quoted in str(info.value)
    assert not pathlib.Path('experiments').exists()


@pytest.mark.parametrize('kind', sorted(IN_A_RUN))
@pytest.mark.parametrize(('name', 'quoted'), BAD_NAMES)
def test_model_source_and_actor_names(
    experiment: Experiment[Any], kind: str, name: str, quoted: str
) -> None:
    shown, give = IN_A_RUN[kind]
    if not name and kind != 'actor':
        return  # an empty model or source name means the class name
    with experiment.create_run('r'):
        if kind == 'actor':
            _model('net')
        with pytest.raises(exceptions.NameNotValidError) as info:
            give(name)
    message = str(info.value)
    assert f'{shown} name' in message
    assert quoted in message


def test_a_model_name_cannot_escape_the_run_folder(
    tmp_path: pathlib.Path,
) -> None:
    exp: Experiment[Any] = Experiment(None, name='E', par_dir=tmp_path / 'e')
    exp.trackers.subscribe(CSVDumper(), YamlDumper())
    with exp.create_run('r'):
        with pytest.raises(exceptions.NameNotValidError, match='escape'):
            _model('../../../escape')
        with pytest.raises(exceptions.NameNotValidError, match='escape'):
            drytorch.Test(
                _model('net'),
                '../../escape',
                loader=_loader(),
                metric=drytorch.Loss('MSE'),
            )
    assert [p for p in tmp_path.rglob('*') if 'escape' in p.name] == []


def test_a_source_name_leaves_room_for_its_files_suffixes(
    experiment: Experiment[Any],
) -> None:
    limit = folders.MAX_NAME_BYTES - folders.FILE_ROOM
    with experiment.create_run('r'):
        _trainer('s' * limit)
        too_long = f'more than the {limit} allowed'
        with pytest.raises(exceptions.NameNotValidError, match=too_long):
            _trainer('s' * (limit + 1))
        _model('m' * folders.MAX_NAME_BYTES)  # a folder only


@pytest.mark.parametrize('name', GOOD_NAMES)
def test_usual_names_still_work(tmp_path: pathlib.Path, name: str) -> None:
    exp: Experiment[Any] = Experiment(None, name=name, par_dir=tmp_path)
    with exp.create_run(run_id=name) as run:
        model = _model(name)
        _trainer(name)
        _test(name)
        _actor(name)
    assert model.name == name
    assert run.dir == tmp_path / name / 'runs' / name


def test_the_error_states_the_rule_it_applies() -> None:
    with pytest.raises(exceptions.NameNotValidError) as info:
        folders.validate_folder_name('Model', 'a/b')
    message = str(info.value)
    assert "Model name 'a/b'" in message
    for char in folders.FORBIDDEN:
        assert char in message.split('any character but')[1]
    for words in ('control characters', "'.' or '..'", 'whitespace'):
        assert words in message
    assert f'{folders.MAX_NAME_BYTES} bytes' in message
    assert str(folders.MAX_NAME_BYTES - folders.FILE_ROOM) in message
    # the old text allowed only letters, digits and a few signs: wrong
    assert 'letters, digits' not in message


def test_experimenting_still_exports_the_check() -> None:
    assert experimenting.validate_folder_name is folders.validate_folder_name


# ------------------------------------------------------ par_dir is a file
def test_experiment_par_dir_that_is_a_file(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / 'results'
    blocker.write_text('keep me')
    for par_dir in (blocker, blocker / 'deeper'):
        with pytest.raises(exceptions.NotAFolderError) as info:
            Experiment(None, name='E', par_dir=par_dir)
        message = str(info.value)
        assert str(blocker) in message
        assert 'par_dir' in message
        assert isinstance(info.value, NotADirectoryError)
    assert blocker.read_text() == 'keep me'


def test_experiment_folder_that_became_a_file_fails_at_start(
    tmp_path: pathlib.Path,
) -> None:
    exp: Experiment[Any] = Experiment(None, name='E', par_dir=tmp_path)
    with exp.create_run('first'):
        pass
    registry = exp.registry.path.read_text()
    moved = tmp_path / 'E.moved'
    exp.dir.rename(moved)
    exp.dir.write_text('a file now')
    with pytest.raises(exceptions.NotAFolderError, match=str(exp.dir)):
        exp.create_run('second').start()
    assert Experiment.current_run() is None
    assert exp.dir.read_text() == 'a file now'
    assert (moved / 'registry.json').read_text() == registry
