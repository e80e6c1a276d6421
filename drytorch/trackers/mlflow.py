"""Configuration, tags, metrics and architectures to an MLflow run.

Compute nodes often have no internet, so the store is what the cluster
provides: a self-hosted ``mlflow server`` (``http://host:port``, the client
needs only ``mlflow-skinny``) or a local database
(``sqlite:///path/mlflow.db``, which needs the full ``mlflow``).  The URI is
checked at construction: a wrong scheme, a server that does not answer or a
missing package fails before training starts.

Only :class:`mlflow.MlflowClient` is used, with explicit run ids, never the
fluent ``mlflow.start_run`` API: its active run is thread-local, and on rank
zero trackers are notified on a background thread, not the one that built
them.

Every attempt of a drytorch run writes to one MLflow run.  That run carries
the tag :data:`RUN_KEY_TAG`, a digest of the experiment's name and the run
id; a resumed attempt searches for it, so nothing needs to be stored beside
the checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.core.tracking import Tracker
from drytorch.trackers.base_classes import config_dict, module_available

if TYPE_CHECKING:
    import mlflow

__all__ = [
    'RUN_KEY_TAG',
    'STATUS',
    'MLflow',
    'MLflowNotRunningError',
    'MLflowURIError',
    'is_available',
    'mlflow_run_key',
]

RUN_KEY_TAG = 'drytorch.run_key'
"""The tag by which a resumed attempt finds its MLflow run again."""

STATUS: dict[str, str] = {
    'completed': 'FINISHED',
    'failed': 'FAILED',
    'preempted': 'KILLED',
}
"""MLflow's run status for each way a drytorch run stops.

A preempted run is KILLED rather than FAILED: it was stopped from outside
and comes back; its next attempt sets it RUNNING again.  A stop with a
status not listed here, or none at all (the tracker was dropped), is
FAILED: the record may be incomplete.
"""

# MLflow's limits (mlflow.utils.validation), repeated so that they hold
# with every supported version; a longer value would fail the whole batch.
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_BATCH = 100  # params or tags per log_batch request
_NOT_IN_NAME = re.compile(r'[^\w.\- /]')  # ':' only off Windows
_PROBE_TIMEOUT_S = 5.0
_SCHEMES = 'http(s)://host:port of an `mlflow server`, sqlite:///path/to.db'

_T = TypeVar('_T')


def is_available() -> bool:
    """Whether mlflow (or mlflow-skinny) can be imported."""
    return module_available('mlflow')


def mlflow_run_key(exp_name: str, run_id: str) -> str:
    """The value of :data:`RUN_KEY_TAG` for a drytorch run.

    A digest, so that a search filter never has to quote free text (an
    experiment name may hold quotes and backticks).
    """
    return hashlib.sha1(f'{exp_name}\0{run_id}'.encode()).hexdigest()


class MLflowURIError(exceptions.TrackerError, ValueError):
    """Raised when MLflow cannot use the tracking URI it is given."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(
            f'MLflow cannot track to {uri!r}: {reason.rstrip(".")}. Pass '
            f'tracking_uri= with {_SCHEMES} (needs the full `pip install '
            'mlflow`), or set $MLFLOW_TRACKING_URI.'
        )


