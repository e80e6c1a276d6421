"""Keeping a folder of checkpoints tidy: retention and leftovers.

:class:`~drytorch.lib.checkpoints.LocalCheckpoint` writes, finds and reads
checkpoints; this module decides which of them to delete afterwards, and
removes what writes that were killed left behind.  Both only ever delete,
on the one process that writes (rank zero), and hold no collectives.

Retention runs after each save and never removes the file ``latest`` names
nor the newest by position, so both the pointer and the scan always find
something.  The scores that rank the best checkpoints live in
``scores.json`` beside them, so that a restarted process ranks the same
files the same way; when that file cannot be read, retention by score
removes nothing rather than guess.  Mid-epoch checkpoints exist only to
resume a preempted epoch; a newer one makes them useless, and they go.

Every write goes to a temporary name (:func:`temporary_path`) and is then
renamed, so a write that was killed leaves such a file.
:func:`clean_leftovers` removes one when the process named in it is gone,
or when it has not changed for an hour, since a process id can be reused
after a restart.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from drytorch.core import exceptions
from drytorch.core.registry import atomic_write_text

if TYPE_CHECKING:  # checkpoints imports this module
    from drytorch.lib.checkpoints import CheckpointInfo

__all__ = [
    'SCORES',
    'STALE_AFTER_S',
    'apply_retention',
    'as_score',
    'check_retention',
    'clean_leftovers',
    'read_scores',
    'temporary_path',
    'write_scores',
]

SCORES = 'scores.json'
STALE_AFTER_S = 3600.0
"""Age after which a temporary file is a leftover, whoever named it."""

# ``.{target}.{pid}.tmp``: the names of temporary_path and atomic_write_text
_TMP = re.compile(r'^\.(?P<target>.+)\.(?P<pid>\d+)\.tmp$')


def _warn(message: str, stacklevel: int = 3) -> None:
    warnings.warn(exceptions.DryTorchWarning(message), stacklevel=stacklevel)


def _count(name: str, value: object, *, none: str | None = None) -> None:
    if value is None and none is not None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        allowed = f'None ({none}) or ' if none else ''
        raise ValueError(
            f'{name} must be {allowed}a whole number 0 or more, got {value!r}.'
        )


def check_retention(
    keep_last: object, keep_best: object, best_is: object
) -> None:
    """Raise ValueError, quoting it, if an option of retention is wrong."""
    _count('keep_last', keep_last, none='keep every checkpoint')
    _count('keep_best', keep_best)
    if best_is not in ('lower', 'higher'):
        raise ValueError(
            "best_is must be 'lower' (for a loss) or 'higher' (for an "
            f'accuracy), got {best_is!r}.'
        )


def as_score(score: float | None) -> float | None:
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


def read_scores(
    folder: pathlib.Path, keep_best: int
) -> dict[str, float] | None:
    """The scores recorded in ``folder``; None (with a warning) if unreadable.

    ``keep_best`` only chooses the warning's words: with it, no checkpoint
    is removed while the file is unreadable.
    """
    path = folder / SCORES
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
        'no checkpoint is removed' if keep_best else 'no score is recorded'
    )
    _warn(
        f'{path} cannot be read; {consequence} until it is fixed or '
        'deleted (deleting it forgets the scores of earlier checkpoints).'
    )
    return None


def write_scores(folder: pathlib.Path, scores: dict[str, float]) -> None:
    """Record ``scores`` atomically (no file is created for none)."""
    path = folder / SCORES
    if not scores and not path.exists():
        return
    text = json.dumps({'scores': dict(sorted(scores.items()))}, indent=1)
    atomic_write_text(path, text + '\n')


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


def apply_retention(
    folder: pathlib.Path,
    found: list[CheckpointInfo],
    latest: str,
    scores: dict[str, float] | None,
    *,
    keep_last: int | None,
    keep_best: int,
    best_is: str,
) -> None:
    """Delete the checkpoints of ``found`` (oldest first) not to keep.

    ``latest`` is the name the pointer holds; ``scores`` None means they
    could not be read.  The scores of deleted files are forgotten.
    """
    if scores is None and keep_best:
        return  # which ones are the best is unknown: remove nothing
    keep = _retained(
        found, scores or {}, latest, keep_last, keep_best, best_is
    )
    remaining = set(keep)
    for info in found:
        if info.path.name in keep:
            continue
        try:
            _delete(info.path)
        except OSError as err:
            remaining.add(info.path.name)
            _warn(f'Old checkpoint {info.path} cannot be removed ({err}).')
    if scores is not None and not scores.keys() <= remaining:
        write_scores(
            folder, {k: v for k, v in scores.items() if k in remaining}
        )


def _delete(path: pathlib.Path) -> None:
    """Delete a file, or a folder of parts with what it holds."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def temporary_path(
    final: pathlib.Path, pid: int | None = None
) -> pathlib.Path:
    """Where ``final`` is written before it is renamed.

    Named after the writing process (this one, or ``pid``: rank zero's,
    for a folder that every rank writes into).
    """
    return final.with_name(f'.{final.name}.{pid or os.getpid()}.tmp')


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


def clean_leftovers(
    folder: pathlib.Path,
    ours: Callable[[str], bool],
    *,
    older_than: float = STALE_AFTER_S,
    keep: frozenset[str] = frozenset(),
) -> list[pathlib.Path]:
    """Remove the temporary files of writes to ``folder`` that were killed.

    Only temporary files whose final name satisfies ``ours`` are touched,
    and never those named in ``keep`` (a write of this process in flight);
    see :meth:`~drytorch.lib.checkpoints.LocalCheckpoint.clean_leftovers`.

    Returns:
        The files removed, sorted.

    """
    if not older_than >= 0:
        raise ValueError(
            'older_than must be a number of seconds 0 or more, got '
            f'{older_than!r}.'
        )
    if not folder.exists():
        return []
    removed = []
    now = time.time()
    for path in folder.iterdir():
        match = _TMP.match(path.name)
        if match is None or not ours(match['target']) or path.name in keep:
            continue
        try:
            age = now - path.stat().st_mtime
            if age > older_than or _writer_gone(int(match['pid'])):
                _delete(path)
                removed.append(path)
        except FileNotFoundError:  # its writer has just renamed it
            continue
        except OSError as err:  # warn where LocalCheckpoint was called
            _warn(f'Leftover {path} cannot be removed ({err}).', stacklevel=4)
    return sorted(removed)
