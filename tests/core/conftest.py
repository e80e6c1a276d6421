"""Fixtures of the kernel's tests: an isolated kernel, an experiment."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from drytorch import Experiment
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
        {'lr': 0.1}, name='Exp', par_dir=tmp_path / 'experiments'
    )
    exp.trackers.subscribe(recorder)
    return exp
