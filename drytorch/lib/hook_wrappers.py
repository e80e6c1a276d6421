"""Wrappers that turn plain functions into trainer hooks (DRYTorch's).

``Hook`` wraps a function of the trainer, ``StaticHook`` a function of
nothing, and ``call_every(interval, start)`` makes a hook run only every
``interval`` epochs.  The wrappers keep the wrapped object's
``state_dict``/``load_state_dict``, so that a stateful hook behind them is
still saved in checkpoints and resumes exactly.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drytorch.lib.training import Trainer

__all__ = [
    'CallEvery',
    'Hook',
    'StaticHook',
    'TrainerHook',
    'call_every',
    'saving_hook',
    'static_hook_class',
]


class TrainerHook(abc.ABC):
    """A hook with metadata: its ``parameters`` and the name it shows.

    Attributes:
        parameters: what the hook was built with, for the run's record.
        base_hook_name: the name of the hook in that record.

    """

    parameters: dict[str, Any]
    base_hook_name: str
    _wrapped: Callable[..., Any]

    @abc.abstractmethod
    def __call__(self, trainer: Trainer) -> None:
        """Run the hook."""

    def bind(self, f: Callable[[Callable[[Trainer], None]], Hook], /) -> Hook:
        """The hook that ``f`` makes of this one, with both's parameters.

        ``hook.bind(call_every(2))`` runs ``hook`` every other epoch.
        """
        transformed = f(self.__call__)
        return Hook(
            transformed.__call__,
            self.base_hook_name,
            self.parameters | transformed.parameters,
        )

    def state_dict(self) -> dict[str, Any]:
        """The wrapped object's state, if it has one (saved with the run)."""
        state = getattr(self._wrapped, 'state_dict', None)
        return state() if callable(state) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Give the wrapped object its saved state back."""
        load = getattr(self._wrapped, 'load_state_dict', None)
        if callable(load) and state:
            load(state)

    def __repr__(self) -> str:
        return f'{self.base_hook_name}({self.parameters!r})'


class Hook(TrainerHook):
    """Calls ``wrapped(trainer)``."""

    def __init__(
        self,
        wrapped: Callable[[Trainer], None],
        base_hook_name: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        if not callable(wrapped):
            raise TypeError(f'Hook needs a callable; got {wrapped!r}.')
        self._wrapped = wrapped
        self.parameters = dict(parameters or {})
        self.base_hook_name = base_hook_name or type(self).__name__

    def __call__(self, trainer: Trainer) -> None:
        """Call the wrapped function with the trainer."""
        self._wrapped(trainer)


class StaticHook(TrainerHook):
    """Calls ``wrapped()``, ignoring the trainer."""

    def __init__(
        self,
        wrapped: Callable[[], None],
        base_hook_name: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        if not callable(wrapped):
            raise TypeError(f'StaticHook needs a callable; got {wrapped!r}.')
        self._wrapped = wrapped
        self.parameters = dict(parameters or {})
        self.base_hook_name = base_hook_name or type(self).__name__

    def __call__(self, trainer: Trainer) -> None:
        """Call the wrapped function without arguments."""
        self._wrapped()


class CallEvery(Hook):
    """Runs ``wrapped`` at epochs ``start``, ``start + interval``, ...

    Also at the last epoch of a training that was terminated, so that a
    hook that saves or reports does not miss the end, as in DRYTorch.  The
    decision reads only the epoch and the agreed stop, which are the same
    on every rank.
    """

    def __init__(
        self,
        wrapped: Callable[[Trainer], None],
        parameters: dict[str, Any] | None = None,
        interval: int = 1,
        start: int = 0,
    ) -> None:
        super().__init__(wrapped, '', parameters)
        if isinstance(interval, bool) or not isinstance(interval, int):
            raise TypeError(f'interval must be an int; got {interval!r}.')
        if interval <= 0:
            raise ValueError(f'interval must be positive; got {interval}.')
        if isinstance(start, bool) or not isinstance(start, int):
            raise TypeError(f'start must be an int; got {start!r}.')
        if start < 0:
            raise ValueError(f'start must be non-negative; got {start}.')
        self.interval = interval
        self.start = start
        self.parameters |= {'interval': interval, 'start': start}
        self.base_hook_name = getattr(
            wrapped, 'base_hook_name', type(wrapped).__name__
        )

    def __call__(self, trainer: Trainer) -> None:
        """Call the wrapped hook if this epoch is one of its epochs."""
        epoch = trainer.model.epoch
        if epoch < self.start:
            return
        if (epoch - self.start) % self.interval == 0 or trainer.terminated:
            self._wrapped(trainer)


def call_every(
    interval: int, start: int = 0
) -> Callable[[Callable[[Trainer], None]], CallEvery]:
    """A transformation that runs a hook every ``interval`` epochs.

    ``trainer.post_epoch_hooks.register(call_every(5)(my_hook))``.
    """
    # checked now, not when the transformation is applied
    CallEvery(lambda _: None, interval=interval, start=start)

    def transform(hook: Callable[[Trainer], None]) -> CallEvery:
        return CallEvery(hook, interval=interval, start=start)

    return transform


def static_hook_class(cls: type) -> Callable[..., StaticHook]:
    """Make a class of zero-argument callables a class of static hooks.

    ``@static_hook_class class Beep: def __call__(self): ...``; then
    ``Beep(...)`` builds a :class:`StaticHook` around ``cls(...)``, with the
    constructor's arguments as its parameters.
    """
    if not isinstance(cls, type):
        raise TypeError(f'static_hook_class decorates a class; got {cls!r}.')

    @functools.wraps(cls, updated=())
    class _Static(StaticHook):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            parameters = dict(kwargs)
            if args:
                parameters['args'] = args
            super().__init__(cls(*args, **kwargs), cls.__name__, parameters)

    return _Static


def _save(trainer: Trainer) -> None:
    trainer.save_checkpoint()


saving_hook = Hook(_save, 'saving_hook')
"""A hook that saves a checkpoint (once all hooks of the epoch have run)."""
