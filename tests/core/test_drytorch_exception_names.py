"""Code that catches DRYTorch 0.1.0rc11's exceptions by name runs here."""

from __future__ import annotations

import pytest

from drytorch.core import exceptions, tracking

# DRYTorch's names in drytorch.core.exceptions
DRYTORCH_ERRORS = [
    'AccessOutsideScopeError', 'CheckpointNotInitializedError',
    'ComputedMetricsTypeError', 'ConvergenceError', 'DatasetHasNoLengthError',
    'DeviceMismatchError', 'DryTorchError', 'EpochNotFoundError',
    'FuncNotApplicableError', 'LossNotScalarError', 'MetricNotFoundError',
    'MissingParamError', 'ModelDeviceMismatchError', 'ModelNotFoundError',
    'ModuleAlreadyRegisteredError', 'ModuleNotRegisteredError',
    'NameAlreadyRegisteredError', 'NamedTupleOnlyError', 'NestedScopeError',
    'NoActiveExperimentError', 'ResultNotAvailableError',
    'RunAlreadyRecordedError', 'RunNotRecordedError',
    'TrackerAlreadyRegisteredError', 'TrackerError', 'TrackerNotUsedError',
]  # fmt: skip
DRYTORCH_WARNINGS = [
    'CannotStoreOutputWarning', 'ComputedBeforeUpdatedWarning',
    'DistributedDatasetNotDivisibleWarning', 'DistributedStorageWarning',
    'DryTorchWarning', 'ExperimentalFeatureWarning',
    'FailedOptionalImportWarning', 'ModuleNotDistributedWarning',
    'NoPreviousRunsWarning', 'NotExistingRunWarning', 'ObjectiveSyncWarning',
    'OptimizerNotLoadedWarning', 'PastEpochWarning', 'RecursionWarning',
    'RunAlreadyCompletedWarning', 'RunAlreadyRunningWarning',
    'RunNotStartedWarning', 'TerminatedTrainingWarning',
    'TrackerExceptionWarning',
]  # fmt: skip


@pytest.mark.parametrize('name', DRYTORCH_ERRORS)
def test_errors_carry_drytorch_names(name: str) -> None:
    cls = getattr(exceptions, name)
    assert issubclass(cls, exceptions.DryTorchError)
    assert name in exceptions.__all__


@pytest.mark.parametrize('name', DRYTORCH_WARNINGS)
def test_warnings_carry_drytorch_names(name: str) -> None:
    cls = getattr(exceptions, name)
    assert issubclass(cls, exceptions.DryTorchWarning)
    assert name in exceptions.__all__


def test_a_missing_checkpoint_is_caught_as_drytorch_catches_it() -> None:
    import pathlib

    error = exceptions.CheckpointNotFoundError(pathlib.Path('x'), 3)
    assert isinstance(error, exceptions.ModelNotFoundError)
    assert isinstance(error, exceptions.EpochNotFoundError)
    assert isinstance(error, FileNotFoundError)


def test_the_tracker_warning_is_one_class_in_both_places() -> None:
    assert (
        tracking.TrackerExceptionWarning is exceptions.TrackerExceptionWarning
    )
