"""Checkpoint writes that run while training goes on.

With ``LocalCheckpoint(async_checkpoint=True)`` a save blocks the training
thread only while each rank copies its part to host memory; the write to
disk, and the collectives that torch.distributed.checkpoint runs to agree
on the metadata, run on a thread.  Rules kept here:

- one save in flight at a time: the next save (and every blocking one)
  first waits for the one before, so writes never pile up in memory;
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

import torch.distributed as dist

from drytorch.core import exceptions
from drytorch.distributed import agreement, ranks
from drytorch.lib import sharded_checkpoints

if TYPE_CHECKING:
    import pathlib
    from concurrent.futures import Future

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


class BackgroundSave:
    """The checkpoint write in flight of one checkpoint folder, if any."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._problem: str | None = None
        self._location: str | None = None
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
        future: Future[Any] = sharded_checkpoints.start_parts(
            parts, tmp, write_group(timeout)
        )
        self.where = str(tmp.parent)
        self._problem = self._location = None

        def complete() -> None:
            try:
                future.result()
                if finish is not None:
                    self._location = finish()
            except BaseException as err:  # noqa: BLE001 - told at the wait
                self._problem = f'{err.__class__.__name__}: {err}'

        self._thread = threading.Thread(
            target=complete, name='drytorch-checkpoint-write', daemon=True
        )
        self._thread.start()

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
