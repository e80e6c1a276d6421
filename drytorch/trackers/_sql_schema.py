"""The SQL tracker's tables, and the row helpers it writes with.

The schema is normalised: ``experiments`` by name, their ``runs`` by run id
(one row per run, whatever the number of attempts), each run's
``run_attempts`` (when each attempt started and stopped, and how), each
run's ``tags``, the ``sources`` (model and source names) that logged in a
run, and the ``metric_values`` of each source at each epoch.  SQLAlchemy
is imported only when the tables are first needed.

The schema has no version number: it only ever gains tables, which
``create_all`` adds to a database written by an earlier version (it
creates what is missing and leaves the rest alone), and which an earlier
version ignores.  ``run_attempts`` came that way; the runs of such a
database simply have no attempt rows from before it.  A change to an
existing table would need a version and a migration.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ['Schema', 'get_or_insert', 'no_fsync', 'schema']


@dataclasses.dataclass(frozen=True)
class Schema:
    """The metadata and each of its tables."""

    metadata: sa.MetaData
    experiments: sa.Table
    runs: sa.Table
    attempts: sa.Table
    tags: sa.Table
    sources: sa.Table
    values: sa.Table


@functools.cache
def schema() -> Schema:
    """The tables, built once and only when SQLAlchemy is needed."""
    import sqlalchemy as sa

    md = sa.MetaData()

    def table(name: str, *items: sa.SchemaItem) -> sa.Table:
        return sa.Table(
            name, md, sa.Column('id', sa.Integer, primary_key=True), *items
        )

    def text(name: str, **kwargs: Any) -> sa.Column[str]:
        return sa.Column(name, sa.String(255), nullable=False, **kwargs)

    def parent(name: str, target: str) -> sa.Column[int]:
        return sa.Column(name, sa.ForeignKey(target), nullable=False)

    return Schema(
        md,
        experiments=table(
            'experiments',
            text('name', unique=True),
            sa.Column('created_at', sa.DateTime, nullable=False),
        ),
        runs=table(
            'runs',
            parent('experiment_id', 'experiments.id'),
            text('name'),
            # the first attempt's start; each attempt's is in run_attempts
            sa.Column('started_at', sa.DateTime, nullable=False),
            sa.Column('stopped_at', sa.DateTime),
            sa.Column('status', sa.String(16), nullable=False),
            sa.Column('attempts', sa.Integer, nullable=False),
            sa.Column('config', sa.Text),
            sa.UniqueConstraint('experiment_id', 'name'),
        ),
        attempts=table(
            'run_attempts',
            parent('run_id', 'runs.id'),
            sa.Column('attempt', sa.Integer, nullable=False),
            sa.Column('started_at', sa.DateTime, nullable=False),
            sa.Column('stopped_at', sa.DateTime),
            sa.Column('status', sa.String(16), nullable=False),
            sa.UniqueConstraint('run_id', 'attempt'),
        ),
        tags=table(
            'tags',
            parent('run_id', 'runs.id'),
            text('name'),
            sa.UniqueConstraint('run_id', 'name'),
        ),
        sources=table(
            'sources',
            parent('run_id', 'runs.id'),
            text('model_name'),
            text('source_name'),
            sa.UniqueConstraint('run_id', 'model_name', 'source_name'),
        ),
        values=table(
            'metric_values',
            parent('source_id', 'sources.id'),
            sa.Column('epoch', sa.Integer, nullable=False),
            text('name'),
            sa.Column('value', sa.Float, nullable=False),
            sa.Column('attempt', sa.Integer, nullable=False),
            sa.Index('ix_metric_values_source_epoch', 'source_id', 'epoch'),
        ),
    )


def get_or_insert(
    conn: sa.Connection,
    table: sa.Table,
    key: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> int:
    """The primary key of the row matching ``key``, inserted if missing.

    Another process may insert the same row meanwhile (two runs of one
    experiment starting together); the insert then fails inside a
    savepoint and the other process's row is used.
    """
    import sqlalchemy as sa

    def find() -> int | None:
        query = sa.select(table.c.id).filter_by(**key)
        return conn.execute(query).scalar_one_or_none()

    found = find()
    if found is not None:
        return found
    try:
        with conn.begin_nested():
            result = conn.execute(
                sa.insert(table).values(**key, **(extra or {}))
            )
            return result.inserted_primary_key[0]
    except sa.exc.IntegrityError:
        found = find()
        if found is None:
            raise
        return found


def no_fsync(dbapi_connection: Any, _: Any) -> None:
    """No fsync per event: it costs milliseconds, more on shared disks.

    A killed process (preemption, SIGKILL) still loses nothing, as the
    data is in the OS already; only a crash of the machine can lose the
    last events.  The journal keeps its default mode, which works on
    network file systems (WAL does not).
    """
    cursor = dbapi_connection.cursor()
    cursor.execute('PRAGMA synchronous=OFF')
    cursor.close()
