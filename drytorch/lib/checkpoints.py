"""Checkpoints that are never half written, and a folder that stays tidy.

A checkpoint is written to a temporary name in the same folder, flushed to
disk and renamed; only then does the ``latest`` pointer move.  A process
killed at any moment therefore leaves either the old set of complete files
or the new one, plus at most a temporary file under a name no loader reads.

``latest`` is the authority on what to resume from, because it is written
only after a save succeeded and says which save came last.  File names
cannot say that: after ``load_checkpoint(1)`` and more training, the new
``epoch_000002.pt`` is the present, and an ``epoch_000005.pt`` of the
abandoned future only looks newer.  The scan by (epoch, batch) position,
parsed from the names, is the fallback when the pointer is missing, names
no file, or names one that cannot be read; positions after the pointer's
are tried last, since they are not part of the history the last save
continued (they exist only from such a rewind or from a copy by hand).

Retention runs after each save, on the one process that writes (rank
zero), and never removes the file ``latest`` names nor the newest by
position, so both the pointer and the scan always find something.  The
scores that rank the best checkpoints live in ``scores.json`` beside them,
so that a restarted process ranks the same files the same way.  Mid-epoch
checkpoints exist only to resume a preempted epoch; a newer one makes them
useless, and they go.

Temporary files of writes that were killed are removed by
:meth:`LocalCheckpoint.clean_leftovers` (also run at an instance's first
save): a file goes when the process named in it is gone, or when it has
not changed for an hour, since a process id can be reused after a restart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import time
import warnings
import zipfile
from typing import Any, Literal

import torch

from drytorch.core import exceptions
from drytorch.core.experimenting import Experiment
from drytorch.core.registry import atomic_write_text

__all__ = ['CheckpointInfo', 'CheckpointUnreadableError', 'LocalCheckpoint']

LATEST = 'latest'
SCORES = 'scores.json'
STALE_AFTER_S = 3600.0
"""Age after which a temporary file is a leftover, whoever named it."""

_NAME = re.compile(r'^epoch_(\d{6,})(?:\+(\d{6,}))?\.pt$')
# ``.{target}.{pid}.tmp``: the names of save() and of atomic_write_text
_TMP = re.compile(r'^\.(?P<target>.+)\.(?P<pid>\d+)\.tmp$')


@dataclasses.dataclass(frozen=True, order=True)
class CheckpointInfo:
    """A checkpoint's place: ``epoch`` done, ``batch`` into the next."""

    epoch: int
    batch: int
    path: pathlib.Path = dataclasses.field(compare=False)

    @property
    def mid_epoch(self) -> bool:
        """Whether the checkpoint was taken inside an epoch."""
        return self.batch > 0


class CheckpointUnreadableError(exceptions.DryTorchError):
    """Raised when a named checkpoint file cannot be read.

    Not a :class:`~drytorch.core.exceptions.CheckpointNotFoundError`: the
    file was chosen (by the caller, or by rank zero for every rank), so a
    failure is a fault to report, not a reason to start from scratch.
    """

    def __init__(self, path: pathlib.Path, cause: BaseException) -> None:
        self.path = path
        self.cause = f'{cause.__class__.__name__}: {cause}'
        super().__init__(
            f'Checkpoint {path} cannot be read ({self.cause}). If another '
            'process chose it, check that the folder is shared and that '
            'nothing removed or rewrote the file; `load(-1)` falls back '
            'to an older checkpoint instead.'
        )


def file_name(epoch: int, batch: int = 0) -> str:
    """The name of the checkpoint after ``epoch`` epochs and ``batch`` more."""
    return (
        f'epoch_{epoch:06d}.pt'
        if not batch
        else (f'epoch_{epoch:06d}+{batch:06d}.pt')
    )


