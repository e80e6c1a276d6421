"""Configuration, tags and metrics to Weights & Biases.

The W&B run id is derived from the experiment's name and the run id, so
that every attempt of a preempted run continues the same W&B run.  Steps
are the library's own, derived from epochs, rather than W&B's counter:
offline, a resumed W&B run starts counting from zero again, and online it
counts whatever the earlier attempt sent.
"""

from __future__ import annotations

import functools
import hashlib
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

__all__ = ['Wandb', 'is_available', 'wandb_run_id']

_MAX_TAG = 64  # W&B refuses longer tags
_PROJECT_FORBIDDEN = re.compile(r'[/\\#?%:]')


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


class Wandb(Dumper):
    """Logs to a W&B run per drytorch run, resumed across attempts.

    Metrics are logged as ``model/source/metric`` together with
    ``model/epoch``, which is each model's x-axis.  The step grows with the
    epoch; when epochs go back (a second model, a new training phase) the
    step keeps growing instead, since W&B drops steps that go back.

    A preempted run is marked as preempting and finished without error; a
    failed one is finished with exit code 1.

    Args:
        par_dir: where W&B keeps its local files; the run's folder if None.
        settings: settings passed to ``wandb.init`` (project, entity, mode,
            ...); the project defaults to the experiment's name.

    """

    def __init__(
        self,
        par_dir: str | pathlib.Path | None = None,
        settings: wandb.Settings | None = None,
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('wandb', 'wandb')
        super().__init__(par_dir)
        self.settings = settings
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
        self.par_dir.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {}
        if self.settings is None or not self.settings.project:
            options['project'] = _PROJECT_FORBIDDEN.sub('_', event.exp_name)
        self.run = wandb.init(
            id=wandb_run_id(event.exp_name, event.run_id),
            resume='allow',
            name=event.run_id,
            group=event.exp_name,
            dir=str(self.par_dir),
            config=config_dict(event.config),
            tags=[tag[:_MAX_TAG] for tag in event.tags],
            settings=self.settings,
            **options,
        )
        # Online, a resumed W&B run accepts no step below the last one it
        # holds; an attempt that resumes inside an epoch already logged
        # starts above it (the model/epoch axis keeps charts right).
        self._floor = int(getattr(self.run, 'starting_step', 0) or 0)
        if not event.resumed:
            self._floor = 0

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        run = self.run
        if run is None:
            raise exceptions.NoActiveRunError('Wandb')
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
