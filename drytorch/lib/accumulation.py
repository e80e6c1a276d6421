"""Gradient accumulation: k micro-batches per optimizer step.

An epoch's batches fall into windows of ``k`` consecutive micro-batches;
the optimizer steps once per window, after the window's last backward
pass.  Each micro-batch's loss is weighted by its share of the window's
samples (``n_i / sum(n)``), so the accumulated gradient is the gradient
of the mean loss over the whole window: the same as one batch ``k`` times
larger (and the same as the smaller last batch of ``drop_last=False``
when micro-batches differ in size).

The last window of an epoch may hold fewer than ``k`` micro-batches (the
epoch's batch count does not divide by ``k``).  It takes an optimizer
step of its own, weighted over its own samples, as a smaller last batch
would: no micro-batch is carried over into the next epoch (whose order is
a new permutation) and none is dropped.

Under DDP the gradients are all-reduced on a window's last micro-batch
only: the others run under ``no_sync()``, so there is one round of
bucket all-reduces per optimizer step, not ``k``.  A sharded module
(FSDP2) skips its reduce-scatter the same way
(``set_requires_gradient_sync(False)``).

Preemption stops at window boundaries only.  Saving a partial gradient
instead would mean saving every rank's own unreduced gradients (they
differ between ranks until the window's all-reduce), a model-sized
tensor per rank, in a checkpoint whose format holds one copy of the
model; a stop at the next boundary costs at most ``k - 1`` micro-batches
of delay.  The trainer therefore makes sync points (where the ranks learn
of a preemption) fall on boundaries, and a checkpoint's batch position is
always a multiple of ``k``.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from typing import Any

import torch

from drytorch.lib.loading import Plan

__all__ = ['Accumulation', 'check_accumulation_steps']


def check_accumulation_steps(value: Any) -> int:
    """``value`` as a number of micro-batches per step, or a clear error.

    Raises:
        TypeError: for anything but a whole number.
        ValueError: for a number below 1.

    """
    if isinstance(value, bool):
        raise TypeError(
            f'accumulation_steps must be a whole number >= 1, got {value!r}.'
        )
    try:
        steps = operator.index(value)
    except TypeError:
        raise TypeError(
            'accumulation_steps must be a whole number >= 1 (micro-batches '
            f'per optimizer step), got {type(value).__name__} {value!r}.'
        ) from None
    if steps < 1:
        raise ValueError(
            f'accumulation_steps must be >= 1, got {steps}; 1 steps the '
            'optimizer after every batch.'
        )
    return steps


class Accumulation:
    """The windows of one training pass and what each micro-batch does.

    Args:
        steps: micro-batches per optimizer step (``k``).

    """

    def __init__(self, steps: int = 1) -> None:
        self.steps = check_accumulation_steps(steps)
        self._weights: list[float] = []

    def plan(self, plan: Plan) -> None:
        """Weigh every micro-batch of ``plan`` within its window."""
        sizes = [int(b.shape[0]) for b in plan.batches]
        k = self.steps
        weights = []
        for start in range(0, len(sizes), k):
            window = sizes[start : start + k]
            total = sum(window)
            weights += [n / total if total else 0.0 for n in window]
        self._weights = weights

    def optimizer_steps(self, batches: int) -> int:
        """Optimizer steps in a pass of ``batches`` micro-batches."""
        return -(-batches // self.steps)

    def weight(self, position: int) -> float:
        """The loss factor of the micro-batch at ``position`` (0-based)."""
        if self.steps == 1:
            return 1.0
        return self._weights[position]

    def opens(self, position: int) -> bool:
        """Whether the micro-batch at ``position`` starts a window."""
        return position % self.steps == 0

    def closes(self, position: int, total: int) -> bool:
        """Whether the micro-batch at ``position`` ends its window."""
        return (position + 1) % self.steps == 0 or position + 1 == total

    def is_boundary(self, done: int, total: int) -> bool:
        """Whether a pass may stop after ``done`` micro-batches."""
        return done % self.steps == 0 or done >= total

    def check_resume(self, start_batch: int) -> None:
        """Refuse a resume inside a window (see the module docstring).

        Raises:
            ValueError: when ``start_batch`` is not a window boundary: the
                checkpoint was written with another ``accumulation_steps``.

        """
        if start_batch % self.steps:
            raise ValueError(
                f'The checkpoint stopped after micro-batch {start_batch} of '
                f'its epoch, which is not a boundary of windows of '
                f'accumulation_steps={self.steps}: it was written with '
                'another accumulation_steps. Resume with the '
                'accumulation_steps it was written with.'
            )

    def gradient_sync(
        self, module: torch.nn.Module, plain: torch.nn.Module, sync: bool
    ) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient reduction of a micro-batch when ``not sync``.

        ``module`` is what trains (DDP, a sharded or a plain module) and
        ``plain`` the module under it.  In one process there is nothing
        to skip, and a shared null context costs almost nothing per step.
        """
        if sync or self.steps == 1:
            return _NULL
        no_sync = getattr(module, 'no_sync', None)
        if no_sync is not None:  # DistributedDataParallel
            return no_sync()
        requires = getattr(plain, 'set_requires_gradient_sync', None)
        if requires is None:  # a plain module: no reduction to skip
            return _NULL
        return _without_gradient_sync(requires)  # FSDP2


_NULL = contextlib.nullcontext()


@contextlib.contextmanager
def _without_gradient_sync(requires: Any) -> Iterator[None]:
    """FSDP2's reduce-scatter off for one micro-batch, then on again."""
    requires(False)
    try:
        yield
    finally:
        requires(True)
