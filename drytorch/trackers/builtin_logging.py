"""Alias of :mod:`drytorch.trackers.logging`, the name the tutorial uses."""

from drytorch.trackers.logging import (
    BuiltinLogger,
    InfoLevels,
    get_verbosity,
    set_verbosity,
)

__all__ = ['BuiltinLogger', 'InfoLevels', 'get_verbosity', 'set_verbosity']
