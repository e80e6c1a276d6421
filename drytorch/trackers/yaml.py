"""Metadata as YAML in the run's folder: config, models, actors, attempts."""

from __future__ import annotations

import datetime
import functools
import pathlib
from typing import Any

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.core.metadata import readable
from drytorch.core.registry import atomic_write_text
from drytorch.trackers.base_classes import Dumper, module_available

__all__ = ['YamlDumper', 'is_available']


def is_available() -> bool:
    """Whether PyYAML can be imported."""
    return module_available('yaml')


# A dump is the record of what ran: no container or string is cut short
# (only nesting is bounded, against objects that refer to themselves).
_DUMP_DEPTH = 32


def _dump(path: pathlib.Path, data: Any) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    picture = readable(
        data, max_items=None, max_depth=_DUMP_DEPTH, max_str=None
    )
    text = yaml.safe_dump(
        picture, sort_keys=False, allow_unicode=True, width=79
    )
    atomic_write_text(path, text)


class YamlDumper(Dumper):
    """Writes the run's metadata as YAML files.

    Layout under ``metadata`` in the run's folder (``<par_dir>/<experiment>/
    runs/<run id>``, see :class:`Dumper`): ``config.yaml``,
    ``attempts.yaml`` (one entry per attempt of the run, so a preempted and
    resumed run shows each), and ``<model>/architecture.yaml`` and
    ``<model>/<actor>.yaml``.

    Args:
        par_dir: the folder under which each run's folder goes; the
            experiment's ``par_dir`` when None.

    """

    def __init__(self, par_dir: str | pathlib.Path | None = None) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('PyYAML', 'recommended')
        super().__init__(par_dir)

    @property
    def metadata_dir(self) -> pathlib.Path:
        """Where the YAML files go."""
        return self.par_dir / 'metadata'

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        super().notify(event)
        _dump(self.metadata_dir / 'config.yaml', event.config)
        self._append_attempt(
            {
                'attempt': event.attempt,
                'run_id': event.run_id,
                'resumed': event.resumed,
                'started': event.run_ts.isoformat(timespec='seconds'),
                'tags': event.tags,
            }
        )

    @notify.register
    def _(self, event: log_events.StopExperimentEvent) -> None:
        self._append_attempt(
            {
                'stopped': datetime.datetime.now().isoformat(
                    timespec='seconds'
                ),
                'status': event.status,
            },
            merge=True,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.ModelRegistrationEvent) -> None:
        _dump(
            self.metadata_dir / event.model_name / 'architecture.yaml',
            {
                'model': event.model_name,
                'registered': event.model_ts.isoformat(timespec='seconds'),
                'architecture': event.architecture_repr,
            },
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.ActorRegistrationEvent) -> None:
        _dump(
            self.metadata_dir / event.model_name / f'{event.actor_name}.yaml',
            event.metadata,
        )
        return super().notify(event)

    def _append_attempt(
        self, entry: dict[str, Any], merge: bool = False
    ) -> None:
        import yaml

        path = self.metadata_dir / 'attempts.yaml'
        attempts: list[dict[str, Any]] = []
        if path.exists():
            attempts = yaml.safe_load(path.read_text()) or []
        if merge and attempts:
            attempts[-1].update(entry)
        else:
            attempts.append(entry)
        _dump(path, attempts)
