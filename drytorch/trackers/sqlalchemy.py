"""Metrics in a SQL database through SQLAlchemy; also a metric loader.

The schema (see ``_sql_schema``) is normalised: ``experiments`` by name,
their ``runs`` by run id (one row per run, whatever the number of
attempts), each run's ``tags``, the ``sources`` (model and source names)
that logged in a run, and the ``metric_values`` of each source at each
epoch.  Tables are created on first use.  Each event is written in one
transaction, so that a crash never leaves half an epoch behind.
"""

from __future__ import annotations

import datetime
import functools
import json
import pathlib
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.trackers._sql_schema import get_or_insert, no_fsync, schema
from drytorch.trackers.base_classes import (
    Dumper,
    MetricHistory,
    MetricLoader,
    config_dict,
    module_available,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ['SQLConnection', 'is_available']


def is_available() -> bool:
    """Whether SQLAlchemy can be imported."""
    return module_available('sqlalchemy')


class SQLConnection(Dumper, MetricLoader):
    """Stores runs, tags and metrics in a database.

    Without ``engine`` the database is the SQLite file ``metrics.db`` in
    the folder (the run's folder by default), written without fsync (see
    ``_sql_schema.no_fsync``); any SQLAlchemy engine or URL works
    otherwise, e.g. ``postgresql+psycopg://user@host/db``.

    A resumed run keeps its row.  The first value a model's source logs in
    an attempt, at epoch ``e``, first deletes that source's values from
    ``e`` on: those an earlier attempt wrote past the checkpoint it was
    resumed from.  Every epoch is therefore stored once.

    As a loader, a source's history is its values in the experiment's runs
    taken in order, each run replacing the values from its first epoch on.

    Args:
        engine: an engine or URL; the SQLite file when None.
        par_dir: the folder of the SQLite file; the run's folder when None.

    """

    def __init__(
        self,
        engine: sa.Engine | str | None = None,
        par_dir: str | pathlib.Path | None = None,
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('sqlalchemy', 'sql')
        super().__init__(par_dir)
        self._given = engine
        self._engine: sa.Engine | None = None
        self._tables_ready = False
        self._run_pk: int | None = None
        self._attempt = 1
        self._source_ids: dict[tuple[str, str], int] = {}

    @property
    def engine(self) -> sa.Engine:
        """The engine in use, created on first need."""
        if self._engine is None:
            import sqlalchemy as sa

            given = self._given
            if given is None:
                self.par_dir.mkdir(parents=True, exist_ok=True)
                given = sa.create_engine(
                    f'sqlite:///{self.par_dir / "metrics.db"}'
                )
                sa.event.listen(given, 'connect', no_fsync)
            elif isinstance(given, str):
                given = sa.create_engine(given)
            self._engine = given
        if not self._tables_ready:
            schema().metadata.create_all(self._engine)
            self._tables_ready = True
        return self._engine

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        import sqlalchemy as sa

        super().notify(event)
        self._attempt = event.attempt
        self._source_ids.clear()
        s = schema()
        state = {
            'started_at': event.run_ts,
            'stopped_at': None,
            'status': 'running',
            'attempts': event.attempt,
            'config': json.dumps(config_dict(event.config)),
        }
        with self.engine.begin() as conn:
            exp_pk = get_or_insert(
                conn,
                s.experiments,
                {'name': event.exp_name},
                {'created_at': event.run_ts},
            )
            # a resumed run (same experiment name and run id) keeps its row
            key = {'experiment_id': exp_pk, 'name': event.run_id}
            run_pk = get_or_insert(conn, s.runs, key, state)
            conn.execute(
                sa.update(s.runs).where(s.runs.c.id == run_pk).values(**state)
            )
            for tag in dict.fromkeys(event.tags):
                get_or_insert(conn, s.tags, {'run_id': run_pk, 'name': tag})
        self._run_pk = run_pk

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        import sqlalchemy as sa

        tables = schema()
        key = (event.model_name, event.source_name)
        with self.engine.begin() as conn:
            source_pk = self._source_ids.get(key)
            if source_pk is None:
                source_pk = get_or_insert(
                    conn,
                    tables.sources,
                    {
                        'run_id': self._run_pk,
                        'model_name': event.model_name,
                        'source_name': event.source_name,
                    },
                )
                # first value of this source in this attempt: drop what an
                # earlier attempt logged from this epoch on
                conn.execute(
                    sa.delete(tables.values).where(
                        tables.values.c.source_id == source_pk,
                        tables.values.c.epoch >= event.epoch,
                    )
                )
                self._source_ids[key] = source_pk
            rows = [
                {
                    'source_id': source_pk,
                    'epoch': event.epoch,
                    'name': name,
                    'value': float(value),
                    'attempt': self._attempt,
                }
                for name, value in event.metrics.items()
            ]
            if rows:
                conn.execute(sa.insert(tables.values), rows)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StopExperimentEvent) -> None:
        import sqlalchemy as sa

        runs = schema().runs
        if self._run_pk is not None:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(runs)
                    .where(runs.c.id == self._run_pk)
                    .values(
                        status=event.status, stopped_at=datetime.datetime.now()
                    )
                )
        return super().notify(event)

    @override
    def clean_up(self) -> None:
        """Close every pooled connection; the next run opens its own."""
        if self._engine is not None:
            self._engine.dispose()
        self._engine = None
        self._tables_ready = False
        self._run_pk = None
        self._source_ids.clear()
        return super().clean_up()

    @override
    def load_metrics(
        self, model_name: str, max_epoch: int = -1
    ) -> MetricHistory:
        """The model's history in this experiment (any, before a run)."""
        import sqlalchemy as sa

        s = schema()
        query = (
            sa.select(
                s.runs.c.id,
                s.sources.c.source_name,
                s.values.c.epoch,
                s.values.c.name,
                s.values.c.value,
            )
            .join(s.sources, s.sources.c.id == s.values.c.source_id)
            .join(s.runs, s.runs.c.id == s.sources.c.run_id)
            .join(s.experiments, s.experiments.c.id == s.runs.c.experiment_id)
            .where(s.sources.c.model_name == model_name)
            .order_by(s.runs.c.id, s.values.c.epoch, s.values.c.id)
        )
        if self.exp_name:
            query = query.where(s.experiments.c.name == self.exp_name)
        if max_epoch >= 0:
            query = query.where(s.values.c.epoch <= max_epoch)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return _histories(rows)


def _histories(rows: list[Any]) -> MetricHistory:
    """Per source, each run's values replacing earlier ones from its start."""
    merged: dict[str, dict[int, dict[str, float]]] = {}
    current_run: dict[str, int] = {}
    for run_pk, source, epoch, name, value in rows:
        points = merged.setdefault(source, {})
        if current_run.get(source) != run_pk:
            # rows come by run then epoch: this is the run's first epoch
            current_run[source] = run_pk
            for old in [e for e in points if e >= epoch]:
                del points[old]
        points.setdefault(epoch, {})[name] = value
    history: MetricHistory = {}
    for source, points in merged.items():
        epochs = sorted(points)
        names = list(dict.fromkeys(n for e in epochs for n in points[e]))
        history[source] = (
            epochs,
            {
                n: [points[e].get(n, float('nan')) for e in epochs]
                for n in names
            },
        )
    return history
