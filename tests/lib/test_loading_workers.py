"""Worker pools of DataLoader: persistent workers, prefetching, pinning.

Real worker processes.  A data set that draws a random number per sample
and records the process that loaded it shows that a persistent pool is
one set of processes for every pass (epochs and evaluations) and loads
the same batches as a pool per pass and as this process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import drytorch


class Drawing(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Sample i is (i, a random draw, the loading process's id)."""

    def __len__(self) -> int:
        return 30

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        draw = torch.rand(1)
        inputs = torch.tensor([float(index), float(draw)])
        return inputs, torch.tensor(os.getpid())


@pytest.fixture
def loaders() -> Iterator[dict[str, drytorch.DataLoader]]:
    made = {
        'main': drytorch.DataLoader(Drawing(), 4, seed=3),
        'per_pass': drytorch.DataLoader(Drawing(), 4, seed=3, num_workers=2),
        'persistent': drytorch.DataLoader(
            Drawing(),
            4,
            seed=3,
            num_workers=2,
            persistent_workers=True,
            prefetch_factor=3,
        ),
    }
    yield made
    for loader in made.values():
        loader.close()


def _passes(
    loader: drytorch.DataLoader,
) -> tuple[list[torch.Tensor], list[set[int]]]:
    """Two epochs, an evaluation and a resumed epoch: inputs and pids."""
    inputs, pids = [], []
    plans = [
        (loader.plan(training=True, epoch=1), 0),
        (loader.plan(training=False), 0),
        (loader.plan(training=True, epoch=2), 0),
        (loader.plan(training=True, epoch=2), 5),  # a resume at batch 5
    ]
    for plan, start in plans:
        batches = list(loader.iterate(plan, start))
        inputs.append(torch.cat([b[0] for b, _ in batches]))
        pids.append({int(p) for b, _ in batches for p in b[1]})
    return inputs, pids


def test_a_persistent_pool_loads_the_same_batches(
    loaders: dict[str, drytorch.DataLoader],
) -> None:
    seen = {name: _passes(loader) for name, loader in loaders.items()}
    for name in ('per_pass', 'persistent'):
        for mine, reference in zip(
            seen[name][0], seen['main'][0], strict=True
        ):
            assert torch.equal(mine, reference), name


def test_a_persistent_pool_is_one_set_of_processes(
    loaders: dict[str, drytorch.DataLoader],
) -> None:
    _, pids = _passes(loaders['persistent'])
    assert len(set().union(*pids)) == 2  # the same two workers throughout
    assert os.getpid() not in set().union(*pids)
    pool = loaders['persistent']._pool
    assert pool is not None and pool.started == 1
    _, per_pass = _passes(loaders['per_pass'])
    assert len(set().union(*per_pass)) == 2 * 4  # new workers every pass


def test_close_stops_the_workers(
    loaders: dict[str, drytorch.DataLoader],
) -> None:
    loader = loaders['persistent']
    _, pids = _passes(loader)
    loader.close()
    for pid in set().union(*pids):
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: no such child any more


def test_a_copy_leaves_the_pool_behind(
    loaders: dict[str, drytorch.DataLoader],
) -> None:
    import copy

    loader = loaders['persistent']
    _passes(loader)
    twin = copy.deepcopy(loader)
    assert twin._pool is None and loader._pool is not None


@pytest.mark.parametrize(
    ('options', 'error', 'match'),
    [
        (
            {'persistent_workers': True},
            ValueError,
            'persistent_workers=True applies to worker processes, and '
            'num_workers=0',
        ),
        (
            {'prefetch_factor': 4},
            ValueError,
            'prefetch_factor=4 applies to worker processes',
        ),
        (
            {'num_workers': 2, 'prefetch_factor': 0},
            ValueError,
            'prefetch_factor must be a positive integer',
        ),
        ({'num_workers': -1}, ValueError, 'num_workers must be a whole'),
        (
            {'num_workers': 1, 'persistent_workers': 'yes'},
            TypeError,
            'persistent_workers must be True or False',
        ),
    ],
)
def test_bad_worker_options_are_refused(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        drytorch.DataLoader(Drawing(), 4, **options)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_pin_memory_pins_in_this_process_too() -> None:
    loader = drytorch.DataLoader(Drawing(), 4, pin_memory=True)
    plan = loader.plan(training=True, epoch=1)
    (batch, _), *_ = loader.iterate(plan)
    assert batch[0].is_pinned()


def test_pin_memory_without_a_gpu_changes_nothing() -> None:
    pinned = drytorch.DataLoader(Drawing(), 4, pin_memory=True, seed=1)
    plain = drytorch.DataLoader(Drawing(), 4, seed=1)
    plan = pinned.plan(training=True, epoch=1)
    for (a, _), (b, _) in zip(
        pinned.iterate(plan), plain.iterate(plan), strict=True
    ):
        assert torch.equal(a[0], b[0])
        assert a[0].is_pinned() == torch.cuda.is_available()
