"""Checkpoints that are never half written, and how to find and read them.

A checkpoint is written to a temporary name in the same folder, flushed to
disk and renamed; only then does the ``latest`` pointer move.  A process
killed at any moment therefore leaves either the old set of complete files
or the new one, plus at most a temporary file under a name no loader reads.

``latest`` is the authority on what to resume from, because it is written
only after a save succeeded and says which save came last. File names
cannot say that: after ``load_checkpoint(1)`` and more training, the new
``epoch_000002.pt`` is the present, and an ``epoch_000005.pt`` of the
abandoned future only looks newer. The scan by (epoch, batch) position,
parsed from the names, is the fallback when the pointer is missing, names
no file, or names one that cannot be read. A complete file past the pointer
and written after it moved is the one exception: a kill came between its
rename and the pointer's move, and it is the last complete checkpoint, so
it comes first; other positions past the pointer's (a rewind, a copy by
hand) come last.

What to delete afterwards (retention by position and by score, kept in
``scores.json``) and the removal of temporary files that killed writes
left are housekeeping, in :mod:`drytorch.lib.checkpoint_housekeeping`;
:class:`LocalCheckpoint` runs it at each save and exposes it through its
options and :meth:`LocalCheckpoint.clean_leftovers`.  Retention never
removes the file ``latest`` names nor the newest by position, so both the
pointer and the scan always find something.
"""

from __future__ import annotations

import os
import pathlib
import warnings
import zipfile
from typing import Any, Literal

import torch

from drytorch.core import exceptions
from drytorch.core.experimenting import Experiment
from drytorch.core.registry import atomic_write_text
from drytorch.lib import checkpoint_housekeeping as housekeeping
from drytorch.lib import sharded_checkpoints as sharded
from drytorch.lib.background_saves import BackgroundSave
from drytorch.lib.checkpoint_names import (
    _NAME,
    LATEST,
    CheckpointInfo,
    CheckpointUnreadableError,
    file_name,
)
from drytorch.lib.checkpoint_parts import CheckpointParts

__all__ = ['CheckpointInfo', 'CheckpointUnreadableError', 'LocalCheckpoint']


