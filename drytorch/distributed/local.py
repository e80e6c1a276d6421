"""One process started by hand: what remains when no launcher is found.

It reads nothing, so that stray variables (a ``RANK`` left in the shell, a
batch shell's ``SLURM_NTASKS``) cannot turn a single process into rank 0 of
a world that will never assemble.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from drytorch.distributed.environment import (
    DEFAULT_MASTER_PORT,
    ClusterEnvironment,
)

__all__ = ['LocalEnvironment']


class LocalEnvironment(ClusterEnvironment):
    """A single process: rank 0 of a world of 1."""

    hint: ClassVar[str] = 'nothing: a single process needs no set-up'

    @classmethod
    def detected(cls, environ: Mapping[str, str] | None = None) -> bool:
        """Always: the fallback at the end of the detection order."""
        return True

    def _derive(self, field: str, values: Mapping[str, int]) -> int:
        return 1 if field.endswith('world_size') else 0

    def _find_master(self) -> tuple[str, int]:
        # Never used to rendezvous: a world of one starts no group.
        return '127.0.0.1', DEFAULT_MASTER_PORT
