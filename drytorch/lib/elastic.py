"""Training shards in global terms, so an epoch can change its world size.

An epoch's order is a permutation of (seed, epoch) and its samples are the
first ``epoch_samples`` of it: the tail that the world size the epoch
*started* with does not divide is dropped.  Global step ``k`` takes the
contiguous slice ``[k * G, (k + 1) * G)`` of that order, ``G`` the global
batch, and rank ``r`` of ``W`` takes every ``W``-th sample of the slice
from the ``r``-th on.  With the world size of the start this is the
round-robin deal of the permutation; after a resume with another world
size the slices stay the same, only their deal changes.  The position in
an epoch is therefore one global number, the sample cursor ``k * G``
(MosaicML's streaming data sets keep positions global for the same
reason), and a mid-epoch checkpoint continues with any number of ranks
that divides the global batch.

What a checkpoint holds per rank is folded here too: the partial metric
sums of the saved ranks become one global partial sum, carried by rank
zero, so that the packed all-reduce of the next sync point adds it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from drytorch.core import exceptions
from drytorch.distributed import ranks

__all__ = [
    'check_batch_sizes',
    'check_world_change',
    'merged_accumulator',
    'per_rank_batch',
    'saved_global_batch',
    'training_batches',
]


def check_batch_sizes(
    batch_size: int | None, global_batch_size: int | None
) -> None:
    """Exactly one batch size, a positive integer; checked when made.

    A global batch is checked against the process group when there is one
    already (else at the first pass, by :func:`per_rank_batch`).
    """
    if (batch_size is None) == (global_batch_size is None):
        raise ValueError(
            'Give the DataLoader one batch size: batch_size (per rank) or '
            'global_batch_size (over all ranks, split evenly), got '
            f'batch_size={batch_size!r} and '
            f'global_batch_size={global_batch_size!r}.'
        )
    for name, value in (
        ('batch_size', batch_size),
        ('global_batch_size', global_batch_size),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(
                f'{name} must be a positive integer, got {value!r}.'
            )
    per_rank_batch(batch_size, global_batch_size, ranks.get_world_size())


def per_rank_batch(
    batch_size: int | None, global_batch_size: int | None, world: int
) -> int:
    """Each of ``world`` ranks' batch: given, or its share of the global one.

    Raises:
        ValueError: ``global_batch_size`` does not divide by ``world``.

    """
    if batch_size is not None:
        return batch_size
    assert global_batch_size is not None
    if global_batch_size % world:
        raise ValueError(
            f'global_batch_size={global_batch_size} does not divide by the '
            f'{world} ranks of this job, so the ranks cannot take equal '
            f'batches. Give a multiple of {world}, or run a number of '
            f'processes that divides {global_batch_size}.'
        )
    return global_batch_size // world


def training_batches(
    order: torch.Tensor,
    epoch_samples: int,
    global_batch: int,
    rank: int,
    world: int,
    *,
    drop_last: bool,
) -> list[torch.Tensor]:
    """Rank ``rank``'s batches of an epoch (see the module docstring).

    Raises:
        ValueError: the epoch's last (incomplete) global batch has fewer
            samples than there are ranks, so a rank would train a step
            without samples (its DDP all-reduce would then wait forever).

    """
    batches = []
    for start in range(0, epoch_samples, global_batch):
        stop = min(start + global_batch, epoch_samples)
        if stop - start < global_batch and drop_last:
            break
        if stop - start < world:
            raise ValueError(
                f'The last batch of this epoch holds {stop - start} '
                f'samples (of {epoch_samples}, in global batches of '
                f'{global_batch}), fewer than the {world} ranks that '
                'resume it: a rank would have none. Resume with at most '
                f'{stop - start} ranks, or with the number of ranks that '
                'started the epoch.'
            )
        batches.append(order[start:stop][rank::world])
    return batches


def saved_global_batch(state: Mapping[str, Any]) -> int:
    """The global batch of the checkpoint ``state`` (a trainer's).

    Checkpoints that predate the global batch give it from their per-rank
    batch and world size.
    """
    loader = state['loader']
    saved = loader.get('global_batch_size')
    if saved is None:
        saved = int(loader['batch_size']) * int(state['world_size'])
    return int(saved)


def check_world_change(
    loader: Any, state: Mapping[str, Any], world: int
) -> None:
    """Refuse a mid-epoch resume that cannot keep the epoch's global batch.

    ``loader`` is the trainer's :class:`~drytorch.lib.loading.DataLoader`.

    Raises:
        WorldSizeChangedError: an iterable data set (positions per rank),
            a global batch that is not the saved one, one that the new
            number of ranks does not divide, or an epoch whose last batch
            has fewer samples than ranks; the message says what to do.

    """
    saved_world = int(state['world_size'])
    saved = saved_global_batch(state)
    if loader.is_stream:
        raise exceptions.WorldSizeChangedError(
            saved_world,
            world,
            why='the training data is an iterable data set, whose position '
            'is kept per rank; another number of ranks cannot take it over',
        )
    given = loader.global_batch_size
    if given is None:
        now = loader.per_rank_batch(world) * world
        if now != saved:
            raise exceptions.WorldSizeChangedError(
                saved_world,
                world,
                why=f'its global batch was {saved} samples and would be '
                f'{now} here (batch_size={loader.per_rank_batch(world)} per '
                f'rank x {world})',
                remedy=_keep_global(saved, world),
            )
        return
    if given != saved:
        raise exceptions.WorldSizeChangedError(
            saved_world,
            world,
            why=f'its global batch was {saved} samples and this '
            f"DataLoader's global_batch_size is {given}",
            remedy=f'make the DataLoader with global_batch_size={saved}',
        )
    if saved % world:
        raise exceptions.WorldSizeChangedError(
            saved_world,
            world,
            why=f'its global batch of {saved} samples does not divide into '
            f'{world} ranks',
            remedy=f'run a number of processes that divides {saved}',
        )
    start = state['loader'].get('epoch_start')
    started = saved_world if start is None else int(start[1])
    last = len(loader) // started * started % saved
    if not loader.drop_last and 0 < last < world:
        raise exceptions.WorldSizeChangedError(
            saved_world,
            world,
            why=f"the epoch's last batch holds {last} samples, fewer than "
            f'the {world} ranks, so a rank would have none',
            remedy=f'run at most {last} processes',
        )


def _keep_global(saved: int, world: int) -> str:
    """What to pass the DataLoader to keep a global batch of ``saved``."""
    if saved % world:
        return (
            f'make the training DataLoader with global_batch_size={saved} '
            f'and run a number of processes that divides {saved}'
        )
    return (
        f'make the training DataLoader with global_batch_size={saved} '
        f'(each of the {world} ranks then takes {saved // world})'
    )


def merged_accumulator(
    per_rank: Sequence[Mapping[str, Any]], rank: int
) -> dict[str, Any]:
    """The partial metric sums rank ``rank`` continues the epoch with.

    Rank zero carries the sums and sample counts of every saved rank;
    the others start from zero, so the global sums are unchanged.
    """
    states = [saved['accumulator'] for saved in per_rank]
    names = states[0]['names']
    sums = [0.0] * len(names)
    count = 0
    if rank == 0:
        for state in states:
            sums = [
                a + float(b) for a, b in zip(sums, state['sums'], strict=True)
            ]
            count += int(state['count'])
    return {'names': names, 'sums': sums, 'count': count}
