"""The one error raised when the process group cannot be brought up.

A failed start is the worst kind of failure on a cluster: it is usually a
hang that eats the job's whole time limit.  Everything in
``drytorch.distributed`` that detects or starts the group turns such a
failure into this error instead, with a message that names the launcher, the
variables it read and what to check, so that the job log alone is enough to
fix the launch.
"""

from __future__ import annotations

__all__ = ['DistributedSetupError']


class DistributedSetupError(RuntimeError):
    """The launcher's variables are malformed or the ranks did not meet.

    It subclasses ``RuntimeError`` because that is what torch.distributed
    raises for the same failures, so existing ``except RuntimeError`` code
    keeps working.
    """
