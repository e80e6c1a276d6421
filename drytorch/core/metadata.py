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
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from drytorch.core import exceptions, log_events
from drytorch.core.folders import FILE_ROOM, validate_folder_name

__all__ = ['MetadataManager', 'readable']

_MAX_ITEMS = 10
_MAX_DEPTH = 3
_MAX_STR = 200


def readable(
    obj: Any,
    depth: int = 0,
    *,
    max_items: int | None = _MAX_ITEMS,
    max_depth: int = _MAX_DEPTH,
    max_str: int | None = _MAX_STR,
) -> Any:
    """A YAML- and JSON-friendly picture of ``obj``.

    Numbers, strings and small containers stay as they are; dataclasses and
    plain objects become dictionaries of their public attributes; tensors
    and arrays are summarised by shape and dtype (their values are data, not
    metadata).  Depth and length are bounded so that a large object never
    floods the logs; dumpers that must keep everything (a configuration, an
    architecture) pass ``max_items=None`` and ``max_str=None``.

    Args:
        obj: the object to describe.
        depth: the nesting level of ``obj`` (for recursive calls).
        max_items: items kept per container; None keeps all.
        max_depth: nesting level from which objects become their repr.
        max_str: characters kept per string; None keeps all.

    """
    limits: dict[str, Any] = {
        'max_items': max_items,
        'max_depth': max_depth,
        'max_str': max_str,
    }
    if obj is None or isinstance(obj, bool | str):
        if isinstance(obj, str) and max_str is not None and len(obj) > max_str:
            return obj[: max_str - 3] + '...'
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
    if depth >= max_depth:
        return _short_repr(obj, max_str)
    if isinstance(obj, Mapping):
        items = list(obj.items())
        kept = items if max_items is None else items[:max_items]
        out = {str(k): readable(v, depth + 1, **limits) for k, v in kept}
        if len(kept) < len(items):
            out['...'] = f'{len(items) - len(kept)} more'
        return out
    if isinstance(obj, list | tuple | set | frozenset):
        seq = list(obj)
        kept_seq = seq if max_items is None else seq[:max_items]
        out_list = [readable(v, depth + 1, **limits) for v in kept_seq]
        if len(kept_seq) < len(seq):
            out_list.append(f'... {len(seq) - len(kept_seq)} more')
        return out_list
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {
            f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
        }
        return {obj.__class__.__name__: readable(fields, depth + 1, **limits)}
    describe = getattr(obj, 'describe', None)
    if callable(describe):
        return readable(describe(), depth, **limits)
    attrs = getattr(obj, '__dict__', None)
    if attrs:
        public = {k: v for k, v in attrs.items() if not k.startswith('_')}
        if public:
            return {
                obj.__class__.__name__: readable(public, depth + 1, **limits)
            }
    return _short_repr(obj, max_str)


def _short_repr(obj: Any, max_str: int | None = _MAX_STR) -> str:
    text = repr(obj)
    if max_str is not None and len(text) > max_str:
        text = text[: max_str - 3] + '...'
    return text


def _reference(obj: Any) -> Callable[[], Any]:
    """A weak reference to ``obj`` where it allows one, else a strong one."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


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
        # id of each registered module -> its model name and a reference
        # to it: a dead module's id may be reused by a new object.
        self._modules: dict[int, tuple[str, Callable[[], Any]]] = {}
        self._actors: dict[tuple[str, str], datetime.datetime] = {}

    def reset(self) -> None:
        """Forget every registration (a new run starts)."""
        self._models.clear()
        self._modules.clear()
        self._actors.clear()

    def register_model(self, name: str, module: Any) -> str:
        """Document ``module`` under a unique name and return that name.

        A second model with the same name gets a numbered suffix rather than
        mixing its logs with the first one's.  The name becomes a folder of
        every dumper (``csv_metrics/<model>/``), so it is checked first.
        """
        validate_folder_name('Model', name)
        known = self._modules.get(id(module))
        if known is not None and known[1]() is module:
            raise exceptions.ModuleAlreadyRegisteredError(
                known[0], self.exp_name
            )
        unique = name
        counter = 1
        while unique in self._models:
            unique = f'{name}_{counter}'
            counter += 1
        now = datetime.datetime.now()
        self._models[unique] = _ModelEntry(unique, now, id(module))
        self._modules[id(module)] = (unique, _reference(module))
        log_events.ModelRegistrationEvent(
            model_name=unique, model_ts=now, architecture_repr=repr(module)
        )
        return unique

    def unregister_model(self, name: str) -> None:
        """Forget a model, so that its module can be wrapped again."""
        entry = self._models.pop(name, None)
        if entry is None:
            return
        known = self._modules.get(entry.module_id)
        if known is not None and known[0] == name:
            del self._modules[entry.module_id]

    def register_actor(
        self, actor_name: str, actor: Any, model_name: str
    ) -> None:
        """Document an object that acts on a registered model.

        The actor's name becomes a file (``<model>/<actor>.yaml``), so it is
        checked like a source name.
        """
        validate_folder_name('Actor', actor_name, room=FILE_ROOM)
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
