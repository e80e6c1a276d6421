"""Losses and metrics, their composition, and the per-rank accumulator.

A batch's value of each objective is a sample mean; the accumulator keeps
``mean * n`` sums on the device (float64, so long epochs stay exact) and the
counts on the host, so that no step needs a host sync.  At a sync point the
sums and counts of every rank are added in one packed all-reduce, which
gives exactly the sample-weighted mean a single process would compute.
"""

from __future__ import annotations

import abc
import dataclasses
import numbers
import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch

from drytorch.core import exceptions

__all__ = [
    'Loss',
    'LossBase',
    'Metric',
    'MetricCollection',
    'Objective',
]

Fn = Callable[[Any, Any], torch.Tensor]


def _batch_value(name: str, value: Any) -> torch.Tensor:
    """A batch's value as a 0-d tensor: the mean of per-sample values."""
    if not isinstance(value, torch.Tensor):
        if isinstance(value, numbers.Number):
            return torch.tensor(float(value))  # type: ignore[arg-type]
        raise TypeError(
            f'Objective {name!r} returned {type(value).__name__}; it must '
            'return a tensor (a scalar or one value per sample).'
        )
    if value.ndim == 0:
        return value
    if value.ndim == 1:
        return value.mean()
    raise exceptions.LossNotScalarError(name, value.shape)