def _fsync_dir(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _warn(message: str) -> None:
    warnings.warn(exceptions.DryTorchWarning(message), stacklevel=3)


def _count(name: str, value: object, *, none: str | None = None) -> None:
    if value is None and none is not None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        allowed = f'None ({none}) or ' if none else ''
        raise ValueError(
            f'{name} must be {allowed}a whole number 0 or more, got {value!r}.'
        )


def _as_score(score: float | None) -> float | None:
    """The finite value of ``score``, None when it cannot rank anything."""
    if score is None:
        return None
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise TypeError(
            'score must be a number (the value of the monitored metric) '
            f'or None, got {score!r}.'
        ) from None
    return value if math.isfinite(value) else None


def _writer_gone(pid: int) -> bool:
    """Whether the process that named a temporary file cannot still write.

    This process counts as gone: its saves return only when written, so
    a file with its own id is from an earlier process that had the same
    id (common in containers).  Windows has no harmless signal 0, so there
    only the age of a file counts.
    """
    if pid <= 0 or pid == os.getpid():
        return True
    if os.name == 'nt':
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none, or none can be
        return True
    except OSError:  # PermissionError: alive, someone else's
        return False
    return False


def _ours(name: str) -> bool:
    """Whether this class writes files named ``name``."""
    return bool(_NAME.match(name)) or name in (LATEST, SCORES)


def _retained(
    found: list[CheckpointInfo],
    scores: dict[str, float],
    latest: str,
    keep_last: int | None,
    keep_best: int,
    best_is: str,
) -> set[str]:
    """The names that retention keeps of ``found`` (oldest first)."""
    if not found:
        return set()
    keep = {latest, found[-1].path.name}
    ends = [c for c in found if not c.mid_epoch]
    recent = ends
    if keep_last is not None:
        recent = ends[max(len(ends) - keep_last, 0) :]
    keep.update(c.path.name for c in recent)
    sign = 1.0 if best_is == 'lower' else -1.0
    scored = [c for c in ends if c.path.name in scores]
    # on equal scores the later checkpoint wins: it trained longer
    scored.sort(key=lambda c: (sign * scores[c.path.name], -c.epoch))
    keep.update(c.path.name for c in scored[:keep_best])
    return keep


class LocalCheckpoint:
    """Checkpoints of one model in a local (or shared) folder.

    Call :meth:`save` and :meth:`clean_leftovers` on rank zero only: they
    write and delete files and hold no collectives.  Only one process may
    write to a folder at a time.

    Args:
        par_dir: the folder; by default ``checkpoints`` in the run's folder,
            so that a resumed run finds its own checkpoints.
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
    ) -> None:
        _count('keep_last', keep_last, none='keep every checkpoint')
        _count('keep_best', keep_best)
        if best_is not in ('lower', 'higher'):
            raise ValueError(
                "best_is must be 'lower' (for a loss) or 'higher' (for an "
                f'accuracy), got {best_is!r}.'
            )
        if monitor is not None and (
            not isinstance(monitor, str) or not monitor
        ):
            raise ValueError(
                'monitor must be the name of a metric, or None for the '
                f'loss, got {monitor!r}.'
            )
        self._par_dir = pathlib.Path(par_dir) if par_dir else None
        self.model_name = ''
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.best_is = best_is
        self.monitor = monitor
        self._cleaned: pathlib.Path | None = None

    def bind(self, model_name: str) -> None:
        """Attach to a model (its name is the sub-folder)."""
        self.model_name = model_name

    @property
    def directory(self) -> pathlib.Path:
        """The folder of this model's checkpoints."""
        base = self._par_dir
        if base is None:
            base = Experiment.get_current().run.dir / 'checkpoints'
        return base / self.model_name

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
        value = _as_score(score)
        if batch:
            value = None
        folder = self.directory
        folder.mkdir(parents=True, exist_ok=True)
        if self._cleaned != folder:
            self.clean_leftovers()
        final = folder / file_name(epoch, batch)
        scores = self._read_scores()
        if scores is not None and scores.pop(final.name, None) is not None:
            self._write_scores(scores)  # the old score must not outlive it
        tmp = folder / f'.{final.name}.{os.getpid()}.tmp'
        with tmp.open('wb') as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, final)
        _fsync_dir(folder)
        if scores is not None and value is not None:
            scores[final.name] = value
            self._write_scores(scores)
        atomic_write_text(folder / LATEST, final.name + '\n')
        self._apply_retention(final.name, scores)
        return str(final)

    def available(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest position first."""
        folder = self.directory
        if not folder.exists():
            return []
        found = []
        for path in folder.iterdir():
            match = _NAME.match(path.name)
            if match:
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
        self, *, older_than: float = STALE_AFTER_S
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
        if not older_than >= 0:
            raise ValueError(
                'older_than must be a number of seconds 0 or more, got '
                f'{older_than!r}.'
            )
        folder = self.directory
        self._cleaned = folder
        if not folder.exists():
            return []
        removed = []
        now = time.time()
        for path in folder.iterdir():
            match = _TMP.match(path.name)
            if match is None or not _ours(match['target']):
                continue
            try:
                age = now - path.stat().st_mtime
                if age > older_than or _writer_gone(int(match['pid'])):
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # its writer has just renamed it
                continue
            except OSError as err:
                _warn(f'Leftover {path} cannot be removed ({err}).')
        return sorted(removed)

    def _candidates(self, epoch: int, mid_epoch: bool) -> list[CheckpointInfo]:
        """What to try for ``epoch``, the preferred first."""
        found = self.available()
        if epoch >= 0:
            return [c for c in found if c.epoch == epoch and not c.mid_epoch]
        pointer = self._pointer(found)
        order = [c for c in reversed(found) if mid_epoch or not c.mid_epoch]
        if pointer is not None:  # stable: each group stays newest first
            order.sort(key=lambda c: c > pointer)
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

    def _read_scores(self) -> dict[str, float] | None:
        """The recorded scores; None (with a warning) if unreadable."""
        path = self.directory / SCORES
        try:
            data = json.loads(path.read_text(encoding='utf-8'))
            scores = data['scores']
            return {
                str(name): float(value)
                for name, value in scores.items()
                if math.isfinite(float(value))
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass
        consequence = (
            'no checkpoint is removed'
            if self.keep_best
            else 'no score is recorded'
        )
        _warn(
            f'{path} cannot be read; {consequence} until it is fixed or '
            'deleted (deleting it forgets the scores of earlier checkpoints).'
        )
        return None

    def _write_scores(self, scores: dict[str, float]) -> None:
        path = self.directory / SCORES
        if not scores and not path.exists():
            return
        text = json.dumps({'scores': dict(sorted(scores.items()))}, indent=1)
        atomic_write_text(path, text + '\n')

    def _apply_retention(
        self, latest: str, scores: dict[str, float] | None
    ) -> None:
        if scores is None and self.keep_best:
            return  # which ones are the best is unknown: remove nothing
        found = self.available()
        keep = _retained(
            found,
            scores or {},
            latest,
            self.keep_last,
            self.keep_best,
            self.best_is,
        )
        remaining = set(keep)
        for info in found:
            if info.path.name in keep:
                continue
            try:
                info.path.unlink(missing_ok=True)
            except OSError as err:
                remaining.add(info.path.name)
                _warn(f'Old checkpoint {info.path} cannot be removed ({err}).')
        if scores is not None and not scores.keys() <= remaining:
            self._write_scores(
                {k: v for k, v in scores.items() if k in remaining}
            )
