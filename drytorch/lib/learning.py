"""How a model learns: optimizer, learning rates, schedule, gradient ops.

:class:`LearningSchema` holds everything needed to build an optimizer and
to set its learning rate at any epoch.  It is checked when it is built: an
argument the optimizer does not take, or a learning rate that cannot work,
fails before training starts instead of at the first step.

The learning rate is a pure function of the epoch, or of the optimizer
step for a schedule made ``.per_step()`` (see ``drytorch.lib.schedulers``),
so :meth:`LearningSchema.apply_learning_rate` gives a resumed run exactly
the rates of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from drytorch.lib.gradient_ops import GradientOp, NoOp
from drytorch.lib.schedulers import AbstractScheduler, ConstantScheduler

__all__ = ['LearningSchema']

_BETAS = (0.9, 0.999)
# Frozen, hence safe to share as the default of every schema.
_CONSTANT = ConstantScheduler()
_NO_OP = NoOp()
# Arguments the schema supplies itself rather than taking from the user.
_RESERVED = ('self', 'params', 'lr')


def _check_lr(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a usable learning rate."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f'{name} must be a positive number; got {value!r} of type '
            f'{type(value).__name__}.'
        )
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f'{name} must be positive and finite; got {value!r}.')
    return float(value)


def _valid_arguments(optimizer_cls: type) -> dict[str, Any] | None:
    """Arguments ``optimizer_cls`` takes, with defaults; ``None``: any."""
    signature = inspect.signature(optimizer_cls.__init__)
    valid = {}
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if name not in _RESERVED:
            valid[name] = parameter.default
    return valid


def _unknown_argument(optimizer_cls: type, name: str, valid: dict) -> str:
    """The message for an argument that ``optimizer_cls`` does not take."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    listed = ', '.join(
        name if default is inspect.Parameter.empty else f'{name}={default!r}'
        for name, default in valid.items()
    )
    return (
        f'{optimizer_cls.__name__} got an unknown argument {name!r}.{hint} '
        f'Valid arguments (with defaults): {listed}.'
    )


def _prefix_of(name: str, prefixes: Iterable[str]) -> str | None:
    """The longest prefix naming ``name`` or a submodule holding it.

    The empty prefix matches every parameter, which makes it the default
    group.
    """
    best = None
    for prefix in prefixes:
        fits = not prefix or name == prefix or name.startswith(prefix + '.')
        if fits and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


