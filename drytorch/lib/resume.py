"""What a trainer saves to continue exactly: its position and random streams.

The position says where in the script's training calls the state was taken,
so that a resumed script skips what an earlier attempt finished and
completes what it did not.  The random streams are every rank's own; a
resume with more ranks than the checkpoint knows derives the new ranks'
streams from the saved ones, so no two ranks ever draw the same numbers
(dropout masks that repeat across ranks would bias the gradient).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any

import numpy as np
import torch

__all__ = ['Position', 'restore_rng', 'rng_state', 'stream_for_rank']


@dataclasses.dataclass
class Position:
    """Where a restored trainer continues inside the epoch loop.

    ``phase`` is 'train' (``batch`` batches of epoch ``epoch + 1`` done),
    'validate' (epoch ``epoch`` trained, validation and hooks pending) or
    'done' (epoch ``epoch`` complete, hooks included).  ``call`` is the
    1-based index of the script's ``train``/``train_until`` call that was
    running and ``end_epoch`` its target; ``finished`` is set on the
    checkpoint written when that call returned; ``calls`` lists the
    script's calls so far as (method, argument).
    """

    epoch: int
    batch: int
    phase: str
    call: int | None = None
    end_epoch: int | None = None
    finished: bool = False
    calls: list[Any] = dataclasses.field(default_factory=list)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random streams (Python, NumPy, torch, CUDA)."""
    state: dict[str, Any] = {
        'python': random.getstate(),
        'numpy': np.random.get_state(),
        'torch': torch.get_rng_state(),
    }
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Put the streams of :func:`rng_state` back."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    # generators take their state as a CPU tensor; a checkpoint loaded with
    # map_location on a GPU brings it there
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and device.type == 'cuda':
        torch.cuda.set_rng_state(state['cuda'].cpu(), device)


def stream_for_rank(
    per_rank: list[dict[str, Any]], rank: int, device: torch.device
) -> None:
    """Restore ``rank``'s streams, deriving new ones for unknown ranks.

    A rank the checkpoint has a state for gets it back.  A rank beyond them
    (the job grew) seeds every generator from a hash of the saved state of
    rank ``rank % len(per_rank)`` and of its own rank: deterministic (the
    same resume twice draws the same numbers) and distinct from every
    saved stream and from every other new rank's.
    """
    if rank < len(per_rank):
        restore_rng(per_rank[rank]['rng'], device)
        return
    base = per_rank[rank % len(per_rank)]['rng']
    digest = hashlib.sha256()
    digest.update(base['torch'].cpu().numpy().tobytes())
    digest.update(f'rank={rank}'.encode())
    seed = int.from_bytes(digest.digest()[:8], 'little')
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
