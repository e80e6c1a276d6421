"""``submit``: one call from a function (or a script) to a running job.

The request is checked first (:class:`.request.LaunchRequest`), then, for
SLURM, against what the cluster has (:mod:`.slurm_info`); only then is
anything written or submitted.  The job itself is a
:class:`.entry.DistributedJob`, the same under every executor.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from drytorch.core.exceptions import PreemptedExit
from drytorch.launch import slurm_info
from drytorch.launch.entry import DistributedJob, ScriptJob
from drytorch.launch.errors import InvalidLaunchError, LaunchError
from drytorch.launch.jobs import InProcessJob, Job, SubmittedJob
from drytorch.launch.request import LaunchRequest

__all__ = ['submit']


def submit(
    fn_or_script: Callable[..., Any] | str | os.PathLike[str],
    *args: Any,
    kwargs: Mapping[str, Any] | None = None,
    cluster: str = 'slurm',
    nodes: int = 1,
    gpus_per_node: int = 0,
    tasks_per_node: int | None = None,
    tasks: int | None = None,
    cpus_per_task: int = 1,
    mem: str | int | None = None,
    timeout_min: int = 60,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    constraint: str | None = None,
    signal_delay_s: int = 90,
    sbatch_args: Mapping[str, Any] | None = None,
    srun_args: Sequence[str] | None = None,
    folder: str | os.PathLike[str] = 'drytorch_jobs/%j',
    array_params: Sequence[Mapping[str, Any]] | None = None,
    name: str | None = None,
) -> Job | list[Job]:
    """Run ``fn(*args, **kwargs)`` (or a script) as a job, on every rank.

    Args:
        fn_or_script: a function, a :class:`ScriptJob`, or the path of a
            Python script, which then gets ``args`` as its command line.
        *args: positional arguments of the function (script arguments).
        kwargs: keyword arguments of the function.
        cluster: ``'slurm'`` (a batch job), ``'local'`` (processes on this
            machine) or ``'debug'`` (this process, one task, at once).
        nodes: nodes of the job.
        gpus_per_node: GPUs on each node.
        tasks_per_node: ranks on each node; one per GPU by default.
        tasks: ranks of the whole job, instead of ``tasks_per_node``, when
            ``nodes`` does not divide them: ``nodes=3, tasks=5`` runs 2, 2
            and 1 ranks (at most ``ceil(tasks / nodes)`` on a node).
        cpus_per_task: CPU cores (and torch threads) of each rank.
        mem: memory per node, in GB or as ``'32G'``.
        timeout_min: the time limit, in minutes.
        partition: SLURM partition (checked to exist); default partition
            when None.
        account: SLURM account.
        qos: SLURM quality of service.
        constraint: SLURM node features.
        signal_delay_s: seconds before the time limit when every rank gets
            SIGUSR2, to checkpoint and requeue.
        sbatch_args: more sbatch options, e.g. ``{'exclusive': True}``.
        srun_args: more arguments for srun.
        folder: job files and logs; ``%j`` becomes the job id.
        array_params: one job per mapping, as a SLURM job array: each
            mapping updates ``kwargs`` (for a script, becomes ``--key
            value`` arguments).
        name: the job's name; the function's or script's by default.

    Returns:
        a :class:`Job` (a list of them with ``array_params``).

    Raises:
        InvalidLaunchError: an option, or the request against the cluster,
            is wrong; the message says what to change.
        ClusterUnavailableError: SLURM was asked for and is not here.
        LaunchError: the scheduler refused the job.

    """
    job = _as_job(fn_or_script, args, kwargs)
    request = LaunchRequest(
        cluster=cluster,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        tasks_per_node=tasks_per_node,
        tasks=tasks,
        cpus_per_task=cpus_per_task,
        mem=mem,
        timeout_min=timeout_min,
        partition=partition,
        account=account,
        qos=qos,
        constraint=constraint,
        signal_delay_s=signal_delay_s,
        sbatch_args=sbatch_args,
        srun_args=srun_args,
        folder=str(folder),
        name=name or job.name,
    )
    if array_params is not None:
        array_params = _check_array(array_params)
    job.threads = request.cpus_per_task
    if request.cluster == 'debug':
        return _run_here(job, request, array_params)
    if request.cluster == 'slurm':
        executor = _slurm_executor(request)
    else:
        executor = _local_executor(request)
    try:
        if array_params is None:
            handles = [executor.submit(job)]
        else:
            handles = executor.map_array(job, array_params)
    except LaunchError:
        raise
    except Exception as err:
        raise LaunchError(
            f'The {request.cluster} executor refused the job '
            f'{request.name!r} ({request.describe()}): {err}'
        ) from err
    if request.uneven:
        handles = [
            _with_tasks(h, executor.folder, request.world_size)
            for h in handles
        ]
    for handle in handles:
        _forget_earlier_job(handle)
    jobs = [SubmittedJob(h, request.cluster, request.name) for h in handles]
    return jobs if array_params is not None else jobs[0]


def _with_tasks(handle: Any, folder: Any, count: int) -> Any:
    """The same submitit job, with its ``count`` tasks.

    submitit counts a job's tasks as nodes x ntasks_per_node, which is
    more than ``--ntasks`` when the nodes do not divide it: it would wait
    for the result of a task that never runs.
    """
    if handle.num_tasks == count:
        return handle
    return type(handle)(
        folder=folder, job_id=handle.job_id, tasks=range(count)
    )


def _forget_earlier_job(handle: Any) -> None:
    """Drop what submitit remembers of an earlier job with this id.

    submitit's watcher, one per process for every cluster, caches the state
    of finished jobs by id alone.  Ids come back: a process that submits to
    a second cluster (another ``SLURM_CONF``), or to a controller whose ids
    restarted (a cold start), gets an id that an earlier job had.  The new
    job then looked finished at once, with the old job's state, and its
    result was reported missing while it ran.  A job just submitted has not
    finished, so nothing cached for its id is about it.
    """
    watcher = getattr(handle, 'watcher', None)
    finished = getattr(watcher, '_finished', None)
    info = getattr(watcher, '_info_dict', None)
    if not isinstance(finished, set) or not isinstance(info, dict):
        return  # another submitit: nothing known to forget
    job_id = str(handle.job_id)
    for key in {job_id, job_id.split('_', maxsplit=1)[0]}:
        finished.discard(key)
        info.pop(key, None)


def _as_job(
    target: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None
) -> DistributedJob:
    if isinstance(target, DistributedJob):
        if args or kwargs:
            raise InvalidLaunchError(
                'a DistributedJob already holds its arguments; pass them '
                'to DistributedJob(fn, *args, **kwargs), not to submit().'
            )
        return target
    if isinstance(target, (str, pathlib.PurePath)):
        if kwargs:
            raise InvalidLaunchError(
                'a script takes command-line arguments, not kwargs: pass '
                'them as positional strings, e.g. submit("train.py", '
                '"--epochs", "10").'
            )
        return DistributedJob(ScriptJob(target, *args))
    return DistributedJob(target, *args, **dict(kwargs or {}))


def _check_array(
    params: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    if isinstance(params, Mapping) or not params:
        raise InvalidLaunchError(
            'array_params must be a non-empty list of dicts, one per job '
            "of the array, e.g. [{'lr': 1e-3}, {'lr': 1e-4}]."
        )
    checked = []
    for index, item in enumerate(params):
        if not isinstance(item, Mapping):
            raise InvalidLaunchError(
                f'array_params[{index}] is {item!r}, not a dict of keyword '
                "arguments, e.g. {'lr': 1e-3}."
            )
        checked.append(dict(item))
    return checked


def _run_here(
    job: DistributedJob,
    request: LaunchRequest,
    array_params: list[dict[str, Any]] | None,
) -> Job | list[Job]:
    if request.world_size > 1:
        import warnings

        warnings.warn(
            f"cluster='debug' runs one task in this process; the "
            f'{request.world_size} tasks asked for run only with '
            "cluster='local' (processes) or 'slurm'.",
            stacklevel=3,
        )
    results: list[Job] = []
    for overrides in array_params or [None]:
        try:
            value = job(overrides)
        except (Exception, PreemptedExit) as err:  # noqa: BLE001 - kept
            results.append(InProcessJob(request.name, error=err))
        else:
            results.append(InProcessJob(request.name, value=value))
    return results if array_params is not None else results[0]


def _slurm_executor(request: LaunchRequest) -> Any:
    slurm_info.require_slurm()
    slurm_info.check_request(request, slurm_info.partitions())
    submitit = _import_submitit()
    executor = submitit.SlurmExecutor(folder=request.folder)
    executor.update_parameters(**request.slurm_parameters())
    return executor


def _local_executor(request: LaunchRequest) -> Any:
    if request.gpus_per_node:
        import torch

        found = torch.cuda.device_count()
        if request.gpus_per_node > found:
            raise InvalidLaunchError(
                f'gpus_per_node={request.gpus_per_node}, but this machine '
                f'has {found} GPU(s). Lower gpus_per_node (0 for CPU '
                "processes), or use cluster='slurm'."
            )
    submitit = _import_submitit()
    executor = submitit.LocalExecutor(folder=request.folder)
    executor.update_parameters(**request.local_parameters())
    return executor


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        from drytorch.core.exceptions import MissingDependencyError

        raise MissingDependencyError('submitit', 'slurm') from None
    return submitit
