"""Documenting models and the objects that act on them.

The metadata manager turns models and actors (trainers, evaluators, ...)
into readable records and publishes them as registration events, so that
a YAML dump or a database holds enough to know what ran.  It also refuses
to register one module twice, which would mix two models' logs.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import numbers
import pathlib
from collections.abc import Mapping
from typing import Any

from drytorch.core import exceptions, log_events

__all__ = ['MetadataManager', 'readable']

_MAX_ITEMS = 10
_MAX_DEPTH = 3
_MAX_STR = 200


def readable(obj: Any, depth: int = 0) -> Any:
    """A YAML- and JSON-friendly picture of ``obj``.

    Numbers, strings and small containers stay as they are; dataclasses and
    plain objects become dictionaries of their public attributes; tensors
    and arrays are summarised by shape and dtype (their values are data, not
    metadata).  Depth and length are bounded so that a large object never
    floods the logs.
    """
    if obj is None or isinstance(obj, bool | str):
        if isinstance(obj, str) and len(obj) > _MAX_STR:
            return obj[: _MAX_STR - 3] + '...'
        return obj
    if isinstance(obj, numbers.Number):
        return obj.item() if hasattr(obj, 'item') else obj
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, pathlib.PurePath | datetime.datetime):
        return str(obj)
    shape = getattr(obj, 'shape', None)
    if shape is not None and hasattr(obj, 'dtype'):
        name = obj.__class__.__name__
        return f'{name}(shape={tuple(shape)}, dtype={obj.dtype})'
    if depth >= _MAX_DEPTH:
        return _short_repr(obj)
    if isinstance(obj, Mapping):
        items = list(obj.items())
        out = {str(k): readable(v, depth + 1) for k, v in items[:_MAX_ITEMS]}
        if len(items) > _MAX_ITEMS:
            out['...'] = f'{len(items) - _MAX_ITEMS} more'
        return out
    if isinstance(obj, list | tuple | set | frozenset):
        seq = list(obj)
        out_list = [readable(v, depth + 1) for v in seq[:_MAX_ITEMS]]
        if len(seq) > _MAX_ITEMS:
            out_list.append(f'... {len(seq) - _MAX_ITEMS} more')
        return out_list
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {
            f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
        }
        return {obj.__class__.__name__: readable(fields, depth + 1)}
    describe = getattr(obj, 'describe', None)
    if callable(describe):
        return readable(describe(), depth)
    attrs = getattr(obj, '__dict__', None)
    if attrs:
        public = {k: v for k, v in attrs.items() if not k.startswith('_')}
        if public:
            return {obj.__class__.__name__: readable(public, depth + 1)}
    return _short_repr(obj)


def _short_repr(obj: Any) -> str:
    text = repr(obj)
    if len(text) > _MAX_STR:
        text = text[: _MAX_STR - 3] + '...'
    return text


@dataclasses.dataclass
class _ModelEntry:
    name: str
    ts: datetime.datetime
    module_id: int


class MetadataManager:
    """Registers the models and actors of one run and publishes them."""

    def __init__(self, exp_name: str = '') -> None:
        self.exp_name = exp_name
        self._models: dict[str, _ModelEntry] = {}
        self._modules: dict[int, str] = {}
        self._actors: dict[tuple[str, str], datetime.datetime] = {}

    def reset(self) -> None:
        """Forget every registration (a new run starts)."""
        self._models.clear()
        self._modules.clear()
        self._actors.clear()

    def register_model(self, name: str, module: Any) -> str:
        """Document ``module`` under a unique name and return that name.

        A second model with the same name gets a numbered suffix rather than
        mixing its logs with the first one's.
        """
        if id(module) in self._modules:
            raise exceptions.ModelAlreadyRegisteredError(
                self._modules[id(module)], self.exp_name
            )
        unique = name
        counter = 1
        while unique in self._models:
            unique = f'{name}_{counter}'
            counter += 1
        now = datetime.datetime.now()
        self._models[unique] = _ModelEntry(unique, now, id(module))
        self._modules[id(module)] = unique
        log_events.ModelRegistrationEvent(
            model_name=unique, model_ts=now, architecture_repr=repr(module)
        )
        return unique

    def unregister_model(self, name: str) -> None:
        """Forget a model, so that its module can be wrapped again."""
        entry = self._models.pop(name, None)
        if entry is not None:
            self._modules.pop(entry.module_id, None)

    def register_actor(
        self, actor_name: str, actor: Any, model_name: str
    ) -> None:
        """Document an object that acts on a registered model."""
        model = self._models.get(model_name)
        model_ts = model.ts if model else datetime.datetime.now()
        now = datetime.datetime.now()
        self._actors[(actor_name, model_name)] = now
        metadata = readable(actor)
        if not isinstance(metadata, dict):
            metadata = {'repr': metadata}
        log_events.ActorRegistrationEvent(
            actor_name=actor_name,
            actor_ts=now,
            model_name=model_name,
            model_ts=model_ts,
            metadata=metadata,
        )
