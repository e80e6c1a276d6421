"""Fixtures of the distributed tests: a clean environment, free ports."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import pytest

from drytorch.distributed import teardown_distributed

# Every variable a launcher may set, so that a test running inside a real
# SLURM job or under torchrun sees only what it sets itself.
LAUNCHER_PREFIXES = ('SLURM_', 'SLURMD_', 'OMPI_', 'PMI_', 'PMIX_', 'MPI_')
LAUNCHER_NAMES = (
    'RANK',
    'LOCAL_RANK',
    'WORLD_SIZE',
    'LOCAL_WORLD_SIZE',
    'GROUP_RANK',
    'MASTER_ADDR',
    'MASTER_PORT',
    'TORCHELASTIC_RUN_ID',
    'DRYTORCH_DIST_TIMEOUT',
)


def is_launcher_variable(name: str) -> bool:
    return name in LAUNCHER_NAMES or name.startswith(LAUNCHER_PREFIXES)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No launcher variable is set, and no process group is left over."""
    for name in list(os.environ):
        if is_launcher_variable(name):
            monkeypatch.delenv(name)
    teardown_distributed()
    yield
    teardown_distributed()


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function that finds a TCP port nothing listens on right now."""

    def find() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(('127.0.0.1', 0))
            return int(probe.getsockname()[1])

    return find
