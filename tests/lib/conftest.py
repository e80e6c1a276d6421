"""Fixtures of the training library's tests: an isolated kernel, a run."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from drytorch import Experiment, Run
from tests.helpers.kernel import (
    RecordingTracker,
    kernel_in_tmp_path,
    recorder,
)

_kernel = pytest.fixture(autouse=True, name='_kernel')(kernel_in_tmp_path)
__all__ = ['recorder']  # a shared fixture, registered by this import


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
