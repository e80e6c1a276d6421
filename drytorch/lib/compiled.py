"""The names that ``torch.compile`` adds to a module, and how to drop them.

``torch.compile`` returns a wrapper whose state keys all start with
``_orig_mod.``, and a submodule compiled on its own adds an ``_orig_mod``
segment inside the names.  Models keep their states under the plain
names, so that a checkpoint loads into the compiled and the plain module
alike; the helpers here translate.
"""

from __future__ import annotations

import collections
import inspect
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

__all__ = [
    'COMPILED_PREFIX',
    'COMPILED_SEGMENT',
    'compile_options',
    'plain_name',
    'unwrap_compiled',
    'without_compiled_prefix',
]

# The prefix that ``torch.compile``'s wrapper puts before every state key.
COMPILED_PREFIX = '_orig_mod.'
# The segment that a submodule compiled on its own adds inside the names.
COMPILED_SEGMENT = '_orig_mod'


def unwrap_compiled(
    module: torch.nn.Module,
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The plain module and, if ``module`` was compiled, the compiled one.

    ``torch.compile`` returns a wrapper whose state keys all start with
    ``_orig_mod.``; a checkpoint of it would not load into the plain module
    (nor the other way round).  Only a module that ``torch.compile`` made
    is unwrapped: torch's compiler is then already imported, so looking it
    up in ``sys.modules`` costs nothing and never imports it.
    """
    eval_frame = sys.modules.get('torch._dynamo.eval_frame')
    optimized = getattr(eval_frame, 'OptimizedModule', None)
    if optimized is None or not isinstance(module, optimized):
        return module, None
    plain = module
    while isinstance(plain, optimized):  # compiled more than once
        plain = plain._orig_mod
    return plain, module


def plain_name(key: str) -> str:
    """``key`` without the segments that compiled submodules add."""
    return '.'.join(p for p in key.split('.') if p != COMPILED_SEGMENT)


def without_compiled_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """A module state with the ``_orig_mod.`` prefix removed, if all have it.

    Checkpoints written before models stored the plain module's state hold
    the compiled wrapper's names; they load again this way.  The caller's
    dictionary is left as it is.
    """
    if not state or not all(k.startswith(COMPILED_PREFIX) for k in state):
        return state
    plain = collections.OrderedDict(state)
    metadata = getattr(state, '_metadata', None)
    if metadata is not None:
        plain._metadata = collections.OrderedDict(metadata)  # type: ignore[attr-defined]
    while plain and all(k.startswith(COMPILED_PREFIX) for k in plain):
        consume_prefix_in_state_dict_if_present(plain, COMPILED_PREFIX)
    return plain


def compile_options(value: object) -> dict[str, Any] | None:
    """``Model(compile=...)`` as ``torch.compile``'s keyword arguments.

    False gives None (no compilation), True the defaults (``{}``), and a
    mapping is checked against ``torch.compile``'s own parameters here,
    when the model is made, rather than at the first forward pass.

    Raises:
        TypeError: for anything but a bool or a mapping, or a mapping with
            an argument ``torch.compile`` does not take (the valid ones
            are listed, with their defaults).

    """
    if isinstance(value, bool):
        return {} if value else None
    if not isinstance(value, Mapping):
        raise TypeError(
            'compile= takes True, False or a dict of torch.compile '
            "arguments (e.g. {'mode': 'max-autotune'}); got "
            f'{type(value).__name__} {value!r}.'
        )
    parameters = inspect.signature(torch.compile).parameters
    valid = {
        name: p.default
        for name, p in parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = [key for key in value if key not in valid]
    if unknown:
        listed = ', '.join(f'{k}={v!r}' for k, v in valid.items())
        raise TypeError(
            f'compile= got {unknown[0]!r}, which torch.compile does not '
            f'take. Its arguments (with defaults): {listed}.'
        )
    return dict(value)