class Objective(abc.ABC):
    """Anything that turns (outputs, targets) into named batch values."""

    @property
    @abc.abstractmethod
    def names(self) -> tuple[str, ...]:
        """Every name this objective reports, in a fixed order."""

    @abc.abstractmethod
    def compute(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        """Batch mean of every reported value (0-d tensors)."""

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """Per name, whether a larger value is an improvement."""
        return dict.fromkeys(self.names, False)

    def __or__(self, other: Objective) -> MetricCollection:
        return MetricCollection(self, other)


class Metric(Objective):
    """A named function of (outputs, targets) to monitor.

    Args:
        fn: returns one value per sample (shape ``(batch,)``) or the batch
            mean (a scalar).  Per-sample values make the epoch mean exact
            when batches differ in size.
        name: the name shown in logs; defaults to the function's name.
        higher_is_better: the direction of improvement, for early stopping.

    """

    def __init__(
        self, fn: Fn | str, name: str = '', higher_is_better: bool = True
    ) -> None:
        fn, default = _resolve(fn, 'Metric')
        self.fn = fn
        self.name = name or default
        self._higher = higher_is_better

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return {self.name: self._higher}

    def compute(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        return {self.name: _batch_value(self.name, self.fn(outputs, targets))}

    def describe(self) -> dict[str, Any]:
        return {'metric': self.name, 'higher_is_better': self._higher}

    def __repr__(self) -> str:
        return f'Metric({self.name!r})'


class MetricCollection(Objective):
    """Several objectives evaluated together (``metric_a | metric_b``)."""

    def __init__(self, *objectives: Objective) -> None:
        flat: list[Objective] = []
        for objective in objectives:
            if isinstance(objective, MetricCollection):
                flat.extend(objective.objectives)
            else:
                flat.append(objective)
        self.objectives = tuple(flat)
        names = [n for o in self.objectives for n in o.names]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(
                f'Objectives with the same name {duplicated} cannot be '
                'collected together; give each a distinct name.'
            )
        self._names = tuple(names)

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def higher_is_better(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for objective in self.objectives:
            out.update(objective.higher_is_better)
        return out

    def compute(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {}
        for objective in self.objectives:
            values.update(objective.compute(outputs, targets))
        return values

    def describe(self) -> dict[str, Any]:
        return {'metrics': list(self.names)}


@dataclasses.dataclass(frozen=True)
class _Formula:
    """How a loss combines its components' batch values."""

    text: str
    evaluate: Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


class LossBase(Objective):
    """A loss: a criterion to minimise, reported with its components.

    Arithmetic (``+``, ``-``, ``*``, ``/``, ``**`` with numbers or other
    losses) builds a new loss whose value is the formula applied to the
    components' batch values; the log then shows the total and each
    component.
    """

    def __init__(
        self, components: dict[str, Fn], formula: _Formula, name: str
    ) -> None:
        self.components = components
        self.formula = formula
        self.name = name

    @property
    def names(self) -> tuple[str, ...]:
        parts = tuple(n for n in self.components if n != self.name)
        return (self.name, *parts)

    def compute(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        values = {
            name: _batch_value(name, fn(outputs, targets))
            for name, fn in self.components.items()
        }
        total = self.formula.evaluate(values)
        values[self.name] = total
        return values

    def criterion(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The value to minimise, from :meth:`compute`'s result."""
        return values[self.name]

    def describe(self) -> dict[str, Any]:
        return {'loss': self.name, 'formula': self.formula.text}

    def __repr__(self) -> str:
        return f'Loss({self.formula.text!r})'

    def _combine(
        self,
        other: LossBase | float,
        op: Callable[[Any, Any], Any],
        symbol: str,
        reverse: bool = False,
    ) -> LossBase:
        if isinstance(other, LossBase):
            components = {**self.components, **other.components}
            left, right = self.formula, other.formula
            if reverse:
                left, right = right, left
            text = f'{left.text} {symbol} {right.text}'

            def evaluate(v: Mapping[str, torch.Tensor]) -> torch.Tensor:
                return op(left.evaluate(v), right.evaluate(v))

        elif isinstance(other, numbers.Number):
            components = dict(self.components)
            own = self.formula
            number = float(other)  # type: ignore[arg-type]
            if reverse:
                text = f'{number:g} {symbol} {own.text}'

                def evaluate(v: Mapping[str, torch.Tensor]) -> torch.Tensor:
                    return op(number, own.evaluate(v))

            else:
                text = f'{own.text} {symbol} {number:g}'

                def evaluate(v: Mapping[str, torch.Tensor]) -> torch.Tensor:
                    return op(own.evaluate(v), number)

        else:
            return NotImplemented
        return LossBase(components, _Formula(f'({text})', evaluate), 'Loss')

    def __add__(self, other: LossBase | float) -> LossBase:
        return self._combine(other, operator.add, '+')

    def __radd__(self, other: float) -> LossBase:
        return self._combine(other, operator.add, '+', reverse=True)

    def __sub__(self, other: LossBase | float) -> LossBase:
        return self._combine(other, operator.sub, '-')

    def __rsub__(self, other: float) -> LossBase:
        return self._combine(other, operator.sub, '-', reverse=True)

    def __mul__(self, other: LossBase | float) -> LossBase:
        return self._combine(other, operator.mul, 'x')

    def __rmul__(self, other: float) -> LossBase:
        return self._combine(other, operator.mul, 'x', reverse=True)

    def __truediv__(self, other: LossBase | float) -> LossBase:
        return self._combine(other, operator.truediv, '/')

    def __pow__(self, other: float) -> LossBase:
        return self._combine(other, operator.pow, '**')


def _per_sample(error: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (the batch)."""
    return error.flatten(1).mean(1) if error.ndim > 1 else error


def _check_same_shape(outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Refuse the silent broadcast of, e.g., (batch, 1) against (batch,)."""
    if outputs.shape != targets.shape:
        raise ValueError(
            f'outputs {tuple(outputs.shape)} and targets '
            f'{tuple(targets.shape)} must have the same shape'
        )


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error, one value per sample."""
    _check_same_shape(outputs, targets)
    return _per_sample((outputs - targets).square())


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Absolute error, one value per sample."""
    _check_same_shape(outputs, targets)
    return _per_sample((outputs - targets).abs())


def cross_entropy(
    outputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Cross entropy of logits against class indices, per sample."""
    return torch.nn.functional.cross_entropy(
        outputs, targets, reduction='none'
    )


# The built-ins named by a string return the batch mean through PyTorch's
# fused reduction (as nn.MSELoss, nn.L1Loss and nn.CrossEntropyLoss do by
# default).  The accumulator weighs a batch mean by the batch size, so the
# epoch means are those of the per-sample functions above, while a step
# skips the separate mean and its backward node.  One difference: targets
# equal to -100 are left out of the cross entropy's mean, as in
# nn.CrossEntropyLoss.
def _batch_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    _check_same_shape(outputs, targets)
    return torch.nn.functional.mse_loss(outputs, targets)


def _batch_mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    _check_same_shape(outputs, targets)
    return torch.nn.functional.l1_loss(outputs, targets)


def _batch_cross_entropy(
    outputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs, targets)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 for a sample whose largest logit is its class, else 0."""
    return (outputs.argmax(dim=-1) == targets).to(outputs.dtype)


BUILTIN: dict[str, Fn] = {
    'MSE': _batch_mse,
    'MAE': _batch_mae,
    'CrossEntropy': _batch_cross_entropy,
    'Accuracy': accuracy,
}


def _resolve(fn: Fn | str, kind: str) -> tuple[Fn, str]:
    if isinstance(fn, str):
        if fn not in BUILTIN:
            raise ValueError(
                f'Unknown built-in {kind} {fn!r}; built-ins are '
                f'{sorted(BUILTIN)}, or pass a function.'
            )
        return BUILTIN[fn], fn
    if not callable(fn):
        raise TypeError(f'{kind} function {fn!r} is not callable.')
    return fn, getattr(fn, '__name__', kind)


class Loss(LossBase):
    """A named loss function.

    Args:
        fn: returns one value per sample or the batch mean; or the name of
            a built-in ('MSE', 'MAE', 'CrossEntropy').
        name: the name in logs; defaults to the function's name.

    """

    def __init__(self, fn: Fn | str, name: str = '') -> None:
        fn, default = _resolve(fn, 'Loss')
        name = name or default
        if not callable(fn):
            raise TypeError(f'Loss function {fn!r} is not callable.')

        def evaluate(v: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return v[name]

        super().__init__({name: fn}, _Formula(f'[{name}]', evaluate), name)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    def compute(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        fn = self.components[self.name]
        return {self.name: _batch_value(self.name, fn(outputs, targets))}


class MetricAccumulator:
    """Per-rank sums of an epoch, kept on the device with no host sync.

    Each step copies its batch values into a small device window (one
    tensor op); the window is folded into float64 sums, weighted by the
    batch sizes kept on the host, when it fills up and at every sync point.
    Folding is also when non-finite values are looked for, so the step
    itself never waits for the device.  The order of :attr:`names` is fixed
    before the first batch and identical on every rank, which is what lets
    the packed reduction line up.
    """

    def __init__(
        self,
        names: tuple[str, ...],
        device: torch.device,
        capacity: int = 64,
    ) -> None:
        self.names = tuple(sorted(names))
        self.device = device
        self.sums = torch.zeros(
            len(self.names), dtype=torch.float64, device=device
        )
        self.count = 0
        self.steps_folded = 0
        self._window = torch.zeros(
            capacity, len(self.names), dtype=torch.float64, device=device
        )
        # Views of the window's rows, made once: indexing the window at
        # every step would create a new view per step.
        self._rows = self._window.unbind(0)
        self._sizes: list[int] = []
        self._first_bad: int | None = None

    def add(self, values: Mapping[str, torch.Tensor], n: int) -> None:
        """Add a batch of ``n`` samples whose means are ``values``."""
        row = self._rows[len(self._sizes)]
        if len(self.names) == 1:
            row.copy_(values[self.names[0]].detach())
        else:
            row.copy_(torch.stack([values[k].detach() for k in self.names]))
        self._sizes.append(n)
        if len(self._sizes) == len(self._rows):
            self.fold()

    def add_empty(self) -> None:
        """Count a step with no sample (an uneven evaluation shard)."""
        self.fold()

    def fold(self) -> int | None:
        """Move the window into the sums; return the first non-finite step.

        The returned index counts steps since the start of the epoch, for
        the error message; None when every value was finite.  It is kept
        until :meth:`reset`, so that a non-finite value found when a full
        window is folded inside :meth:`add` is still reported at the next
        sync point.
        """
        k = len(self._sizes)
        if k:
            window = self._window[:k]
            weights = torch.tensor(
                self._sizes, dtype=torch.float64, device=self.device
            )
            finite = torch.isfinite(window).all(dim=1)
            if self._first_bad is None and not bool(finite.all()):
                bad = int((~finite).nonzero()[0, 0])
                self._first_bad = self.steps_folded + bad
            self.sums.add_((window * weights[:, None]).sum(dim=0))
            self.count += sum(self._sizes)
            self.steps_folded += k
            self._sizes.clear()
        return self._first_bad

    def reset(self) -> None:
        """Start a new epoch."""
        self._sizes.clear()
        self._first_bad = None
        self.sums.zero_()
        self.count = 0
        self.steps_folded = 0

    def state_dict(self) -> dict[str, Any]:
        """This rank's partial sums, for a mid-epoch checkpoint."""
        self.fold()
        return {
            'names': self.names,
            'sums': self.sums.cpu().tolist(),
            'count': self.count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue an epoch from a mid-epoch checkpoint."""
        if tuple(state['names']) != self.names:
            raise ValueError(
                f'The checkpoint holds metrics {state["names"]}, but this '
                f'objective reports {self.names}; use the same objective '
                'as the run that wrote it.'
            )
        self._sizes.clear()
        self._first_bad = None
        self.sums.copy_(torch.tensor(state['sums'], dtype=torch.float64))
        self.count = int(state['count'])
