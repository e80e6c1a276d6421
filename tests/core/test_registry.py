"""The run registry file: what it records, and how it fails."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import pytest

from drytorch import Experiment
from drytorch.core import exceptions
from drytorch.core.registry import RunRegistry


def test_a_corrupt_registry_is_reported_with_its_path(
    tmp_path: pathlib.Path,
) -> None:
    exp = Experiment(None, name='Exp', par_dir=tmp_path)
    exp.dir.mkdir(parents=True)
    (exp.dir / 'registry.json').write_text('{"runs": [')
    with pytest.raises(RuntimeError, match='not valid JSON') as info:
        exp.create_run().start()
    assert str(exp.dir / 'registry.json') in str(info.value)
    assert Experiment.current_run() is None


def test_unknown_fields_are_ignored(tmp_path: pathlib.Path) -> None:
    registry = RunRegistry(tmp_path)
    entry = {'run_id': 'old', 'status': 'completed', 'from_the_future': 1}
    (tmp_path / 'registry.json').write_text(json.dumps({'runs': [entry]}))
    record = registry.get('old')
    assert record is not None
    assert record.status == 'completed'
    exp = Experiment(None, name='Exp', par_dir=tmp_path.parent)
    assert exp.dir == tmp_path.parent / 'Exp'


def test_stray_rank_variable_does_not_silence_a_single_process(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('RANK', '1')  # left over in the shell; no launcher
    exp = Experiment(None, name='Exp', par_dir=tmp_path)
    with exp.create_run() as run:
        assert exp.trackers.named_trackers == {}  # (none subscribed)
    assert exp.registry.get(run.id) is not None
    assert exp.registry.get(run.id).status == 'completed'


@pytest.mark.skipif(shutil.which('git') is None, reason='git not installed')
def test_git_commit_is_recorded(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / 'repo'
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(
            ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git('init', '-q')
    (repo / 'train.py').write_text('pass\n')
    git('add', 'train.py')
    git('commit', '-q', '-m', 'first')
    head = git('rev-parse', 'HEAD')
    monkeypatch.chdir(repo)
    exp = Experiment(None, name='Exp', par_dir=tmp_path / 'experiments')
    with exp.create_run() as run:
        pass
    record = exp.registry.get(run.id)
    assert record is not None
    assert record.git_commit == head


def test_outside_git_the_commit_is_none(tmp_path: pathlib.Path) -> None:
    exp = Experiment(None, name='Exp', par_dir=tmp_path / 'experiments')
    with exp.create_run() as run:
        pass
    assert exp.registry.get(run.id).git_commit is None


def test_errors_are_drytorch_errors() -> None:
    for error in (
        exceptions.NoActiveExperimentError,
        exceptions.RunAlreadyRecordedError,
        exceptions.RunAlreadyRunningError,
        exceptions.NameNotValidError,
        exceptions.TrackerNotUsedError,
    ):
        assert issubclass(error, exceptions.DryTorchError)
    assert issubclass(
        exceptions.NotExistingRunWarning, exceptions.DryTorchWarning
    )
