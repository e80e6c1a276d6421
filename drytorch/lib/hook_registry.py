"""An ordered list of hooks that the trainer runs around each epoch.

``Trainer.pre_epoch_hooks`` and ``Trainer.post_epoch_hooks`` are registries
with DRYTorch's methods (``register``, ``register_all``, ``execute``).  A
hook is any callable of the trainer; it is checked when it is registered,
not when the first epoch ends hours later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ['HookRegistry']

_T = TypeVar('_T')


class HookRegistry(Generic[_T]):
    """Hooks called in the order they were registered.

    Attributes:
        hooks: the registered hooks.

    """

    def __init__(self) -> None:
        self.hooks: list[Callable[[_T], None]] = []

    def register(self, hook: Callable[[_T], None]) -> None:
        """Add ``hook`` after those already registered.

        Raises:
            TypeError: if ``hook`` is not callable.

        """
        if not callable(hook):
            raise TypeError(
                'A hook must be a callable of the trainer, such as '
                f'hooks.EarlyStoppingCallback(); got {hook!r}.'
            )
        self.hooks.append(hook)

    def register_all(self, hook_list: Iterable[Callable[[_T], None]]) -> None:
        """Register every hook of ``hook_list``, in order."""
        for hook in hook_list:
            self.register(hook)

    def execute(self, input_object: _T) -> None:
        """Call every hook with ``input_object``, in order."""
        for hook in self.hooks:
            hook(input_object)

    def __iter__(self) -> Iterator[Callable[[_T], None]]:
        return iter(self.hooks)

    def __len__(self) -> int:
        return len(self.hooks)

    def __repr__(self) -> str:
        return f'HookRegistry({self.hooks!r})'
