"""Configuration, tags and metrics to Weights & Biases.

The W&B run id is derived from the experiment's name and the run id, so
that every attempt of a preempted run continues the same W&B run.  Steps
are the library's own, derived from epochs, rather than W&B's counter:
offline, a resumed W&B run starts counting from zero again, and online it
counts whatever the earlier attempt sent.

What the user sets wins.  ``wandb.init`` lets its keyword arguments
override the ``settings`` object it is given, so the tracker passes no
keyword argument for an option: it copies the user's settings, fills the
options the user left unset (see :data:`LIBRARY_DEFAULTS`) and passes the
copy alone.
"""

from __future__ import annotations

import collections.abc
import functools
import hashlib
import os
import pathlib
import re
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.trackers.base_classes import (
    Dumper,
    config_dict,
    module_available,
)

if TYPE_CHECKING:
    import wandb

__all__ = ['LIBRARY_DEFAULTS', 'Wandb', 'is_available', 'wandb_run_id']

_MAX_TAG = 64  # W&B refuses longer tags
_PROJECT_FORBIDDEN = re.compile(r'[/\\#?%:]')

LIBRARY_DEFAULTS: dict[str, str] = {
    'project': 'WANDB_PROJECT',
    'run_id': 'WANDB_RUN_ID',
    'run_name': 'WANDB_NAME',
    'run_group': 'WANDB_RUN_GROUP',
    'run_tags': 'WANDB_TAGS',
    'root_dir': 'WANDB_DIR',
    'resume': 'WANDB_RESUME',
}
"""The settings the library fills, and the variable that also sets each.

An option is the user's when their ``wandb.Settings`` sets it to something
other than None (``model_fields_set``: pydantic's record of the fields
given or assigned): it then reaches ``wandb.init`` untouched.  Next comes
the option's W&B environment variable, then the library's default:
``project`` the experiment's name (``/ \\ # ? % :`` made ``_``),
``run_id`` :func:`wandb_run_id`, ``run_name`` the run id, ``run_group``
the experiment's name, ``run_tags`` the experiment's tags (cut to 64
characters), ``root_dir`` the tracker's folder and ``resume`` ``'allow'``,
so that a preempted run resumes.  A ``par_dir`` given to the tracker beats
``$WANDB_DIR``.
"""


def is_available() -> bool:
    """Whether wandb can be imported."""
    return module_available('wandb')


def wandb_run_id(exp_name: str, run_id: str) -> str:
    """The W&B run id of a drytorch run: same inputs, same id.

    W&B ids allow few characters and experiment names are free text, so
    the id is a digest rather than the names themselves.
    """
    digest = hashlib.sha1(f'{exp_name}\0{run_id}'.encode())
    return digest.hexdigest()[:16]


def _given_fields(settings: wandb.Settings) -> set[str]:
    """The library-filled options that ``settings`` sets.

    None counts as unset, as ``wandb.init`` treats its keyword arguments:
    a configuration file that writes ``project: null`` means no choice.
    """
    return {
        name
        for name in settings.model_fields_set & LIBRARY_DEFAULTS.keys()
        if getattr(settings, name) is not None
    }


def _from_environment(name: str) -> Any:
    """The value the user's W&B variable gives the option, if any.

    Read here at each run rather than left to wandb: wandb reads the
    environment once per process, when it first sets up, so a variable
    exported later would otherwise be ignored.
    """
    text = os.environ.get(LIBRARY_DEFAULTS[name], '').strip()
    if not text:
        return None
    if name == 'run_tags':
        return tuple(tag.strip() for tag in text.split(',') if tag.strip())
    return text


