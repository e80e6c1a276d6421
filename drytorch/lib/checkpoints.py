"""Checkpoints that are never half written, found by epoch, not by time.

A checkpoint is written to a temporary name in the same folder, flushed to
disk and renamed; only then does the ``latest`` pointer move.  A process
killed at any moment therefore leaves either the old set of complete files
or the new one.  Loading picks the newest checkpoint by its (epoch, batch)
position, parsed from the name, and falls back to the one before when a
file cannot be read.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import warnings
from typing import Any

import torch

from drytorch.core import exceptions
from drytorch.core.experimenting import Experiment
from drytorch.core.registry import atomic_write_text

__all__ = ['CheckpointInfo', 'LocalCheckpoint']

_NAME = re.compile(r'^epoch_(\d{6,})(?:\+(\d{6,}))?\.pt$')


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


class LocalCheckpoint:
    """Checkpoints of one model in a local (or shared) folder.

    Args:
        par_dir: the folder; by default ``checkpoints`` in the run's folder,
            so that a resumed run finds its own checkpoints.

    """

    def __init__(self, par_dir: str | pathlib.Path | None = None) -> None:
        self._par_dir = pathlib.Path(par_dir) if par_dir else None
        self.model_name = ''

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

    def save(self, state: dict[str, Any], epoch: int, batch: int = 0) -> str:
        """Write ``state`` atomically; call on rank zero only."""
        folder = self.directory
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / file_name(epoch, batch)
        tmp = folder / f'.{final.name}.{os.getpid()}.tmp'
        with tmp.open('wb') as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, final)
        _fsync_dir(folder)
        atomic_write_text(folder / 'latest', final.name + '\n')
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
        """The checkpoint of ``epoch`` (-1: the newest one)."""
        candidates = self.available()
        if not mid_epoch:
            candidates = [c for c in candidates if not c.mid_epoch]
        if epoch >= 0:
            candidates = [
                c for c in candidates if c.epoch == epoch and not c.mid_epoch
            ]
        if not candidates:
            raise exceptions.CheckpointNotFoundError(self.directory, epoch)
        return candidates[-1]

    def load(
        self,
        epoch: int = -1,
        mid_epoch: bool = True,
        map_location: str | torch.device = 'cpu',
    ) -> tuple[dict[str, Any], CheckpointInfo]:
        """Read the newest usable checkpoint matching ``epoch``.

        A file that cannot be read (a disk that lost it, a copy cut short)
        is skipped with a warning in favour of the one before it.
        """
        candidates = self.available()
        if not mid_epoch:
            candidates = [c for c in candidates if not c.mid_epoch]
        if epoch >= 0:
            candidates = [
                c for c in candidates if c.epoch == epoch and not c.mid_epoch
            ]
        for info in reversed(candidates):
            try:
                state = torch.load(
                    info.path, map_location=map_location, weights_only=False
                )
            except Exception as err:  # noqa: BLE001 - any unreadable file
                warnings.warn(
                    exceptions.DryTorchWarning(
                        f'Checkpoint {info.path} cannot be read ({err}); '
                        'using the one before it.'
                    ),
                    stacklevel=2,
                )
                continue
            return state, info
        raise exceptions.CheckpointNotFoundError(self.directory, epoch)
