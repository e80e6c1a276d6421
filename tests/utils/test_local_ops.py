"""Deleting, renaming and cloning an experiment's local folders."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

import drytorch
from drytorch.trackers.csv import CSVDumper
from drytorch.utils import local_ops
from tests.lib import _support


def _train(root: pathlib.Path, name: str, resume: bool = False) -> None:
    experiment: drytorch.Experiment[Any] = drytorch.Experiment(
        None, name=name, par_dir=root
    )
    experiment.trackers.subscribe(csv=CSVDumper(par_dir=root / 'dumps'))
    with experiment.create_run(run_id=None if resume else 'r', resume=resume):
        trainer = _support.make_trainer()
        trainer.train(1)


def _tree(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))


def test_clone_then_rename_then_delete(tmp_path: pathlib.Path) -> None:
    _train(tmp_path, 'Exp')
    original = [tmp_path / 'Exp', tmp_path / 'dumps' / 'Exp']
    trees = [_tree(folder) for folder in original]
    assert any('registry.json' in p for p in trees[0])
    assert any(p.endswith('Trainer.csv') for p in trees[1])

    copies = local_ops.clone_experiment_data(tmp_path, 'Exp', 'Copy')
    assert copies == [tmp_path / 'Copy', tmp_path / 'dumps' / 'Copy']
    assert [_tree(c) for c in copies] == trees
    assert not list(tmp_path.rglob('*.incomplete'))

    # the clone is an experiment of its own: its run resumes from its copy
    _train(tmp_path, 'Copy', resume=True)
    rows = (
        (tmp_path / 'dumps' / 'Copy' / 'runs' / 'r' / 'csv_metrics' / 'net')
        .joinpath('Trainer.csv')
        .read_text()
        .splitlines()
    )
    assert [row.split(',')[2] for row in rows[1:]] == ['1', '2']
    assert [_tree(f) for f in original] == trees  # the original untouched

    renamed = local_ops.rename_experiment_data(tmp_path, 'Exp', 'Renamed')
    assert renamed == [tmp_path / 'Renamed', tmp_path / 'dumps' / 'Renamed']
    assert not any(f.exists() for f in original)

    removed = local_ops.delete_experiment_data(tmp_path, 'Copy')
    assert removed == copies
    assert not any(c.exists() for c in copies)
    assert (tmp_path / 'Renamed' / 'registry.json').exists()


def test_a_clash_changes_nothing(tmp_path: pathlib.Path) -> None:
    _train(tmp_path, 'Exp')
    (tmp_path / 'dumps' / 'Taken').mkdir()
    with pytest.raises(FileExistsError, match="'Taken' already has data"):
        local_ops.rename_experiment_data(tmp_path, 'Exp', 'Taken')
    assert (tmp_path / 'Exp').is_dir()
    assert not (tmp_path / 'Taken').exists()
    with pytest.raises(ValueError, match='the old one'):
        local_ops.clone_experiment_data(tmp_path, 'Exp', 'Exp')
    with pytest.raises(drytorch.core.exceptions.NameNotValidError):
        local_ops.rename_experiment_data(tmp_path, 'Exp', '../x')
    with pytest.raises(NotADirectoryError, match='not a folder'):
        local_ops.delete_experiment_data(tmp_path / 'nowhere', 'Exp')
