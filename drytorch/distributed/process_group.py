"""Bring torch.distributed up and down from the detected environment.

The one promise kept here: a launch that cannot assemble (a rank that never
starts, a wrong task count, a port taken by another job) fails within the
timeout with a ``DistributedSetupError`` that names the launcher and what it
read, instead of hanging until the cluster kills the job.  torch's TCPStore
rendezvous honours the timeout given to ``init_process_group``, so every
rank gets an error, rank zero and the others alike.

``os.environ`` is left alone: the rendezvous address goes in the
``tcp://`` URL, so a later ``detect_environment()`` gives the same answer,
and child processes do not inherit ``RANK`` and mistake themselves for a
rank.

Which GPU a rank uses, and so whether NCCL can run, is decided in one
place, :func:`local_device`: a rank that sees at least as many GPUs as its
node has ranks (torchrun, srun without GPU binding) uses
``cuda:<local rank>``; a rank that sees fewer, because srun gave each task
GPUs of its own (``--gpus-per-task``), uses its first, ``cuda:0``; ranks
that share fewer GPUs than they are use gloo, since NCCL cannot put two
ranks of a group on one device.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import os

import torch
import torch.distributed as dist

from drytorch.distributed import interfaces, peers
from drytorch.distributed.environment import (
    ClusterEnvironment,
    detect_environment,
)
from drytorch.distributed.errors import DistributedSetupError
from drytorch.distributed.slurm import SlurmEnvironment

__all__ = [
    'DEFAULT_TIMEOUT',
    'TIMEOUT_VARIABLE',
    'default_backend',
    'init_distributed',
    'local_device',
    'teardown_distributed',
]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)
"""Long enough for the slowest node of a big job to start Python."""

TIMEOUT_VARIABLE = 'DRYTORCH_DIST_TIMEOUT'
"""Seconds; changes the default timeout without touching the code."""

_active: ClusterEnvironment | None = None


def init_distributed(
    backend: str | None = None,
    timeout: datetime.timedelta | float | None = None,
) -> ClusterEnvironment:
    """Start the process group that the launcher describes, once.

    Every rank must call it.  In a world of one process nothing is started.
    Later calls return the environment of the first one, so library code
    may call it freely.

    Args:
        backend: ``'nccl'`` or ``'gloo'``; by default NCCL where every
            rank of this node has a CUDA device of its own, else gloo
            (see :func:`local_device`).
        timeout: how long to wait for every rank to join, and for each
            collective afterwards; by default ``DRYTORCH_DIST_TIMEOUT``
            seconds if set, else 5 minutes.  A number is in seconds.

    Returns:
        The detected environment: rank, world size, master address...

    Raises:
        DistributedSetupError: the launcher's variables are malformed,
            NCCL was asked for where this rank sees no GPU, or the ranks did
            not all join within the timeout.

    """
    global _active
    if isinstance(timeout, int | float):
        if not timeout > 0:
            raise ValueError(
                f'timeout must be a positive number of seconds, got '
                f'{timeout!r}.'
            )
        timeout = datetime.timedelta(seconds=timeout)
    if _active is not None and (
        _active.world_size == 1 or dist.is_initialized()
    ):
        _check_backend(_active, backend)
        return _active
    environment = detect_environment()
    if environment.world_size > 1:
        if dist.is_initialized():
            _adopt(environment)
        else:
            _start(
                environment,
                backend or _placement(environment)[1],
                timeout or _timeout_from_environment(),
            )
    _active = environment
    return environment


def teardown_distributed(wait_for_peers_s: float = 2.0) -> None:
    """Destroy the process group, if any; safe to call more than once.

    With gloo, a rank that destroys its group while a peer's threads still
    talk to it can make that peer abort at exit, so the ranks first wait
    for each other, briefly: after a failure the peers may never come, and
    the teardown must not turn an error into a hang.

    Args:
        wait_for_peers_s: how long to wait for the other ranks; 0 skips it.

    """
    global _active
    _active = None
    peers.forget_peers()
    if not (dist.is_available() and dist.is_initialized()):
        return
    if (
        wait_for_peers_s > 0
        and dist.get_world_size() > 1
        and dist.get_backend() == 'gloo'
    ):
        # a missing peer is fine here: the group goes down all the same
        with contextlib.suppress(Exception):
            dist.monitored_barrier(
                timeout=datetime.timedelta(seconds=wait_for_peers_s)
            )
    dist.destroy_process_group()


def local_device(
    environment: ClusterEnvironment | None = None,
) -> torch.device:
    """The device this rank computes on, and that NCCL binds it to.

    - No CUDA device: the CPU.
    - At least as many visible GPUs as ranks on this node (torchrun, or
      srun without GPU binding: every rank sees all of them):
      ``cuda:<local rank>``.
    - Fewer, because srun gave each task GPUs of its own
      (``--gpus-per-task``; each then sees its own as ``cuda:0``, while
      its local rank runs up to n - 1): ``cuda:0``.
    - Fewer, shared by the node's ranks: ``cuda:<local rank % count>``,
      with gloo as the default backend.

    Args:
        environment: the launcher's answers; by default the environment
            that ``init_distributed`` started, else the detected one.

    """
    if environment is None:
        environment = _active or detect_environment()
    return _placement(environment)[0]


def default_backend(local_world_size: int, *, own_gpus: bool = False) -> str:
    """NCCL where each of this node's ranks has a CUDA device, else gloo.

    Decided from the node's rank count rather than this rank's index, so
    that the ranks of a node with fewer devices than ranks all pick gloo:
    ranks that disagree on the backend would never meet.  The rule is that
    of :func:`local_device`.

    Args:
        local_world_size: ranks on this node.
        own_gpus: whether the launcher gave each task GPUs of its own, so
            that seeing fewer GPUs than the node has ranks is no sharing.

    """
    return _choose(0, local_world_size, _visible_gpus(), own_gpus)[1]


def _placement(environment: ClusterEnvironment) -> tuple[torch.device, str]:
    """This rank's device and the default backend, for ``environment``."""
    visible = _visible_gpus()
    own = visible > 0 and _gpus_of_its_own(environment, visible)
    return _choose(
        environment.local_rank, environment.local_world_size, visible, own
    )


