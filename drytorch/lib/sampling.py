"""A few samples of a data set as one batch (DRYTorch's take_from_dataset).

For a look at the data or the model outside the training loops.  A random
draw uses a generator of its own, seeded by ``seed``: it never consumes the
global torch generator, so taking samples before a training leaves the
training's random streams (dropout, initialisation) as they were, and the
same call returns the same samples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import data

__all__ = ['take_from_dataset']


def take_from_dataset(
    dataset: data.Dataset[Any],
    n_samples: int = 1,
    preserve_order: bool = True,
    device: torch.device | str = 'cpu',
    *,
    seed: int = 0,
) -> Any:
    """The first ``n_samples`` samples (or random ones) as a batch.

    Args:
        dataset: a map-style data set.
        n_samples: how many samples (at most the data set's length).
        preserve_order: the first samples; otherwise a random draw.
        device: where the batch goes.
        seed: the seed of the random draw.

    Raises:
        ValueError: if ``n_samples`` is not in ``[1, len(dataset)]``.

    """
    from drytorch.lib.runners import to_device

    size = len(dataset)  # type: ignore[arg-type]
    if isinstance(n_samples, bool) or not isinstance(n_samples, int):
        raise TypeError(f'n_samples must be an int; got {n_samples!r}.')
    if not 1 <= n_samples <= size:
        raise ValueError(
            f'n_samples must be between 1 and the data set size {size}; '
            f'got {n_samples}.'
        )
    if preserve_order:
        indices = list(range(n_samples))
    else:
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(size, generator=generator)[:n_samples]
        indices = indices.tolist()
    batch = data.default_collate([dataset[i] for i in indices])
    return to_device(batch, torch.device(device))
