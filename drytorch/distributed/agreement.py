"""Decisions that one rank takes and every rank must learn, with a deadline.

Rank zero alone writes a checkpoint and chooses the one to resume from; the
other ranks must learn the outcome, including a failure, or they would wait
in the next collective until the process group's timeout and then fail with
"Connection closed by peer", naming nothing.  The answer travels on a gloo
group of its own whose timeout is the *checkpoint* timeout: a parallel file
system can take minutes to write, far longer than a training collective
should be allowed to hang, and far shorter than the process group's default.
The group also keeps these object broadcasts off NCCL, where pickled objects
would have to go through a GPU.

Every function here is a collective: all ranks call it at the same point.
In one process each is a plain call.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from drytorch.core import exceptions
from drytorch.distributed import ranks

__all__ = [
    'CHECKPOINT_TIMEOUT_VARIABLE',
    'DEFAULT_CHECKPOINT_TIMEOUT',
    'all_ranks_ok',
    'checkpoint_timeout',
    'on_rank_zero',
]

_T = TypeVar('_T')

CHECKPOINT_TIMEOUT_VARIABLE = 'DRYTORCH_CHECKPOINT_TIMEOUT'
DEFAULT_CHECKPOINT_TIMEOUT = 600.0
"""Seconds the other ranks wait for rank zero's checkpoint write."""

_SHORTEST = 0.1
_groups: dict[tuple[int, float], Any] = {}


def checkpoint_timeout(seconds: float | None = None) -> float:
    """``seconds``, else ``$DRYTORCH_CHECKPOINT_TIMEOUT``, else 600 s."""
    source = 'The checkpoint timeout'
    value: object = seconds
    if seconds is None:
        text = os.environ.get(CHECKPOINT_TIMEOUT_VARIABLE, '').strip()
        if not text:
            return DEFAULT_CHECKPOINT_TIMEOUT
        source, value = CHECKPOINT_TIMEOUT_VARIABLE, text
        try:
            value = float(text)
        except ValueError:
            value = text
    number = value if isinstance(value, int | float) else None
    if (
        number is None
        or isinstance(number, bool)
        or not math.isfinite(number)
        or number < _SHORTEST
    ):
        raise ValueError(
            f'{source} must be a finite number of seconds, at least '
            f'{_SHORTEST:g}, got {value!r}; for example 900 for a slow '
            'parallel file system.'
        )
    return float(number)


def _group(timeout: float) -> Any:
    """The gloo side group with this timeout (created collectively once).

    One per timeout in use (every rank asks for the same ones in the same
    order), keyed by the default group's identity too: a script that tears
    the process group down and starts another gets fresh side groups.
    """
    world = id(dist.group.WORLD)
    key = (world, timeout)
    group = _groups.get(key)
    if group is None:
        for stale in [k for k in _groups if k[0] != world]:
            del _groups[stale]
        group = dist.new_group(
            backend='gloo', timeout=datetime.timedelta(seconds=timeout)
        )
        _groups[key] = group
    return group


def _broadcast(obj: Any, timeout: float, what: str) -> Any:
    box: list[Any] = [obj]
    try:
        dist.broadcast_object_list(box, src=0, group=_group(timeout))
    except RuntimeError as err:
        raise exceptions.DryTorchError(
            f'Rank {ranks.get_rank()} waited for rank zero to {what} and got '
            f'no answer within {timeout:g} s ({err}). Rank zero may have '
            f'died or hung; see its log. A slow file system needs a longer '
            f'wait: set {CHECKPOINT_TIMEOUT_VARIABLE} (seconds).'
        ) from err
    return box[0]


def on_rank_zero(
    action: Callable[[], _T],
    what: str,
    timeout: float | None = None,
    failure: Callable[[str], BaseException] | None = None,
) -> _T:
    """Run ``action`` on rank zero; every rank gets its result or its error.

    A failure on rank zero is raised on every rank, as a
    :class:`~drytorch.core.exceptions.DryTorchError` that names rank zero's
    error, within seconds rather than at the process group's timeout.

    Args:
        action: what rank zero does (other ranks never call it).
        what: the action in words, for the messages ("write a checkpoint").
        timeout: how long the other ranks wait (:func:`checkpoint_timeout`).
        failure: builds the error the other ranks raise from rank zero's
            error in words (a DryTorchError by default).

    """
    if not ranks.is_distributed():
        return action()
    result: Any = None
    error: BaseException | None = None
    message = ''
    if ranks.is_rank_zero():
        try:
            result = action()
        except Exception as err:  # noqa: BLE001 - re-raised on every rank
            error = err
            message = f'{err.__class__.__name__}: {err}'
    answer = _broadcast(
        (result, message) if ranks.is_rank_zero() else None,
        checkpoint_timeout(timeout),
        what,
    )
    if error is not None:
        raise error
    value, message = answer
    if message and failure is not None:
        raise failure(message)
    if message:
        raise exceptions.DryTorchError(
            f'Rank zero failed to {what}: {message}. Every rank stops; see '
            "rank zero's log for the traceback."
        )
    return value  # type: ignore[no-any-return]


def all_ranks_ok(
    problem: str | None, what: str, timeout: float | None = None
) -> None:
    """Raise on every rank when some rank reports a problem (collective).

    ``problem`` is this rank's failure in words, or None.  Ranks that did
    fine learn which rank failed and why, instead of waiting for it.
    """
    if not ranks.is_distributed():
        if problem:
            raise exceptions.DryTorchError(f'Could not {what}: {problem}')
        return
    gathered: list[Any] = [None] * ranks.get_world_size()
    dist.all_gather_object(
        gathered, problem, group=_group(checkpoint_timeout(timeout))
    )
    failures = [(r, p) for r, p in enumerate(gathered) if p]
    if failures:
        listed = '; '.join(f'rank {r}: {p}' for r, p in failures)
        raise exceptions.DryTorchError(
            f'Could not {what} on every rank ({listed}). Every rank stops.'
        )
