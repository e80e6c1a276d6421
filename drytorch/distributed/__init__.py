"""Everything that knows there is more than one process.

Importing this package is cheap: it imports torch.distributed but no
launcher-specific module (mpi4py in particular is imported only when an MPI
job first needs rank zero's address).
"""

from drytorch.distributed.environment import (
    ClusterEnvironment,
    detect_environment,
)
from drytorch.distributed.errors import DistributedSetupError
from drytorch.distributed.process_group import (
    init_distributed,
    teardown_distributed,
)
from drytorch.distributed.ranks import (
    barrier,
    broadcast_object,
    ensure_process_group,
    get_local_rank,
    get_rank,
    get_world_size,
    is_distributed,
    is_rank_zero,
)

__all__ = [
    'ClusterEnvironment',
    'DistributedSetupError',
    'barrier',
    'broadcast_object',
    'detect_environment',
    'ensure_process_group',
    'get_local_rank',
    'get_rank',
    'get_world_size',
    'init_distributed',
    'is_distributed',
    'is_rank_zero',
    'teardown_distributed',
]