def _choose(
    local_rank: int, local_world_size: int, visible: int, own_gpus: bool
) -> tuple[torch.device, str]:
    """The one rule for the device and the backend (see local_device)."""
    if visible < 1:
        return torch.device('cpu'), 'gloo'
    if visible >= local_world_size:
        return torch.device('cuda', local_rank), 'nccl'
    if own_gpus:
        return torch.device('cuda', 0), 'nccl'
    return torch.device('cuda', local_rank % visible), 'gloo'


def _visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _gpus_of_its_own(environment: ClusterEnvironment, visible: int) -> bool:
    """Whether the launcher gave this task GPUs that no other task sees.

    Only srun says so, in two ways: ``SLURM_GPUS_PER_TASK``, which sbatch
    and salloc export for ``--gpus-per-task``, and ``SLURM_STEP_GPUS``, the
    step's GPUs on this node, more of them than this task sees.  torchrun's
    workers all see the same GPUs, and an mpirun wrapper script that sets
    ``CUDA_VISIBLE_DEVICES`` per rank leaves no trace: those get gloo by
    default (pass ``backend='nccl'`` to override), never a guess that would
    put two NCCL ranks on one GPU, where NCCL fails.
    """
    if not isinstance(environment, SlurmEnvironment):
        return False
    # [type:]count, as in --gpus-per-task=a100:1
    per_task = environment.variable('SLURM_GPUS_PER_TASK') or ''
    count = per_task.rsplit(':', 1)[-1].strip()
    if count.isdecimal() and int(count) > 0:
        return True
    step_gpus = environment.variable('SLURM_STEP_GPUS') or ''
    return len([g for g in step_gpus.split(',') if g.strip()]) > visible