def _mtime(path: pathlib.Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float('-inf')


def _warn(message: str) -> None:
    warnings.warn(exceptions.DryTorchWarning(message), stacklevel=3)


def _ours(name: str) -> bool:
    """Whether this class writes files named ``name``.

    ``<checkpoint>.old`` is a folder of parts moved aside to be replaced.
    """
    name = name.removesuffix(sharded.OLD)
    return bool(_NAME.match(name)) or name in (LATEST, housekeeping.SCORES)


class LocalCheckpoint(CheckpointParts):
    """Checkpoints of one model in a local (or shared) folder.

    Call :meth:`save` and :meth:`clean_leftovers` on rank zero only: they
    write and delete files and hold no collectives.  Only one process may
    write to a folder at a time.  A checkpoint in parts
    (:meth:`save_parts`, ``sharded=True``) is written by every rank, each
    its own part: that one, and :meth:`wait`, are collectives.

    Args:
        par_dir: where checkpoints go; by default ``checkpoints`` in the
            run's folder, so that a resumed run finds its own checkpoints.
            An explicit folder (a scratch file system, say) gets the same
            structure under it, ``<par_dir>/<experiment>/runs/<run>/<model>``,
            so that experiments and runs sharing it never load or delete
            each other's checkpoints; outside a run (a store opened to read
            or export) the folder is ``<par_dir>/<model>``.
        run_folders: False: always ``<par_dir>/<model>``, whichever run
            is active: to start from another run's checkpoints, or to keep
            a layout of one's own (every run then shares the folder).
        sharded: True: each checkpoint is a folder of parts, one per rank,
            through ``torch.distributed.checkpoint`` (see
            :mod:`drytorch.lib.sharded_checkpoints`), instead of one file
            that rank zero writes after gathering everything.  For models
            that do not fit in one device's memory, and to spread the
            writes over the ranks; such a checkpoint loads into any number
            of ranks at an epoch boundary, and :meth:`export` turns it
            into one file.  None (the default): parts for a model sharded
            over the ranks (FSDP) or with ``async_checkpoint``, single
            files otherwise.
        async_checkpoint: write checkpoints in the background: a save
            blocks training only while each rank copies its part to host
            memory (see :mod:`drytorch.lib.background_saves`); a
            preemption's checkpoint and the last of a training call are
            still waited for.  Needs ``sharded``.
        keep_last: how many of the newest end-of-epoch checkpoints to keep
            (None: all of them).
        keep_best: how many of the best-scored end-of-epoch checkpoints to
            keep besides; scores are given to :meth:`save`.
        best_is: whether a 'lower' score (a loss) or a 'higher' one (an
            accuracy) is better.
        monitor: the name of the metric whose value the trainer passes as
            the score (None: the loss); this class only records it.

    """

    def __init__(
        self,
        par_dir: str | pathlib.Path | None = None,
        *,
        keep_last: int | None = None,
        keep_best: int = 0,
        best_is: Literal['lower', 'higher'] = 'lower',
        monitor: str | None = None,
        run_folders: bool = True,
        sharded: bool | None = None,
        async_checkpoint: bool = False,
    ) -> None:
        housekeeping.check_retention(keep_last, keep_best, best_is)
        if sharded is not None and not isinstance(sharded, bool):
            raise TypeError(f'sharded must be True or False, got {sharded!r}.')
        self._sharded_asked = sharded
        #: whether checkpoints are folders of parts, one per rank
        self.sharded = bool(sharded)
        #: whether checkpoints in parts are written in the background
        self.async_checkpoint = False
        self.set_async(async_checkpoint)
        self._background = BackgroundSave()
        if monitor is not None and (
            not isinstance(monitor, str) or not monitor
        ):
            raise ValueError(
                'monitor must be the name of a metric, or None for the '
                f'loss, got {monitor!r}.'
            )
        self._par_dir = pathlib.Path(par_dir) if par_dir else None
        self.run_folders = run_folders
        self.model_name = ''
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.best_is = best_is
        self.monitor = monitor
        self._cleaned: pathlib.Path | None = None

    def bind(self, model_name: str) -> None:
        """Attach to a model (its name is the sub-folder)."""
        self.model_name = model_name

    def suit_sharded_model(self) -> None:
        """Write in parts for a sharded model, unless asked not to.

        Called by a model sharded over the ranks (FSDP): a single file
        would pass the whole model through rank zero's memory, which is
        what sharding avoids.  ``sharded=False`` keeps single files.
        """
        if self._sharded_asked is None:
            self.sharded = True

    @property
    def directory(self) -> pathlib.Path:
        """The folder of this model's checkpoints."""
        if self._par_dir is None:
            run = Experiment.get_current().run
            return run.dir / 'checkpoints' / self.model_name
        if not self.run_folders:
            return self._par_dir / self.model_name
        try:
            run = Experiment.get_current().run
        except exceptions.NoActiveExperimentError:  # a store opened on its own
            return self._par_dir / self.model_name
        where = run.dir.relative_to(run.experiment.par_dir)
        return self._par_dir / where / self.model_name

    def save(
        self,
        state: dict[str, Any],
        epoch: int,
        batch: int = 0,
        *,
        score: float | None = None,
    ) -> str:
        """Write ``state`` atomically, then apply the retention (rank zero).

        ``score`` ranks an end-of-epoch checkpoint for ``keep_best``; one
        that is None or not finite, or given to a mid-epoch checkpoint
        (whose metrics cover part of an epoch), ranks nothing.
        """
        value = housekeeping.as_score(score)
        if batch:
            value = None
        folder = self.directory
        folder.mkdir(parents=True, exist_ok=True)
        if self._cleaned != folder:
            self.clean_leftovers()
        final = folder / file_name(epoch, batch)
        scores = housekeeping.read_scores(folder, self.keep_best)
        if scores is not None and scores.pop(final.name, None) is not None:
            housekeeping.write_scores(folder, scores)  # not to outlive it
        tmp = housekeeping.temporary_path(final)
        with tmp.open('wb') as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, final)
        sharded.fsync_dir(folder)
        self._publish(final, scores, value)
        return str(final)

    def _publish(
        self,
        final: pathlib.Path,
        scores: dict[str, float] | None,
        value: float | None,
    ) -> None:
        """After a checkpoint is in place: its score, ``latest``, retention."""
        folder = final.parent
        if scores is not None and value is not None:
            scores[final.name] = value
            housekeeping.write_scores(folder, scores)
        atomic_write_text(folder / LATEST, final.name + '\n')
        housekeeping.apply_retention(
            folder,
            self.available(),
            final.name,
            scores,
            keep_last=self.keep_last,
            keep_best=self.keep_best,
            best_is=self.best_is,
        )

    def available(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest position first."""
        folder = self.directory
        if not folder.exists():
            return []
        found = []
        for path in folder.iterdir():
            match = _NAME.match(path.name)
            # a name of the other kind (a folder .pt) is no checkpoint
            if match and (match.group(3) == sharded.SUFFIX) == path.is_dir():
                batch = int(match.group(2) or 0)
                found.append(CheckpointInfo(int(match.group(1)), batch, path))
        return sorted(found)

    def find(self, epoch: int = -1, mid_epoch: bool = True) -> CheckpointInfo:
        """The checkpoint of ``epoch`` (-1: the one ``latest`` names).

        No file is opened; :meth:`choose` also checks that it is complete.
        """
        candidates = self._candidates(epoch, mid_epoch)
        if not candidates:
            raise exceptions.CheckpointNotFoundError(self.directory, epoch)
        return candidates[0]

    def choose(
        self, epoch: int = -1, mid_epoch: bool = True
    ) -> CheckpointInfo:
        """The checkpoint of ``epoch`` to load, checked to be complete.

        For "rank zero chooses, every rank reads that one" without rank
        zero reading it twice: the check opens the file's zip directory,
        which a write or a copy cut short lacks, instead of unpickling it
        all (only a file in torch's old format is read in full).  A
        damaged byte inside passes; :meth:`read` then reports it.
        """
        for info in self._candidates(epoch, mid_epoch):
            try:
                self._check(info.path)
            except CheckpointUnreadableError as err:
                _warn(
                    f'Checkpoint {err.path} cannot be read ({err.cause}); '
                    'using the next newest.'
                )
                continue
            return info
        raise exceptions.CheckpointNotFoundError(self.directory, epoch)

    def read(
        self,
        checkpoint: CheckpointInfo | str | os.PathLike[str],
        map_location: str | torch.device = 'cpu',
    ) -> dict[str, Any]:
        """The state saved in ``checkpoint`` (found elsewhere or chosen).

        Raises:
            CheckpointUnreadableError: naming the file, if it is missing,
                cut short, or holds no state dictionary.

        """
        path = pathlib.Path(
            checkpoint.path
            if isinstance(checkpoint, CheckpointInfo)
            else checkpoint
        )
        try:
            if path.is_dir():
                state = sharded.read_state(path, map_location)
            else:
                state = torch.load(
                    path, map_location=map_location, weights_only=False
                )
        except Exception as err:
            raise CheckpointUnreadableError(path, err) from err
        if not isinstance(state, dict):
            problem = TypeError(f'it holds a {type(state).__name__}')
            raise CheckpointUnreadableError(path, problem)
        return state

    def load(
        self,
        epoch: int = -1,
        mid_epoch: bool = True,
        map_location: str | torch.device = 'cpu',
    ) -> tuple[dict[str, Any], CheckpointInfo]:
        """Read the checkpoint ``latest`` names, or the one of ``epoch``.

        A file that cannot be read (a disk that lost it, a copy cut short)
        is skipped with a warning in favour of the next newest.
        """
        for info in self._candidates(epoch, mid_epoch):
            try:
                return self.read(info, map_location), info
            except CheckpointUnreadableError as err:
                _warn(
                    f'Checkpoint {err.path} cannot be read ({err.cause}); '
                    'using the next newest.'
                )
        raise exceptions.CheckpointNotFoundError(self.directory, epoch)

    def clean_leftovers(
        self,
        *,
        older_than: float = housekeeping.STALE_AFTER_S,
        keep: frozenset[str] = frozenset(),
    ) -> list[pathlib.Path]:
        """Remove the temporary files of writes that were killed.

        A file goes when the process whose id its name holds is gone (or
        is this one, whose writes are all finished), or when it has not
        changed for ``older_than`` seconds.  Only this class's names are
        touched.  Call it on rank zero, never during a save of this
        process; no collectives.

        Returns:
            The files removed, sorted.

        """
        folder = self.directory
        removed = housekeeping.clean_leftovers(
            folder, _ours, older_than=older_than, keep=keep
        )
        self._cleaned = folder
        return removed

    def _candidates(self, epoch: int, mid_epoch: bool) -> list[CheckpointInfo]:
        """What to try for ``epoch``, the preferred first."""
        found = self.available()
        if epoch >= 0:
            return [c for c in found if c.epoch == epoch and not c.mid_epoch]
        pointer = self._pointer(found)
        order = [c for c in reversed(found) if mid_epoch or not c.mid_epoch]
        if pointer is not None:  # stable: each group stays newest first
            moved = _mtime(self.directory / LATEST)
            order.sort(key=lambda c: c > pointer and _mtime(c.path) <= moved)
        return order

    def _pointer(self, found: list[CheckpointInfo]) -> CheckpointInfo | None:
        """The checkpoint that ``latest`` names, if it names one."""
        path = self.directory / LATEST
        try:
            name = path.read_text(encoding='utf-8').strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeError) as err:
            _warn(f'{path} cannot be read ({err}); using the newest file.')
            return None
        for info in found:
            if info.path.name == name:
                return info
        shown = name if len(name) <= 60 else name[:57] + '...'
        _warn(
            f'{path} names {shown!r}, which is no checkpoint there; using '
            'the newest file by epoch.'
        )
        return None

    def _check(self, path: pathlib.Path) -> None:
        """Raise CheckpointUnreadableError if ``path`` is surely broken."""
        if path.is_dir():
            if not sharded.has_parts(path):
                problem = FileNotFoundError(
                    f'a folder without {sharded.METADATA} or '
                    f'{sharded.STATE_FILE}'
                )
                raise CheckpointUnreadableError(path, problem)
            path = path / sharded.STATE_FILE
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:  # cut short, or torch's old format
            self.read(path)
            return
        except OSError as err:
            raise CheckpointUnreadableError(path, err) from err
        if not any(n.endswith('/data.pkl') for n in names):
            problem = ValueError('a zip file without a torch data.pkl')
            raise CheckpointUnreadableError(path, problem)
