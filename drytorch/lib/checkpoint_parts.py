"""Checkpoints in parts and in the background: the store's collective side.

A part of :class:`~drytorch.lib.checkpoints.LocalCheckpoint` of its own,
because everything here is a collective that every rank calls, while the
rest of the store is rank zero's (write, find, read, tidy): the write of a
checkpoint in parts (:mod:`drytorch.lib.sharded_checkpoints`), the wait
for one written in the background (:mod:`drytorch.lib.background_saves`),
and the export of one to a single file.
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import TYPE_CHECKING, Any

import torch

from drytorch.core import exceptions
from drytorch.distributed import agreement, ranks
from drytorch.lib import checkpoint_housekeeping as housekeeping
from drytorch.lib import sharded_checkpoints as sharded
from drytorch.lib.background_saves import BackgroundSave, write_group
from drytorch.lib.checkpoint_names import (
    CheckpointInfo,
    CheckpointUnreadableError,
    file_name,
)

__all__ = ['CheckpointParts']


class CheckpointParts:
    """Collective methods of the checkpoint store (a mixin of it only)."""

    if TYPE_CHECKING:
        directory: pathlib.Path
        sharded: bool
        async_checkpoint: bool
        _sharded_asked: bool | None
        _background: BackgroundSave
        _cleaned: pathlib.Path | None

        def clean_leftovers(
            self, *, older_than: float = ..., keep: frozenset[str] = ...
        ) -> list[pathlib.Path]: ...

        def choose(
            self, epoch: int = -1, mid_epoch: bool = True
        ) -> CheckpointInfo: ...

        def read(self, checkpoint: Any, map_location: Any = 'cpu') -> Any: ...

        def _publish(
            self,
            final: pathlib.Path,
            scores: dict[str, float] | None,
            value: float | None,
        ) -> None: ...

    def set_async(self, async_checkpoint: bool) -> None:
        """Write in the background, or not (``Trainer(async_checkpoint=)``).

        Background writes are of checkpoints in parts: on, they turn
        ``sharded`` on unless it was asked to be off.

        Raises:
            TypeError: if ``async_checkpoint`` is not a bool.
            ValueError: if this store was made with ``sharded=False``.

        """
        if not isinstance(async_checkpoint, bool):
            raise TypeError(
                'async_checkpoint must be True or False, got '
                f'{async_checkpoint!r}.'
            )
        if async_checkpoint and self._sharded_asked is False:
            raise ValueError(
                'async_checkpoint=True writes checkpoints in parts, and this '
                'LocalCheckpoint has sharded=False (single files). Drop '
                'sharded=False (a checkpoint in parts exports to one file '
                'with `LocalCheckpoint.export`), or async_checkpoint=True.'
            )
        self.async_checkpoint = async_checkpoint
        if async_checkpoint:
            self.sharded = True

    def save_parts(
        self,
        parts: dict[str, Any],
        state: dict[str, Any],
        epoch: int,
        batch: int = 0,
        *,
        writer_pid: int,
        score: float | None = None,
        timeout: float | None = None,
        background: bool = False,
    ) -> str:
        """Write a checkpoint in parts, one per rank (collective).

        Every rank calls it with its own ``parts`` (its weights and
        optimizer state, see :func:`~drytorch.lib.sharded_checkpoints.
        parts_of`); ``state``, the rest, is rank zero's, and
        ``writer_pid`` is rank zero's process id on every rank (it names
        the temporary folder they share).  Rank zero completes the folder,
        renames it into place, moves ``latest`` and applies the retention
        once every part is on disk.  ``background`` returns once the
        parts are copied to host memory and writes them on a thread (see
        :meth:`wait`).  A write in flight is waited for first.

        Returns:
            Where the checkpoint is (or will be, when ``background``).

        Raises:
            CheckpointWriteError: on every rank, when a rank could not
                write its part or rank zero could not complete the folder.

        """
        self.wait(timeout)
        folder = self.directory
        final = folder / file_name(epoch, batch, sharded.SUFFIX)
        tmp = housekeeping.temporary_path(final, writer_pid)
        value = None if batch else housekeeping.as_score(score)
        payload = None
        if ranks.is_rank_zero():
            payload = io.BytesIO()  # copied now: training goes on
            torch.save(state, payload)

        def finish() -> str:
            assert payload is not None
            if self._cleaned != folder:
                self.clean_leftovers(keep=frozenset({tmp.name}))
            sharded.write_state(tmp, payload.getvalue())
            scores = housekeeping.read_scores(folder, self.keep_best)
            if scores is not None and scores.pop(final.name, None) is not None:
                housekeeping.write_scores(folder, scores)
            sharded.commit(tmp, final)
            self._publish(final, scores, value)
            return str(final)

        tmp.mkdir(parents=True, exist_ok=True)
        if background:
            self._background.start(
                parts,
                tmp,
                finish if ranks.is_rank_zero() else None,
                timeout,
            )
            return str(final)
        try:
            sharded.write_parts(parts, tmp, write_group(timeout))
        except Exception as err:
            raise exceptions.CheckpointWriteError(
                folder, f'{err.__class__.__name__}: {err}'
            ) from err
        return agreement.on_rank_zero(
            finish,
            'complete a checkpoint in parts',
            timeout,
            failure=lambda cause: exceptions.CheckpointWriteError(
                folder, f'on rank zero, {cause}'
            ),
        )

    def wait(self, timeout: float | None = None) -> str | None:
        """Wait for the background write in flight, if any (collective).

        Every rank calls it at the same point: a write that failed on any
        rank raises ``CheckpointWriteError`` on every rank here.

        Returns:
            Where the checkpoint went, on rank zero; None elsewhere, or
            when no write was in flight.

        """
        return self._background.wait(timeout)

    @property
    def writing(self) -> bool:
        """Whether a background write has started and not been waited for."""
        return self._background.pending

    def export(
        self,
        target: str | os.PathLike[str],
        checkpoint: CheckpointInfo | str | os.PathLike[str] | None = None,
    ) -> pathlib.Path:
        """One file of the single-file format from a checkpoint in parts.

        ``checkpoint`` defaults to the one ``latest`` names.  Runs in one
        process and reads every part; the file loads into a plain module
        (``torch.load(target)['model']['module']``), and through
        :meth:`read` as a checkpoint.  A file checkpoint is copied as is.

        Raises:
            CheckpointNotFoundError: when there is no checkpoint.
            CheckpointUnreadableError: when the checkpoint cannot be read.

        """
        if checkpoint is None:
            path = self.choose().path
        elif isinstance(checkpoint, CheckpointInfo):
            path = checkpoint.path
        else:
            path = pathlib.Path(checkpoint)
        out = pathlib.Path(target)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            state = self.read(path)
            tmp = housekeeping.temporary_path(out)
            with tmp.open('wb') as stream:
                torch.save(state, stream)
            os.replace(tmp, out)
            return out
        try:
            return sharded.export(path, out)
        except Exception as err:
            raise CheckpointUnreadableError(path, err) from err
