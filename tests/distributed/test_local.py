"""A process started by hand."""

from __future__ import annotations

from drytorch.distributed.local import LocalEnvironment


def test_one_process_whatever_is_set() -> None:
    # Stray variables (a RANK left in the shell) do not make it a rank.
    env = LocalEnvironment({'RANK': '3', 'SLURM_NTASKS': '4'})
    assert env.name == 'local'
    assert (env.rank, env.world_size, env.local_rank) == (0, 1, 0)
    assert (env.local_world_size, env.node_rank) == (1, 0)
    assert env.master_addr == '127.0.0.1'
    assert env.variables_read() == {}
    assert LocalEnvironment.detected({})
