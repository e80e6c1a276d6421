"""Operations on the gradients between the backward pass and the step.

A :class:`~drytorch.lib.learning.LearningSchema` holds one
``gradient_op``: a callable of the parameters that changes their
gradients in place.  These are DRYTorch's operations (clipping by norm or
value, normalising each parameter's gradient).

The operations here keep no state from step to step, so they need nothing
in a checkpoint for a resumed run to match an uninterrupted one.  Under DDP
the gradients are already averaged over the ranks when the operation runs,
so every rank changes them alike; under FSDP they are DTensor shards and
:class:`GradNormClipper` clips by the global norm (torch reduces the
shards' partial norms).  None of them reads a value back to the host, so a
GPU step does not wait.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Iterable

import torch

__all__ = [
    'ClipOperation',
    'GradNormClipper',
    'GradParamNormalizer',
    'GradValueClipper',
    'GradZScoreNormalizer',
    'GradientOp',
    'NoOp',
]

# Added to a norm or a standard deviation before dividing by it.
_EPS = 1e-8


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(
            f'threshold must be a positive number; got {threshold!r}.'
        )
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(
            f'threshold must be positive and finite; got {threshold!r}.'
        )
    return float(threshold)


def _with_grad(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor):
        params = [params]
    return [param for param in params if param.grad is not None]


class GradientOp(abc.ABC):
    """Changes the gradients of ``params`` in place.

    Subclasses may return a tensor worth logging (the norm before
    clipping); the trainer does not need one.
    """

    @abc.abstractmethod
    def __call__(self, params: Iterable[torch.Tensor]) -> torch.Tensor | None:
        """Apply the operation to the gradients of ``params``."""

    def __repr__(self) -> str:
        fields = ', '.join(f'{k}={v!r}' for k, v in vars(self).items())
        return f'{type(self).__name__}({fields})'


class NoOp(GradientOp):
    """Leaves the gradients as they are (the default)."""

    def __call__(self, params: Iterable[torch.Tensor]) -> None:
        """Do nothing."""


class ClipOperation(GradientOp, abc.ABC):
    """A clipping with a positive ``threshold``, checked when it is built."""

    def __init__(self, threshold: float = 1.0) -> None:
        self.threshold = _check_threshold(threshold)


class GradNormClipper(ClipOperation):
    """Scales the gradients down so that their total norm is ``threshold``.

    Returns the total norm before clipping, as a tensor on the gradients'
    device (a plain tensor also for sharded gradients).
    """

    def __call__(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        """Clip by the total 2-norm, in place."""
        # foreach=None takes the fused path wherever torch supports it.
        norm = torch.nn.utils.clip_grad_norm_(
            _with_grad(params), self.threshold, foreach=None
        )
        full_tensor = getattr(norm, 'full_tensor', None)  # a DTensor's
        return full_tensor() if full_tensor is not None else norm


class GradValueClipper(ClipOperation):
    """Clamps every gradient entry into ``[-threshold, threshold]``."""

    def __call__(self, params: Iterable[torch.Tensor]) -> None:
        """Clip by value, in place."""
        torch.nn.utils.clip_grad_value_(
            _with_grad(params), self.threshold, foreach=None
        )


class GradParamNormalizer(GradientOp):
    """Divides each parameter's gradient by its own 2-norm."""

    def __call__(self, params: Iterable[torch.Tensor]) -> None:
        """Normalise each gradient to unit norm, in place."""
        for param in _with_grad(params):
            grad = param.grad
            assert grad is not None
            grad.div_(torch.linalg.vector_norm(grad) + _EPS)


class GradZScoreNormalizer(GradientOp):
    """Standardises each parameter's gradient: zero mean, unit deviation.

    A gradient of one entry has no deviation; it is only centred.
    """

    def __call__(self, params: Iterable[torch.Tensor]) -> None:
        """Standardise each gradient, in place."""
        for param in _with_grad(params):
            grad = param.grad
            assert grad is not None
            grad.sub_(grad.mean())
            if grad.numel() > 1:
                grad.div_(grad.std() + _EPS)
