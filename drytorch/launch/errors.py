"""The errors of the submitting side, each saying what to change.

A request is checked before anything is submitted, so that a mistake costs
a second at the prompt rather than an hour in the queue; a job that fails
on the cluster is reported with the paths of its logs and their last lines,
so that the error alone is enough to start looking.
"""

from __future__ import annotations

from drytorch.core.exceptions import DryTorchError

__all__ = [
    'ClusterUnavailableError',
    'InvalidLaunchError',
    'JobFailedError',
    'LaunchError',
]


class LaunchError(DryTorchError):
    """Base class of the errors of :mod:`drytorch.launch`."""


class InvalidLaunchError(LaunchError, ValueError):
    """The request cannot run as asked: an option or a combination is wrong.

    A ``ValueError`` too, since that is what a bad argument raises.
    """


class ClusterUnavailableError(LaunchError):
    """The cluster that was asked for cannot be reached from this machine."""


class JobFailedError(LaunchError):
    """A submitted job ended without a result.

    Attributes:
        job_id: the scheduler's id of the job.
        stderr_path: where the failed task wrote its error stream.

    """

    def __init__(self, message: str, job_id: str, stderr_path: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.stderr_path = stderr_path
