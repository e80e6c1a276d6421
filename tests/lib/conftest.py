"""Fixtures of the training library's tests: an isolated kernel, a run."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from drytorch import Experiment, Run
from tests.helpers.kernel import RecordingTracker, isolated_kernel


@pytest.fixture(autouse=True)
def _kernel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> Iterator[None]:
    """Each test starts in its own folder with no default tracker."""
    monkeypatch.chdir(tmp_path)
    with isolated_kernel(monkeypatch):
        yield


@pytest.fixture
def recorder() -> RecordingTracker:
    """A fresh recording tracker."""
    return RecordingTracker()


@pytest.fixture
def experiment(
    tmp_path: pathlib.Path, recorder: RecordingTracker
) -> Experiment[Any]:
    """An experiment under ``tmp_path`` with ``recorder`` subscribed."""
    exp: Experiment[Any] = Experiment(
        {'seed': 0}, name='Lib', par_dir=tmp_path / 'experiments'
    )
    exp.trackers.subscribe(recorder)
    return exp


@pytest.fixture
def run(experiment: Experiment[Any]) -> Iterator[Run]:
    """A started run of ``experiment``, stopped after the test."""
    with experiment.create_run(run_id='test') as started:
        yield started
