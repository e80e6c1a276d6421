"""The submitting side: from a training function to a (SLURM) job.

    from drytorch.launch import submit

    job = submit(train, config, cluster='slurm', nodes=4, gpus_per_node=8)
    print(job.describe())      # id, log paths, how to follow it
    metrics = job.result()     # rank zero's return value

The same call with ``cluster='local'`` runs the tasks as processes on this
machine, and with ``cluster='debug'`` runs one task in this process.  Every
task runs :class:`DistributedJob`: the process group is up when the
function starts, and a run that checkpointed after a preemption signal is
requeued and resumes by itself.  ``python -m drytorch.launch`` (or
``drytorch-launch``) does the same for a script.

submitit is needed for ``'slurm'`` and ``'local'``:
``pip install 'drytorch[slurm]'``.
"""

from drytorch.launch.entry import DistributedJob, ScriptJob
from drytorch.launch.errors import (
    ClusterUnavailableError,
    InvalidLaunchError,
    JobFailedError,
    LaunchError,
)
from drytorch.launch.jobs import InProcessJob, Job, SubmittedJob
from drytorch.launch.request import CLUSTERS, LaunchRequest
from drytorch.launch.submitting import submit

__all__ = [
    'CLUSTERS',
    'ClusterUnavailableError',
    'DistributedJob',
    'InProcessJob',
    'InvalidLaunchError',
    'Job',
    'JobFailedError',
    'LaunchError',
    'LaunchRequest',
    'ScriptJob',
    'SubmittedJob',
    'submit',
]