class Wandb(Dumper):
    """Logs to a W&B run per drytorch run, resumed across attempts.

    Metrics are logged as ``model/source/metric`` together with
    ``model/epoch``, which is each model's x-axis.  The step grows with the
    epoch; when epochs go back (a second model, a new training phase) the
    step keeps growing instead, since W&B drops steps that go back.

    A preempted run is marked as preempting and finished without error; a
    failed one is finished with exit code 1.

    ``wandb.init`` runs when the run starts, on the trackers' worker
    thread; it needs no main thread.

    Args:
        par_dir: where W&B keeps its local files (its ``root_dir``), laid
            out as every dumper's (see ``Dumper``); without it
            ``settings.root_dir``, else ``$WANDB_DIR``, else the run's
            folder.
        settings: everything ``wandb.init`` takes (``wandb.Settings`` or a
            mapping of its fields): what is set there reaches ``wandb.init``
            as is, and only the options left unset get the library's
            defaults (see :data:`LIBRARY_DEFAULTS`).  A copy is kept, so
            later changes to the object do not apply.

    Raises:
        MissingDependencyError: wandb is not installed.
        ValueError: both ``par_dir`` and ``settings.root_dir`` are given.
        pydantic.ValidationError: a mapping holds an invalid option.

    """

    def __init__(
        self,
        par_dir: str | pathlib.Path | None = None,
        settings: wandb.Settings | collections.abc.Mapping[str, Any] | None = (
            None
        ),
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('wandb', 'wandb')
        import wandb

        super().__init__(par_dir)
        if settings is None:
            settings = wandb.Settings()
        elif isinstance(settings, collections.abc.Mapping):
            settings = wandb.Settings(**settings)
        else:
            # wandb.init writes into the settings object it is given
            settings = settings.model_copy()
        # par_dir is the folder W&B calls root_dir: two values for one
        # option.  $WANDB_DIR is no conflict: an argument beats the
        # environment, as in wandb.init.
        if par_dir is not None and 'root_dir' in _given_fields(settings):
            raise ValueError(
                f'Wandb got two folders: par_dir={str(par_dir)!r} and '
                f'settings.root_dir={settings.root_dir!r}; they are the same '
                'option, so give only one of them.'
            )
        self.settings: wandb.Settings = settings
        self.run: wandb.Run | None = None
        self._last_step = 0
        self._offset = 0
        self._floor = 0
        self._models: set[str] = set()
        self._exit_code = 1

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        import wandb

        super().notify(event)
        self._finish()
        self._last_step = 0
        self._offset = 0
        self._models.clear()
        self._exit_code = 1
        self.run = wandb.init(
            config=config_dict(event.config),
            settings=self.run_settings(event),
        )
        # Online, a resumed W&B run accepts no step below the last one it
        # holds; an attempt that resumes inside an epoch already logged
        # starts above it (the model/epoch axis keeps charts right).
        self._floor = int(getattr(self.run, 'starting_step', 0) or 0)
        if not event.resumed:
            self._floor = 0

    def run_settings(
        self, event: log_events.StartExperimentEvent
    ) -> wandb.Settings:
        """The settings of this run: the user's, defaults where unset.

        A fresh copy each run, as ``wandb.init`` changes the object it gets
        and the next run must start from the user's settings again.
        """
        settings = self.settings.model_copy()
        given = _given_fields(settings)
        defaults: dict[str, Any] = {
            'project': _PROJECT_FORBIDDEN.sub('_', event.exp_name),
            'run_id': wandb_run_id(event.exp_name, event.run_id),
            'run_name': event.run_id,
            'run_group': event.exp_name,
            'run_tags': tuple(tag[:_MAX_TAG] for tag in event.tags),
            'resume': 'allow',
        }
        for name, default in defaults.items():
            if name not in given:
                from_env = _from_environment(name)
                setattr(
                    settings, name, default if from_env is None else from_env
                )
        if 'root_dir' not in given:
            settings.root_dir = self._root_dir()
        return settings

    def _root_dir(self) -> str:
        """``par_dir`` if given, else ``$WANDB_DIR``, else the run's folder."""
        from_env = _from_environment('root_dir')
        if self._par_dir is None and from_env is not None:
            return from_env
        self.par_dir.mkdir(parents=True, exist_ok=True)
        return str(self.par_dir)

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        run = self.run
        if run is None:
            raise exceptions.NoActiveExperimentError('Wandb')
        model = event.model_name
        if model not in self._models:
            run.define_metric(f'{model}/*', step_metric=f'{model}/epoch')
            self._models.add(model)
        prefix = f'{model}/{event.source_name}'
        row = {f'{prefix}/{k}': float(v) for k, v in event.metrics.items()}
        row[f'{model}/epoch'] = event.epoch
        run.log(row, step=self._step(event.epoch))
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StopExperimentEvent) -> None:
        if event.preempted and self.run is not None:
            mark = getattr(self.run, 'mark_preempting', None)
            if mark is not None:
                mark()
        self._exit_code = 1 if event.status == 'failed' else 0
        return super().notify(event)

    @override
    def clean_up(self) -> None:
        """Finish the W&B run (exit code 1 unless the run stopped well)."""
        self._finish()
        return super().clean_up()

    def _step(self, epoch: int) -> int:
        """The step of an epoch: the epoch, shifted to never go back."""
        if epoch + self._offset < self._floor:
            self._offset = self._floor - epoch
        elif epoch + self._offset < self._last_step:
            self._offset = self._last_step + 1 - epoch
        self._last_step = epoch + self._offset
        return self._last_step

    def _finish(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.finish(exit_code=self._exit_code)
