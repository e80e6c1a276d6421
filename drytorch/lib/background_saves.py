"""Checkpoint writes that run while training goes on.

With ``LocalCheckpoint(async_checkpoint=True)`` a save blocks the training
thread only while each rank copies its part to host memory; the write to
disk, and the collectives that torch.distributed.checkpoint runs to agree
on the metadata, run on a thread.  Rules kept here:

- one save in flight at a time: the next save (and every blocking one)
  first waits for the one before, so writes never pile up in memory;
- the parts are staged into host buffers kept from one save to the
  next, then written with ``torch.distributed.checkpoint.save`` on a
  thread of this module (its own ``async_save`` would copy into new
  memory at every save, several times slower);
- the writes' collectives run on a process group of their own (gloo, with
  the checkpoint timeout), never on the group that training's collectives
  use, so that the two threads cannot interleave messages;
- every rank learns the outcome of a background write at the next wait,
  in step (an agreement on the training thread): a write that failed on
  any rank stops every rank there, with the cause;
- rank zero renames the folder into place and moves ``latest`` only after
  every rank's part is on disk, so a process killed at any moment of a
  background write leaves the previous checkpoint the one that loads.

Saves that must be on disk before the process stops (a preemption's, the
last of a training call) wait for their own write before they return.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from drytorch.core import exceptions
from drytorch.distributed import agreement, ranks
from drytorch.lib import sharded_checkpoints

if TYPE_CHECKING:
    import pathlib

    from torch.distributed import ProcessGroup

__all__ = ['BackgroundSave', 'write_group']

_groups: dict[tuple[int, float], Any] = {}


def write_group(timeout: float | None = None) -> ProcessGroup | None:
    """The gloo group of checkpoint writes (collective when first made).

    Every rank asks for it at the same save, the first of the process
    group; a new default group (a script that starts a second one) gets a
    new one.  None in one process.
    """
    if not ranks.is_distributed():
        return None
    seconds = agreement.checkpoint_timeout(timeout)
    key = (id(dist.group.WORLD), seconds)
    group = _groups.get(key)
    if group is None:
        for stale in [k for k in _groups if k[0] != key[0]]:
            del _groups[stale]
        group = dist.new_group(
            backend='gloo', timeout=datetime.timedelta(seconds=seconds)
        )
        _groups[key] = group
    return group


def _layout(state: Any, path: str = '') -> list[tuple[Any, ...]]:
    """Every tensor's place, kind, shape and type: what a buffer must match."""
    from torch.distributed.tensor import DTensor

    if isinstance(state, DTensor):
        local = state.to_local()
        return [(path, 'dtensor', local.shape, local.dtype, state.placements)]
    if isinstance(state, torch.Tensor):
        return [(path, 'tensor', state.shape, state.dtype)]
    if isinstance(state, dict):
        return [
            entry
            for key in sorted(state, key=str)
            for entry in _layout(state[key], f'{path}/{key}')
        ]
    if isinstance(state, list | tuple):
        return [
            (path, type(state).__name__, len(state)),
            *(
                e
                for i, v in enumerate(state)
                for e in _layout(v, f'{path}/{i}')
            ),
        ]
    return [(path, type(state).__name__)]


class BackgroundSave:
    """The checkpoint write in flight of one checkpoint folder, if any."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._problem: str | None = None
        self._location: str | None = None
        self._buffers: dict[str, Any] | None = None
        self._layout: list[tuple[Any, ...]] = []
        self.where = ''

    @property
    def pending(self) -> bool:
        """Whether a write has started and not been waited for."""
        return self._thread is not None

    def start(
        self,
        parts: dict[str, Any],
        tmp: pathlib.Path,
        finish: Callable[[], str] | None,
        timeout: float | None = None,
    ) -> None:
        """Stage ``parts`` and write them into ``tmp`` in the background.

        ``finish`` (rank zero's) runs on the thread once every part is on
        disk: it completes the folder and renames it into place.  Call
        :meth:`wait` first: one write at a time.
        """
        if self._thread is not None:
            raise RuntimeError('a background write is still pending')
        group = write_group(timeout)  # made here: a collective, in step
        staged = self._stage(parts)
        self.where = str(tmp.parent)
        self._problem = self._location = None

        def complete() -> None:
            try:
                sharded_checkpoints.write_parts(staged, tmp, group)
                if finish is not None:
                    self._location = finish()
            except BaseException as err:  # noqa: BLE001 - told at the wait
                self._problem = f'{err.__class__.__name__}: {err}'

        self._thread = threading.Thread(
            target=complete, name='drytorch-checkpoint-write', daemon=True
        )
        self._thread.start()

    def _stage(self, parts: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``parts`` in host memory that training cannot change.

        The buffers are kept from one save to the next (one write is in
        flight at a time, so the last one is done with them): after the
        first save a stage is one copy into memory already mapped, a
        tenth of the time of copying into new memory, which pays a page
        fault for every page.  New buffers are made when the layout
        changes (the optimizer's state appeared, say).  Pinned when there
        is a GPU, so that its copies run at the bus's speed.
        """
        from torch.distributed._state_dict_utils import (
            _copy_state_dict,
            _create_cpu_state_dict,
        )

        pin = torch.cuda.is_available()
        layout = _layout(parts)
        if self._buffers is None or layout != self._layout:
            self._buffers = _create_cpu_state_dict(parts, pin_memory=pin)
            self._layout = layout
        staged = _copy_state_dict(parts, self._buffers, non_blocking=pin)
        if pin:
            torch.cuda.synchronize()
        return staged

    def wait(self, timeout: float | None = None) -> str | None:
        """Wait for the write in flight; where it went (rank zero's).

        A collective when a write was pending (every rank calls it at the
        same point, since every rank started it): a failure on any rank is
        raised on every rank as a ``CheckpointWriteError``.
        """
        thread = self._thread
        if thread is None:
            return None
        seconds = agreement.checkpoint_timeout(timeout)
        thread.join(seconds)
        problem = self._problem
        if thread.is_alive():
            problem = f'the write did not finish within {seconds:g} s'
        self._thread = None
        try:
            agreement.all_ranks_ok(
                problem, 'write a checkpoint in the background', timeout
            )
        except exceptions.DryTorchError as err:
            raise exceptions.CheckpointWriteError(
                self.where, str(err)
            ) from err
        return self._location
