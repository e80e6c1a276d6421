"""Who am I among the processes of this job: the one place that asks.

The kernel (``drytorch.core``) decides who writes files and which dispatcher
runs trackers from these functions alone, so that the answer has a single
owner.  Every helper here is a no-op (or returns the single-process answer)
when no process group is initialised, which is the case tested first.

The collective helpers (``broadcast_object``, ``barrier``) must be called by
every rank of the group: never call them inside ``if is_rank_zero():``.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch.distributed as dist

_T = TypeVar('_T')

__all__ = [
    'FORCE_GROUP_VARIABLE',
    'barrier',
    'broadcast_object',
    'ensure_process_group',
    'get_local_rank',
    'get_rank',
    'get_world_size',
    'is_distributed',
    'is_rank_zero',
]

FORCE_GROUP_VARIABLE = 'DRYTORCH_FORCE_PROCESS_GROUP'
"""Set to 1 to run the distributed code paths in a single process.

A process group of one is then started when a run starts, and counts as
distributed: the model is wrapped in DDP and metrics go through the packed
all-reduce, on NCCL where there is a GPU.  This checks a one-GPU machine
(``benchmarks/gpu_check.sh``); it is never needed to train.
"""


def is_distributed() -> bool:
    """Whether a process group with more than one process is up.

    A group of one counts too when ``DRYTORCH_FORCE_PROCESS_GROUP=1``.
    """
    return (
        dist.is_available()
        and dist.is_initialized()
        and (dist.get_world_size() > 1 or _forced())
    )


def get_rank() -> int:
    """Global rank of this process; 0 when no process group is up.

    Before the process group is initialised, the launcher's answer is
    read, so that a process that never joins a group (a rank of a failed
    start, say) still does not write shared files as if it were rank zero.
    The launcher is the one that ``detect_environment`` finds: a variable
    left over in a single process's environment (a stray ``RANK=1``) does
    not make it a rank other than zero.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    from drytorch.distributed.environment import detect_environment
    from drytorch.distributed.errors import DistributedSetupError

    try:
        return detect_environment().rank
    except DistributedSetupError:
        pass  # malformed launch: fall back on the raw variables
    for name in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK'):
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def get_world_size() -> int:
    """Number of processes in the group; 1 when no process group is up."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def get_local_rank() -> int:
    """Rank of this process on its node, from the launcher's variables."""
    for name in (
        'LOCAL_RANK',
        'SLURM_LOCALID',
        'OMPI_COMM_WORLD_LOCAL_RANK',
        'MPI_LOCALRANKID',
    ):
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def is_rank_zero() -> bool:
    """Whether this process is the one that writes shared files."""
    return get_rank() == 0


def broadcast_object(obj: _T, src: int = 0) -> _T:
    """Return rank ``src``'s ``obj`` on every rank (collective).

    Used for the few decisions that must be identical everywhere, such as the
    run id, before any path is built from them.  Every rank must call it.
    """
    if not is_distributed():
        return obj
    box: list[object] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[return-value]


def barrier() -> None:
    """Wait for every rank (collective); a no-op in one process."""
    if is_distributed():
        dist.barrier()


def ensure_process_group() -> None:
    """Bring the process group up when the launcher started several ranks.

    Called when a run starts, so that a script written for one process runs
    unchanged under torchrun, srun or mpirun.  A no-op when a group is up or
    when the launcher started a single process, unless
    ``DRYTORCH_FORCE_PROCESS_GROUP=1`` asks for a group of one.
    """
    if dist.is_available() and dist.is_initialized():
        return
    from drytorch.distributed.environment import detect_environment
    from drytorch.distributed.process_group import init_distributed

    if detect_environment().world_size > 1:
        init_distributed()
    elif _forced():
        _start_group_of_one()
        init_distributed()  # adopts it, like a group started by the user


def _forced() -> bool:
    return os.environ.get(FORCE_GROUP_VARIABLE) == '1'


def _start_group_of_one() -> None:
    """This process alone in a group, on the backend it would get in many.

    An in-process store needs no address or port.
    """
    import torch

    from drytorch.distributed.process_group import default_backend

    backend = default_backend(1)
    device_id = None
    if backend == 'nccl':
        device_id = torch.device('cuda', get_local_rank())
        torch.cuda.set_device(device_id)
    dist.init_process_group(
        backend,
        store=dist.HashStore(),
        rank=0,
        world_size=1,
        device_id=device_id,
    )