class MLflowNotRunningError(exceptions.TrackerError):
    """Raised when no server answers at an http(s) tracking URI."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(
            f'No MLflow server answers at {uri} ({reason}). Start one '
            'first, e.g. `mlflow server --backend-store-uri '
            'sqlite:///mlflow.db --host 127.0.0.1 --port 5000` (see '
            'slurm/mlflow/up.sh), or pass the address it listens on.'
        )


class MLflow(Tracker):
    """Logs each drytorch run to one MLflow run, resumed across attempts.

    What goes where:

    - the configuration as parameters, nested keys joined by ``.``
      (``optim.lr``), lists as JSON, values cut to MLflow's 6000 characters;
    - the experiment's tags as run tags with empty values, beside
      ``drytorch.experiment``, ``drytorch.run_id``, ``drytorch.attempt``
      and :data:`RUN_KEY_TAG`; the MLflow run's name is the run id;
    - metrics as ``model/source/metric`` with the epoch as step (characters
      MLflow refuses in names become ``_``);
    - each model's architecture as the text artifact
      ``architecture/<model>.txt``;
    - the status when the run stops (see :data:`STATUS`).

    **Each step once.**  MLflow only appends to a metric's history.  A
    resumed attempt restarts from its checkpoint and logs again the epochs
    between that checkpoint and where the earlier attempt stopped (all of
    them, after a SIGKILL).  So a value is sent only for an epoch above the
    last step that metric holds in the MLflow run: the resumed attempt
    reads those last steps when it starts, and the replayed epochs keep the
    earlier attempt's values, which on resume are the same numbers (the
    checkpoint restores data order and random state).  Within one attempt
    the same rule holds; there it drops real values (a model trained again
    from an earlier checkpoint), so a warning names the source once.

    Args:
        tracking_uri: where MLflow stores runs; None: MLflow's own choice
            (``$MLFLOW_TRACKING_URI``, else its local default), resolved
            now.
        experiment: the MLflow experiment; the drytorch experiment's name
            when None.
        artifact_location: where an experiment this tracker creates keeps
            its artifacts; for a ``sqlite:`` store, beside the database
            file by default (``mlartifacts/``), for a server, the server's
            choice.

    Raises:
        MissingDependencyError: mlflow is not installed.
        MLflowURIError: MLflow has no store for the URI, or its package
            for that store is missing.
        MLflowNotRunningError: nothing answers at an http(s) URI.
        ValueError: the experiment name is empty or exists as deleted.

    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('mlflow', 'mlflow')
        import mlflow

        super().__init__()
        if experiment is not None:
            _check_experiment_name(experiment)
        uri = tracking_uri or mlflow.get_tracking_uri()
        self.tracking_uri = uri
        self.experiment = experiment
        self.artifact_location = artifact_location or _default_artifacts(uri)
        if urllib.parse.urlsplit(uri).scheme in {'http', 'https'}:
            _probe_server(uri)
        self.client = _client(uri, given=tracking_uri is not None)
        if experiment is not None:
            self._check_not_deleted(experiment)
        self.run_id: str | None = None
        self._status = 'FAILED'
        self._last_step: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        self._warned: set[tuple[str, str]] = set()
        # (kind, MLflow name) -> the drytorch name it stands for
        self._names: dict[tuple[str, str], str] = {}
        self._warned_names: set[tuple[str, str]] = set()

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        from mlflow.entities import Param, RunTag

        self.clean_up()  # a run the last one left open
        exp_id = self._experiment_id(self.experiment or event.exp_name)
        key = mlflow_run_key(event.exp_name, event.run_id)
        tags = {
            RUN_KEY_TAG: key,
            'drytorch.experiment': event.exp_name,
            'drytorch.run_id': event.run_id,
            'drytorch.attempt': str(event.attempt),
        }
        for tag in event.tags:
            tags[self._key(tag or '_', 'tag')] = ''
        params = {
            self._key(name, 'parameter'): text
            for name, text in _flat_params(config_dict(event.config))
        }
        found = self._find_run(exp_id, key) if event.resumed else None
        if found is None:
            run = self.client.create_run(
                exp_id, tags=tags, run_name=event.run_id
            )
            run_id = run.info.run_id
        else:
            run_id = found.info.run_id
            self.client.update_run(run_id, status='RUNNING')
            self._batches(run_id, tags=[RunTag(*t) for t in tags.items()])
            params = self._new_params(found.data.params, params)
            self._last_step = self._held_steps(run_id, found.data.metrics)
        self.run_id = run_id
        self._batches(run_id, params=[Param(*p) for p in params.items()])

    @notify.register
    def _(self, event: log_events.ModelRegistrationEvent) -> None:
        run_id = self._active()
        name = event.model_name.replace('/', '_').replace('\\', '_')
        self.client.log_text(
            run_id, event.architecture_repr, f'architecture/{name}.txt'
        )

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        from mlflow.entities import Metric

        run_id = self._active()
        prefix = f'{event.model_name}/{event.source_name}'
        stamp = int(time.time() * 1000)
        metrics = []
        for metric, number in event.metrics.items():
            key = self._key(f'{prefix}/{metric}', 'metric')
            if event.epoch <= self._last_step.get(key, -1):
                self._skipped(key, event)
                continue
            self._last_step[key] = self._sent[key] = event.epoch
            metrics.append(Metric(key, float(number), stamp, event.epoch))
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    @notify.register
    def _(self, event: log_events.StopExperimentEvent) -> None:
        self._status = STATUS.get(event.status, 'FAILED')
        return super().notify(event)

    @override
    def clean_up(self) -> None:
        """Set the run's final status; FAILED unless a stop said otherwise."""
        run_id, self.run_id = self.run_id, None
        status, self._status = self._status, 'FAILED'
        self._last_step.clear()
        self._sent.clear()
        self._warned.clear()
        self._names.clear()
        self._warned_names.clear()
        if run_id is not None:
            self.client.set_terminated(run_id, status)
        return super().clean_up()

    def _key(self, name: str, kind: str) -> str:
        """The MLflow name of ``name``, never one another name has.

        Cleaning can map two names to one (``acc:top1`` and ``acc_top1``);
        the second then gets a suffix from a digest of its own name, the
        same in every attempt, and a warning says so once.
        """
        key = _name(name)
        owner = self._names.setdefault((kind, key), name)
        if owner == name:
            return key
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        unique = f'{key[: _MAX_KEY - 9]}_{digest}'
        known = self._names.setdefault((kind, unique), name) == name
        if known and (kind, unique) not in self._warned_names:
            self._warned_names.add((kind, unique))
            warnings.warn(
                exceptions.DryTorchWarning(
                    f'MLflow: the {kind} {name!r} would be stored as '
                    f'{key!r}, the name of {owner!r}; it is stored as '
                    f'{unique!r}.'
                ),
                stacklevel=2,
            )
        return unique

    def _active(self) -> str:
        if self.run_id is None:
            raise exceptions.NoActiveExperimentError('MLflow')
        return self.run_id

    def _experiment_id(self, name: str) -> str:
        """The id of the MLflow experiment ``name``, created if missing."""
        from mlflow.exceptions import MlflowException

        found = self._check_not_deleted(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(
                self.client.create_experiment(
                    name, artifact_location=self.artifact_location
                )
            )
        except MlflowException as err:
            # another job of a sweep created it in the meantime
            if err.error_code != 'RESOURCE_ALREADY_EXISTS':
                raise
        found = self.client.get_experiment_by_name(name)
        if found is None:
            raise exceptions.TrackerError(
                f'MLflow experiment {name!r} was created and is gone.'
            )
        return str(found.experiment_id)

    def _check_not_deleted(
        self, name: str
    ) -> mlflow.entities.Experiment | None:
        found = self.client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == 'deleted':
            raise ValueError(
                f'MLflow experiment {name!r} is deleted (in the trash of '
                f'{self.tracking_uri}); restore it with `mlflow experiments '
                f'restore --experiment-id {found.experiment_id}`, or choose '
                'another name with MLflow(experiment=...).'
            )
        return found

    def _find_run(self, exp_id: str, key: str) -> mlflow.entities.Run | None:
        """The newest live MLflow run of a drytorch run, if any."""
        runs = self.client.search_runs(
            [exp_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
            max_results=1,
            order_by=['attributes.start_time DESC'],
        )
        return runs[0] if runs else None

    def _held_steps(
        self, run_id: str, latest: Mapping[str, float]
    ) -> dict[str, int]:
        """Per metric of the run, the last step it holds."""
        held = {}
        for key in latest:
            history = self.client.get_metric_history(run_id, key)
            held[key] = max((point.step for point in history), default=-1)
        return held

    def _new_params(
        self, held: Mapping[str, str], params: Mapping[str, str]
    ) -> dict[str, str]:
        """The parameters the run lacks; a warning for changed ones.

        MLflow refuses to change a logged parameter, so a configuration
        edited between attempts keeps its first values there.
        """
        changed = [k for k, v in params.items() if held.get(k, v) != v]
        if changed:
            warnings.warn(
                exceptions.DryTorchWarning(
                    f'The configuration changed since the last attempt '
                    f'({", ".join(changed[:5])}); MLflow parameters cannot '
                    'change, so the run keeps the first values.'
                ),
                stacklevel=2,
            )
        return {k: v for k, v in params.items() if k not in held}

    def _skipped(self, key: str, event: log_events.MetricEvent) -> None:
        source = (event.model_name, event.source_name)
        if event.epoch > self._sent.get(key, -1) or source in self._warned:
            return  # a replay of what an earlier attempt logged: silent
        self._warned.add(source)
        warnings.warn(
            exceptions.DryTorchWarning(
                f'{event.model_name}/{event.source_name} logged epoch '
                f'{event.epoch} again in this attempt; MLflow keeps one '
                'value per step, so the MLflow run keeps the first ones '
                'until the epochs pass the last one logged.'
            ),
            stacklevel=2,
        )

    def _batches(self, run_id: str, **entities: list[Any]) -> None:
        for name, items in entities.items():
            for chunk in _chunks(items, _MAX_BATCH):
                self.client.log_batch(run_id, **{name: chunk})


def _check_experiment_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f'MLflow(experiment={name!r}): the experiment name must be a '
            'non-empty string; or None for the drytorch experiment name.'
        )
    if len(name) > 500:
        raise ValueError(
            f'MLflow(experiment={name[:40]!r}...) has {len(name)} '
            'characters; MLflow allows at most 500.'
        )


def _default_artifacts(uri: str) -> str | None:
    """For a sqlite store, a folder beside the database file.

    MLflow's own default is ``./mlruns`` of whatever folder the process
    started in, which scatters artifacts away from the database.
    """
    if not uri.startswith('sqlite:///'):
        return None
    path = uri.removeprefix('sqlite:///').split('?', 1)[0]
    if not path or path == ':memory:':
        return None
    folder = path.rsplit('/', 1)[0] if '/' in path else '.'
    return (pathlib.Path(folder).resolve() / 'mlartifacts').as_uri()


def _probe_server(uri: str) -> None:
    """Fail now when nothing answers at an http(s) URI.

    A bare request with a short timeout: MLflow's own client retries a
    refused connection with back-off for minutes.  Any HTTP answer (even
    401 behind authentication) or a TLS handshake that MLflow's own
    certificate settings may accept counts as a server being there.
    """
    try:
        with urllib.request.urlopen(
            uri.rstrip('/') + '/health', timeout=_PROBE_TIMEOUT_S
        ):
            return
    except urllib.error.HTTPError:
        return
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLError):
            return
        raise MLflowNotRunningError(uri, str(err.reason)) from err
    except (OSError, ValueError) as err:
        raise MLflowNotRunningError(uri, str(err)) from err


