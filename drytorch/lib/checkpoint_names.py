"""What checkpoints are called, where a store keeps them, and their errors.

Shared by the store (:mod:`drytorch.lib.checkpoints`) and its collective
side (:mod:`drytorch.lib.checkpoint_parts`): a checkpoint's name is its
position, ``epoch_000002.pt`` after two epochs (``epoch_000002+000010.pt``
ten batches into the third), ``.dcp`` instead of ``.pt`` for a folder of
parts.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

from drytorch.core import exceptions

__all__ = [
    'FILE_SUFFIX',
    'LATEST',
    'CheckpointInfo',
    'CheckpointUnreadableError',
    'file_name',
]

LATEST = 'latest'

_NAME = re.compile(r'^epoch_(\d{6,})(?:\+(\d{6,}))?(\.pt|\.dcp)$')
FILE_SUFFIX = '.pt'


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


def file_name(epoch: int, batch: int = 0, suffix: str = FILE_SUFFIX) -> str:
    """The name of the checkpoint after ``epoch`` epochs and ``batch`` more.

    ``suffix`` is ``.pt`` for a file, ``.dcp`` for a folder of parts.
    """
    stem = (
        f'epoch_{epoch:06d}' if not batch else f'epoch_{epoch:06d}+{batch:06d}'
    )
    return stem + suffix
