"""torchrun, and anything that follows its ``env://`` contract.

torchrun exports every answer as a plain variable, so this variant is almost
only its table.  The same variables are exported by hand-written launchers
and by submitit's ``TorchDistributedEnvironment.export()``; those omit
``GROUP_RANK``, which is therefore derived rather than required.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from drytorch.distributed.environment import ClusterEnvironment

__all__ = ['TorchrunEnvironment']


class TorchrunEnvironment(ClusterEnvironment):
    """Processes started by torchrun (``torch.distributed.run``)."""

    markers: ClassVar[tuple[str, ...]] = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')
    variables: ClassVar[Mapping[str, tuple[str, ...]]] = {
        'rank': ('RANK',),
        'world_size': ('WORLD_SIZE',),
        'local_rank': ('LOCAL_RANK',),
        'node_rank': ('GROUP_RANK',),
        'local_world_size': ('LOCAL_WORLD_SIZE',),
    }
    context: ClassVar[tuple[str, ...]] = ('TORCHELASTIC_RUN_ID',)
    hint: ClassVar[str] = (
        'that every node runs torchrun with the same --nnodes and '
        '--nproc-per-node, or that a hand-written launcher exports RANK, '
        'LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and '
        'MASTER_PORT to every process'
    )

    @property
    def run_id(self) -> str | None:
        """Torchrun's id of this run, stable across elastic restarts."""
        return self._get('TORCHELASTIC_RUN_ID')

    def _derive(self, field: str, values: Mapping[str, int]) -> int:
        if field == 'node_rank':
            if 'local_world_size' not in values:
                return super()._derive('local_world_size', values)
            # torchrun fills nodes in blocks of LOCAL_WORLD_SIZE ranks.
            return values['rank'] // values['local_world_size']
        return super()._derive(field, values)

    def _find_master(self) -> tuple[str, int]:
        addr = self._get('MASTER_ADDR')
        port = self._port('MASTER_PORT')
        if addr is None or port is None:
            raise self.setup_error(
                'MASTER_ADDR and MASTER_PORT must both be set',
                self.hint,
            )
        return addr, port