def _start(
    environment: ClusterEnvironment,
    backend: str,
    timeout: datetime.timedelta,
) -> None:
    device_id = None
    if backend == 'nccl':
        device_id = _placement(environment)[0]
        if device_id.type != 'cuda':
            raise environment.setup_error(
                f"backend 'nccl' was asked for, but rank {environment.rank} "
                'sees no CUDA device (torch.cuda.is_available() is False)',
                'that the job was given GPUs (srun --gpus-per-task=1, or '
                '--gres=gpu:N), that CUDA_VISIBLE_DEVICES does not hide '
                "them and that torch is a CUDA build; or pass backend='gloo'"
                ', or no backend to get NCCL only where there are GPUs',
            )
        # Bind before the group exists, so that NCCL's communicator and
        # every later .cuda() land on this rank's own device.
        torch.cuda.set_device(device_id)
    addr = environment.master_addr
    port = environment.master_port
    if backend == 'gloo':
        _gloo_interface(environment, addr)
    host = f'[{addr}]' if ':' in addr else addr  # IPv6 literal
    try:
        dist.init_process_group(
            backend,
            init_method=f'tcp://{host}:{port}',
            rank=environment.rank,
            world_size=environment.world_size,
            timeout=timeout,
            device_id=device_id,
        )
    except (RuntimeError, OSError, ValueError) as exc:
        seconds = timeout.total_seconds()
        raise environment.setup_error(
            f'the {backend} process group of {environment.world_size} '
            f'ranks did not come up within {seconds:g} s at '
            f'{addr}:{port} (this is rank {environment.rank}): {exc}',
            f'that all {environment.world_size} processes were started and '
            f'each called init_distributed, that none of them crashed '
            f'before, that {addr}:{port} is reachable from every node and '
            f'not taken by another job, and {environment.hint}; to wait '
            f'longer, set {TIMEOUT_VARIABLE} (seconds)',
        ) from exc
    peers.record_peers(addr)
    # A group still up when the interpreter finalises can abort the process
    # (its threads call back into Python as it goes away); a script that
    # never tears down gets it done at exit instead.
    atexit.register(teardown_distributed)


def _gloo_interface(environment: ClusterEnvironment, addr: str) -> None:
    """Check the interface a user named, or pick one off loopback."""
    named = os.environ.get(interfaces.VARIABLE)
    if named:
        problem = interfaces.check_named(named)
        if problem is not None:
            raise environment.setup_error(
                problem,
                f'{interfaces.VARIABLE} (the interface that reaches the '
                'other nodes, e.g. eth0 or ib0), or unset it',
            )
        return
    interfaces.choose_for_gloo(addr)


def _adopt(environment: ClusterEnvironment) -> None:
    """Accept a group started elsewhere if it is the one the launcher says."""
    actual = (dist.get_rank(), dist.get_world_size())
    expected = (environment.rank, environment.world_size)
    if actual != expected:
        raise environment.setup_error(
            f'a process group is already up as rank {actual[0]} of '
            f'{actual[1]}, but the launcher says rank {expected[0]} of '
            f'{expected[1]}',
            'the code that started the group before init_distributed',
        )


def _check_backend(
    environment: ClusterEnvironment,
    backend: str | None,
) -> None:
    if backend is None or not dist.is_initialized():
        return
    running = dist.get_backend()
    if running != backend:
        raise environment.setup_error(
            f'backend {backend!r} was asked for, but the process group is '
            f'already up with {running!r}',
            'that every call to init_distributed asks for the same backend, '
            'or call teardown_distributed first',
        )


def _timeout_from_environment() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_VARIABLE)
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not (seconds > 0 and math.isfinite(seconds)):
        raise DistributedSetupError(
            f'{TIMEOUT_VARIABLE}={raw!r} is not a positive number of '
            'seconds. Check its value, e.g. 300, or unset it for the '
            'default of 5 minutes.'
        )
    return datetime.timedelta(seconds=seconds)