@dataclasses.dataclass(frozen=True)
class LearningSchema:
    """An optimizer, its learning rates, schedule and gradient operation.

    The fields and the constructors (:meth:`adam`, :meth:`adam_w`,
    :meth:`sgd`, :meth:`r_adam`) are DRYTorch's, in DRYTorch's order.  The
    constructors also pass any other keyword to the optimizer (``eps=``,
    ``weight_decay=`` for Adam), and an argument the optimizer does not take
    fails here, listing those it does.

    Attributes:
        optimizer_cls: the ``torch.optim.Optimizer`` subclass to build.
        base_lr: the learning rate before scheduling, or a dict from
            parameter-name prefixes (submodule names such as ``'encoder'``
            or ``'encoder.0'``) to rates, one parameter group per entry.
            A parameter joins the group of its longest matching prefix;
            the key ``''`` collects the parameters no other key matches.
        scheduler: the learning rate as a function of the epoch, or of
            the optimizer step (``scheduler.per_step()``).
        optimizer_defaults: the optimizer's other arguments.
        gradient_op: changes the gradients before each step (see
            ``drytorch.lib.gradient_ops``); nothing by default.

    """

    optimizer_cls: type[torch.optim.Optimizer]
    base_lr: float | dict[str, float]
    scheduler: AbstractScheduler = _CONSTANT
    optimizer_defaults: dict[str, Any] = dataclasses.field(
        default_factory=dict
    )
    gradient_op: GradientOp = _NO_OP

    def __post_init__(self) -> None:
        if not (
            isinstance(self.optimizer_cls, type)
            and issubclass(self.optimizer_cls, torch.optim.Optimizer)
        ):
            raise TypeError(
                'optimizer_cls must be a torch.optim.Optimizer subclass '
                f'such as torch.optim.Adam; got {self.optimizer_cls!r}.'
            )
        if not isinstance(self.scheduler, AbstractScheduler):
            raise TypeError(
                'scheduler must be a drytorch scheduler such as '
                f'ConstantScheduler(); got {self.scheduler!r}.'
            )
        if not callable(self.gradient_op):
            raise TypeError(
                'gradient_op must be a callable of the parameters such as '
                f'gradient_ops.GradNormClipper(1.0); got {self.gradient_op!r}.'
            )
        # Copies, so that changing the caller's dicts cannot change us.
        object.__setattr__(self, 'base_lr', self._checked_lr(self.base_lr))
        defaults = dict(self.optimizer_defaults)
        object.__setattr__(self, 'optimizer_defaults', defaults)
        self._check_defaults()

    @classmethod
    def adam(
        cls,
        base_lr: float | dict[str, float] = 1e-3,
        betas: tuple[float, float] = _BETAS,
        scheduler: AbstractScheduler = _CONSTANT,
        gradient_op: GradientOp = _NO_OP,
        **kwargs: Any,
    ) -> LearningSchema:
        """Adam; ``kwargs`` go to ``torch.optim.Adam`` (e.g. ``eps``)."""
        defaults = {'betas': betas, **kwargs}
        return cls(torch.optim.Adam, base_lr, scheduler, defaults, gradient_op)

    @classmethod
    def adam_w(
        cls,
        base_lr: float | dict[str, float] = 1e-3,
        betas: tuple[float, float] = _BETAS,
        weight_decay: float = 1e-2,
        scheduler: AbstractScheduler = _CONSTANT,
        gradient_op: GradientOp = _NO_OP,
        **kwargs: Any,
    ) -> LearningSchema:
        """AdamW; ``kwargs`` go to ``torch.optim.AdamW``."""
        defaults = {'betas': betas, 'weight_decay': weight_decay, **kwargs}
        return cls(
            torch.optim.AdamW, base_lr, scheduler, defaults, gradient_op
        )

    @classmethod
    def sgd(
        cls,
        base_lr: float | dict[str, float] = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        scheduler: AbstractScheduler = _CONSTANT,
        gradient_op: GradientOp = _NO_OP,
        **kwargs: Any,
    ) -> LearningSchema:
        """SGD; ``kwargs`` go to ``torch.optim.SGD``."""
        defaults = {
            'momentum': momentum,
            'weight_decay': weight_decay,
            'dampening': dampening,
            'nesterov': nesterov,
            **kwargs,
        }
        return cls(torch.optim.SGD, base_lr, scheduler, defaults, gradient_op)

    @classmethod
    def r_adam(
        cls,
        base_lr: float | dict[str, float] = 1e-3,
        betas: tuple[float, float] = _BETAS,
        weight_decay: float = 0.0,
        scheduler: AbstractScheduler = _CONSTANT,
        gradient_op: GradientOp = _NO_OP,
        **kwargs: Any,
    ) -> LearningSchema:
        """RAdam; a weight decay is decoupled (AdamW-style), as in DRYTorch.

        ``kwargs`` go to ``torch.optim.RAdam``.
        """
        defaults = {
            'betas': betas,
            'weight_decay': weight_decay,
            'decoupled_weight_decay': bool(weight_decay),
            **kwargs,
        }
        return cls(
            torch.optim.RAdam, base_lr, scheduler, defaults, gradient_op
        )

    @property
    def per_step(self) -> bool:
        """Whether the schedule counts optimizer steps rather than epochs.

        The trainer then sets the rate before every optimizer step.
        """
        return self.scheduler.counts_steps

    @property
    def modifies_gradients(self) -> bool:
        """Whether :meth:`clip_gradients` has anything to do."""
        return not isinstance(self.gradient_op, NoOp)

    def build_optimizer(
        self, module: torch.nn.Module
    ) -> torch.optim.Optimizer:
        """A new optimizer over ``module``'s parameters.

        One parameter group per entry of ``base_lr``, in its order; each
        group records its base rate as ``'initial_lr'``, as torch's own
        schedulers do.  Prefixes are checked here because the module is
        not known at construction.

        Raises:
            ValueError: if a prefix of ``base_lr`` gets no parameter, or a
                parameter matches no prefix and there is no ``''`` key.

        """
        groups = [
            {'params': params, 'lr': lr, 'initial_lr': lr}
            for params, lr in zip(
                self._group_params(module),
                self._group_base_lrs(None),
                strict=True,
            )
        ]
        return self.optimizer_cls(groups, **self.optimizer_defaults)

    def learning_rates(
        self, epoch: int, base_lr: float | Mapping[str, float] | None = None
    ) -> list[float]:
        """The scheduled rate of each parameter group after ``epoch`` epochs.

        Args:
            epoch: the number of completed epochs; of completed optimizer
                steps when the schedule is :attr:`per_step`.
            base_lr: replaces the schema's base rates (e.g. after a
                plateau); a float sets every group, a dict must have the
                schema's keys.

        """
        return [
            self.scheduler(lr, epoch) for lr in self._group_base_lrs(base_lr)
        ]

    def apply_learning_rate(
        self,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        base_lr: float | Mapping[str, float] | None = None,
    ) -> None:
        """Set each group's rate for the epoch after ``epoch`` completed.

        For a :attr:`per_step` schedule ``epoch`` counts optimizer steps:
        the rate of the step after that many.

        Nothing but ``epoch`` and the base rates decides the value, so a
        freshly built optimizer at a resumed epoch gets the same rates.
        """
        rates = self.learning_rates(epoch, base_lr)
        if len(rates) != len(optimizer.param_groups):
            raise ValueError(
                f'The optimizer has {len(optimizer.param_groups)} parameter '
                f'group(s) but the schema defines {len(rates)}; build the '
                'optimizer with `build_optimizer`.'
            )
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group['lr'] = rate

    def clip_gradients(
        self, parameters: torch.Tensor | Iterable[torch.Tensor]
    ) -> torch.Tensor | None:
        """Apply ``gradient_op`` to the gradients, in place.

        Returns what the operation returns: the total norm before clipping
        for :class:`~drytorch.lib.gradient_ops.GradNormClipper` (a tensor,
        never read back to the host), else ``None``.
        """
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        return self.gradient_op(parameters)

    def describe(self) -> dict[str, Any]:
        """Readable metadata, for the run's documentation."""
        return {
            'optimizer': self.optimizer_cls.__name__,
            'base_lr': self._describe_lr(),
            'optimizer_defaults': dict(self.optimizer_defaults),
            'scheduler': repr(self.scheduler),
            'gradient_op': repr(self.gradient_op),
        }

    def _describe_lr(self) -> float | dict[str, float]:
        if isinstance(self.base_lr, dict):
            return dict(self.base_lr)
        return self.base_lr

    @staticmethod
    def _checked_lr(base_lr: object) -> float | dict[str, float]:
        """``base_lr`` validated and copied."""
        if not isinstance(base_lr, Mapping):
            return _check_lr('lr', base_lr)
        if not base_lr:
            raise ValueError(
                'The lr dict is empty; map at least one submodule name to '
                "a rate, or '' to a rate for all parameters."
            )
        checked = {}
        for prefix, lr in base_lr.items():
            if not isinstance(prefix, str):
                raise TypeError(
                    'The keys of the lr dict must be submodule names '
                    f'(str); got {prefix!r}.'
                )
            checked[prefix] = _check_lr(f'lr[{prefix!r}]', lr)
        return checked

    def _check_defaults(self) -> None:
        """Fail now on arguments the optimizer would reject later."""
        cls = self.optimizer_cls
        valid = _valid_arguments(cls)
        for name in self.optimizer_defaults:
            if name == 'lr':
                raise ValueError(
                    'Pass the learning rate as base_lr, not in '
                    'optimizer_defaults.'
                )
            if valid is not None and name not in valid:
                raise TypeError(_unknown_argument(cls, name, valid))
        # Values (betas out of range, nesterov without momentum...) are
        # checked by the optimizer itself, on a throwaway parameter.
        probe = [torch.zeros(1, requires_grad=True)]
        try:
            cls(probe, lr=1e-3, **self.optimizer_defaults)
        except (TypeError, ValueError, RuntimeError) as error:
            arguments = ', '.join(
                f'{key}={value!r}'
                for key, value in self.optimizer_defaults.items()
            )
            raise ValueError(
                f'{cls.__name__} rejected its arguments ({arguments}): {error}'
            ) from error

    def _group_base_lrs(
        self, base_lr: float | Mapping[str, float] | None
    ) -> list[float]:
        """One base rate per group, in group order."""
        if base_lr is None:
            base_lr = self.base_lr
        if not isinstance(self.base_lr, dict):
            if isinstance(base_lr, Mapping):
                raise ValueError(
                    'This schema has one parameter group, so base_lr must '
                    f'be a number; got {dict(base_lr)!r}.'
                )
            return [_check_lr('base_lr', base_lr)]
        if not isinstance(base_lr, Mapping):
            rate = _check_lr('base_lr', base_lr)
            return [rate] * len(self.base_lr)
        if set(base_lr) != set(self.base_lr):
            raise ValueError(
                f'base_lr must have the keys {list(self.base_lr)} of the '
                f'schema; got {list(base_lr)}.'
            )
        return [
            _check_lr(f'base_lr[{key!r}]', base_lr[key])
            for key in self.base_lr
        ]

    def _group_params(
        self, module: torch.nn.Module
    ) -> list[list[torch.nn.Parameter]]:
        """``module``'s parameters split by prefix, in group order."""
        named = list(module.named_parameters())
        if not isinstance(self.base_lr, dict):
            return [[param for _, param in named]]
        groups: dict[str, list[torch.nn.Parameter]] = {
            prefix: [] for prefix in self.base_lr
        }
        unmatched = []
        for name, param in named:
            prefix = _prefix_of(name, groups)
            if prefix is None:
                unmatched.append(name)
            else:
                groups[prefix].append(param)
        top = sorted({name.split('.')[0] for name, _ in named})
        for prefix, params in groups.items():
            if not params:
                raise ValueError(
                    f'No parameter of {type(module).__name__} falls under '
                    f'the lr prefix {prefix!r} (longer prefixes may have '
                    f'taken them). Top-level names: {top}.'
                )
        if unmatched:
            shown = ', '.join(unmatched[:5])
            more = len(unmatched) - 5
            shown += f' and {more} more' if more > 0 else ''
            raise ValueError(
                f'Parameters {shown} match no lr prefix of '
                f"{list(groups)}; add their submodule, or '' for all "
                'remaining parameters.'
            )
        return list(groups.values())