def _client(uri: str, given: bool) -> mlflow.MlflowClient:
    """A client for ``uri``, whose store MLflow resolves at once."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    where = '' if given else ' (MLflow default: tracking_uri and '
    where += '' if given else '$MLFLOW_TRACKING_URI unset)'
    try:
        return MlflowClient(tracking_uri=uri)
    except ImportError as err:
        raise MLflowURIError(
            uri + where,
            f'its database store needs the full mlflow package, not only '
            f'mlflow-skinny ({err}); `pip install mlflow`, or track to an '
            'MLflow server',
        ) from err
    except MlflowException as err:
        scheme = urllib.parse.urlsplit(uri).scheme
        reason = str(err.message)
        if 'unsupported URI' in str(err.message):
            reason = f'MLflow knows no store for the scheme {scheme!r}'
        raise MLflowURIError(uri + where, reason) from err


def _name(key: str) -> str:
    """``key`` as MLflow accepts a metric, parameter or tag name.

    Refused characters become ``_``, and so do path segments that MLflow
    would read as other names (empty, ``.``, ``..``).
    """
    parts = []
    for part in _NOT_IN_NAME.sub('_', key).split('/'):
        parts.append(
            part if part.strip('.') else part.replace('.', '_') or '_'
        )
    return '/'.join(parts)[:_MAX_KEY]


def _flat_params(
    config: Mapping[str, Any], prefix: str = ''
) -> Iterator[tuple[str, str]]:
    """(dotted name, text) of each leaf of a nested configuration."""
    for key, item in config.items():
        name = f'{prefix}{key}'
        if isinstance(item, Mapping) and item:
            yield from _flat_params(item, f'{name}.')
            continue
        text = item if isinstance(item, str) else json.dumps(item, default=str)
        yield name, text[:_MAX_PARAM_VALUE]


def _chunks(items: list[_T], size: int) -> Iterable[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
