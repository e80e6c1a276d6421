"""Metrics in a SQL database through SQLAlchemy; also a metric loader.

The schema (see ``_sql_schema``) is normalised: ``experiments`` by name,
their ``runs`` by run id (one row per run, whatever the number of
attempts), each run's ``run_attempts``, its ``tags``, the ``sources``
(model and source names) that logged in a run, and the ``metric_values``
of each source at each epoch.  Tables are created on first use.  Each
event is written in one transaction, so that a crash never leaves half an
epoch behind.

A database URL is checked when the tracker is constructed (syntax,
dialect, driver, the folder of a SQLite file), not when the run starts
hours later; no server is contacted then, since SQLAlchemy engines connect
only when first used.  The tracker is built on the user's thread and
notified on the trackers' worker thread (see ``drytorch.core.tracking``),
so its engines must serve any thread: SQLAlchemy's pool hands a connection
to one thread at a time.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import pathlib
import re
import threading
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.core.folders import check_folder
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

__all__ = ['DatabaseURLError', 'SQLConnection', 'is_available']


def is_available() -> bool:
    """Whether SQLAlchemy can be imported."""
    return module_available('sqlalchemy')


class DatabaseURLError(exceptions.TrackerError, ValueError):
    """Raised at construction for a URL that cannot give a working engine."""


class _Opened(NamedTuple):
    """An engine, and what the tracker must do around it."""

    engine: sa.Engine
    folder: pathlib.Path | None
    """The folder of a SQLite file, made before the first use of a run."""
    dispose: bool = True
    """Whether a stopping run disposes of it: not the caller's engine, nor
    an in-memory database, whose data would go with its connection."""


class SQLConnection(Dumper, MetricLoader):
    """Stores runs, tags and metrics in a database.

    Without ``engine`` the database is the SQLite file ``metrics.db`` in
    the folder (the run's folder by default), written without fsync (see
    ``_sql_schema.no_fsync``); any SQLAlchemy engine or URL works
    otherwise, e.g. ``postgresql+psycopg://user@host/db``.

    A run's row keeps the start of its first attempt; ``run_attempts``
    holds each attempt's start, stop and status.  A resumed run keeps its
    row.  The first value a model's source logs in an attempt, at epoch
    ``e``, first deletes that source's values from ``e`` on: those an
    earlier attempt wrote past the checkpoint it was resumed from.  Every
    epoch is therefore stored once.

    As a loader, a source's history is its values in the experiment's runs
    taken in order, each run replacing the values from its first epoch on.

    Args:
        engine: an engine, used as it is and left open (it is the
            caller's); a URL, turned into an engine now; the SQLite file
            when None.  The folder of a SQLite file URL is made when the
            run starts, like ``par_dir``.
        par_dir: the folder of the SQLite file, shared by the runs (they
            are kept apart in the tables); the run's folder when None.

    Raises:
        MissingDependencyError: SQLAlchemy is not installed.
        DatabaseURLError: the URL does not parse, names a dialect or driver
            that does not load, or a SQLite file that cannot be made.
        NotAFolderError: ``par_dir``, or a folder above it, is a file.

    """

    # one database for every run: the tables keep runs apart, so a given
    # par_dir is the folder of the file itself, not of per-run folders
    run_folders: ClassVar[bool] = False

    def __init__(
        self,
        engine: sa.Engine | sa.URL | str | None = None,
        par_dir: str | pathlib.Path | None = None,
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('sqlalchemy', 'sql')
        import sqlalchemy as sa

        super().__init__(par_dir)
        # the worker thread writes while the user's thread may load
        self._lock = threading.Lock()
        self._fixed: _Opened | None = None
        if isinstance(engine, str | sa.URL):
            self._fixed = _open_url(engine)
        elif isinstance(engine, sa.Engine):
            _warn_if_per_thread(engine)
            self._fixed = _Opened(engine, folder=None, dispose=False)
        elif engine is not None:
            raise TypeError(
                f'SQLConnection(engine={engine!r}): give a SQLAlchemy '
                "engine, a URL such as 'sqlite:////path/metrics.db', or "
                'None for a SQLite file in par_dir.'
            )
        self._open: _Opened | None = self._fixed
        self._tables_ready = False
        self._run_pk: int | None = None
        self._attempt = 1
        self._source_ids: dict[tuple[str, str], int] = {}

    @property
    def engine(self) -> sa.Engine:
        """The engine in use, its folder made and its tables created."""
        with self._lock:
            if self._open is None:
                self._open = _open_sqlite_file(self._database_folder())
            opened = self._open
            if not self._tables_ready:
                if opened.folder is not None:
                    # a file may have taken the folder's place since
                    check_folder('SQLConnection', opened.folder)
                    opened.folder.mkdir(parents=True, exist_ok=True)
                schema().metadata.create_all(opened.engine)
                self._tables_ready = True
            return opened.engine

    def _database_folder(self) -> pathlib.Path:
        """The folder of the default SQLite file.

        A given ``par_dir`` is known before any run, so that the loader
        can read it then; otherwise the run's folder.
        """
        if self._par_dir is not None:
            return self._par_dir
        return self.par_dir

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
        self._close()  # a load may have opened another file
        s = schema()
        state = {
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
            # a resumed run (same experiment name and run id) keeps its
            # row, and the start of its first attempt
            key = {'experiment_id': exp_pk, 'name': event.run_id}
            run_pk = get_or_insert(
                conn, s.runs, key, {'started_at': event.run_ts, **state}
            )
            conn.execute(
                sa.update(s.runs).where(s.runs.c.id == run_pk).values(**state)
            )
            attempt = {'started_at': event.run_ts, 'status': 'running'}
            attempt_pk = get_or_insert(
                conn,
                s.attempts,
                {'run_id': run_pk, 'attempt': event.attempt},
                attempt,
            )
            # should an attempt number come again, its row describes the
            # attempt that runs now
            conn.execute(
                sa.update(s.attempts)
                .where(s.attempts.c.id == attempt_pk)
                .values(stopped_at=None, **attempt)
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

        s = schema()
        if self._run_pk is not None:
            stopped = {
                'status': event.status,
                'stopped_at': datetime.datetime.now(),
            }
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(s.runs)
                    .where(s.runs.c.id == self._run_pk)
                    .values(**stopped)
                )
                conn.execute(
                    sa.update(s.attempts)
                    .where(
                        s.attempts.c.run_id == self._run_pk,
                        s.attempts.c.attempt == self._attempt,
                    )
                    .values(**stopped)
                )
        return super().notify(event)

    @override
    def clean_up(self) -> None:
        """Close the connections this tracker opened; the next run reopens.

        An engine given by the caller stays open: it is theirs.
        """
        self._close()
        self._run_pk = None
        self._source_ids.clear()
        return super().clean_up()

    def _close(self) -> None:
        """Dispose of the engine opened here; forget a per-run one.

        A disposed engine still works (it makes a new pool), so one made
        from a URL serves the next run.  The tables are checked again at
        the next use: a database may be new, or have lost them, by then.
        """
        with self._lock:
            opened = self._open
            if opened is not None and opened.dispose:
                opened.engine.dispose()
            self._open = self._fixed
            self._tables_ready = False

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


# the one part of a URL that must never be shown: user:PASSWORD@host
_PASSWORD = re.compile(r'(://[^:/@]*:)[^@]*@')


def _open_sqlite_file(folder: pathlib.Path) -> _Opened:
    """The engine of the default SQLite file ``metrics.db`` in ``folder``.

    ``check_same_thread=False``: the engine is made on one thread (the
    worker's, or the user's for a load) and used on another; the pool,
    not SQLite, keeps each connection to one thread at a time.
    """
    import sqlalchemy as sa

    engine = sa.create_engine(
        f'sqlite:///{folder / "metrics.db"}',
        connect_args={'check_same_thread': False},
    )
    sa.event.listen(engine, 'connect', no_fsync)
    return _Opened(engine, folder)


def _warn_if_per_thread(engine: sa.Engine) -> None:
    """Warn about an engine whose threads do not share one database.

    An in-memory SQLite engine made with SQLAlchemy's defaults gives each
    thread its own connection, hence its own empty database: the worker
    thread would write where the user's thread never reads.
    """
    import sqlalchemy as sa

    if isinstance(engine.pool, sa.pool.SingletonThreadPool):
        warnings.warn(
            exceptions.DryTorchWarning(
                f'SQLConnection got the engine {engine.url!r}, which gives '
                'each thread a database of its own; the tracker writes from '
                'its worker thread, so nothing it writes is seen from '
                'yours. Create the engine with poolclass=StaticPool and '
                "connect_args={'check_same_thread': False}, or pass the URL "
                'itself.'
            ),
            stacklevel=3,
        )


def _open_url(given: str | sa.URL) -> _Opened:
    """An engine for ``given``, checked as far as it goes without a server.

    Raises:
        DatabaseURLError: saying what is wrong and what to write instead.

    """
    import sqlalchemy as sa

    try:
        url = sa.make_url(given)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a bad port
        hidden = _PASSWORD.sub(r'\1***@', str(given))
        raise DatabaseURLError(
            f'SQLConnection cannot parse the database URL {hidden!r}. '
            'Write it as '
            'dialect+driver://user:password@host:port/database, e.g. '
            "'postgresql+psycopg://user@localhost/experiments' or "
            "'sqlite:////absolute/path/metrics.db'."
        ) from None
    shown = url.render_as_string(hide_password=True)
    _check_dialect(url, shown)
    folder: pathlib.Path | None = None
    options: dict[str, Any] = {}
    dispose = True
    if url.get_backend_name() == 'sqlite':
        folder = _sqlite_folder(url, shown)
        if _sqlite_in_memory(url):
            # the default pool gives each thread a connection of its own,
            # hence an empty database of its own: the worker would write
            # where a load from the user's thread never reads
            options = {
                'poolclass': sa.pool.StaticPool,
                'connect_args': {'check_same_thread': False},
            }
            dispose = False
    try:
        engine = sa.create_engine(url, **options)
    except ImportError as err:
        module = err.name or url.get_driver_name()
        hint = (
            "pip install 'drytorch[postgres]' and write postgresql+psycopg://"
            if url.get_backend_name() == 'postgresql'
            else f'install the package that provides {module!r}'
        )
        raise DatabaseURLError(
            f'SQLConnection: the URL {shown!r} needs the Python module '
            f'{module!r}, which does not import ({err}). Either {hint}, '
            'or name an installed driver after the dialect '
            '(dialect+driver://...).'
        ) from err
    except sa.exc.ArgumentError as err:
        raise DatabaseURLError(
            f'SQLConnection: SQLAlchemy refuses the URL {shown!r}: {err}'
        ) from err
    return _Opened(engine, folder, dispose)


def _check_dialect(url: sa.URL, shown: str) -> None:
    """The URL's dialect and driver exist, and the driver is synchronous."""
    import sqlalchemy as sa
    import sqlalchemy.dialects

    backend, _, driver = url.drivername.partition('+')
    try:
        dialect = url.get_dialect()
    except sa.exc.NoSuchModuleError:
        builtin = sqlalchemy.dialects.__all__
        if backend in builtin:
            problem = (
                f"SQLAlchemy's {backend} dialect has no driver {driver!r}. "
                f'Name one it has ({backend}+<driver>, e.g. '
                'postgresql+psycopg, mysql+pymysql), or write '
                f'{backend}:// for its default driver'
            )
        else:
            problem = (
                f'SQLAlchemy has no dialect {backend!r}. Its own are '
                f'{", ".join(builtin)}; any other comes with a package of '
                'its own, to install first'
            )
        raise DatabaseURLError(
            f'SQLConnection cannot use the URL {shown!r}: {problem}.'
        ) from None
    if dialect.is_async:
        raise DatabaseURLError(
            f'SQLConnection cannot use the URL {shown!r}: {driver!r} is an '
            'asyncio driver, and the tracker writes synchronously. Name a '
            'synchronous one, e.g. postgresql+psycopg or sqlite.'
        )


def _sqlite_in_memory(url: sa.URL) -> bool:
    return url.database in (None, '', ':memory:')


def _sqlite_uri(url: sa.URL) -> bool:
    """A SQLite URI (``?uri=true``): SQLite, not a path, names the file."""
    return str(url.query.get('uri', '')).lower() in ('true', '1')


def _sqlite_folder(url: sa.URL, shown: str) -> pathlib.Path | None:
    """The folder of a SQLite file URL, checked: None when there is none.

    The same rules as for a ``par_dir``: it may be missing (it is made
    when the run starts), but neither it nor a folder above it may be a
    file; and the database must not name a folder.
    """
    if _sqlite_in_memory(url) or _sqlite_uri(url):
        return None
    # relative to the current folder, now: SQLAlchemy resolves it now too
    path = pathlib.Path(os.path.abspath(str(url.database)))
    if path.is_dir():
        raise DatabaseURLError(
            f'SQLConnection cannot use the URL {shown!r}: {path} is a '
            'folder, not a database file. Name a file inside it, e.g. '
            f"'sqlite:///{path / 'metrics.db'}'."
        )
    for above in path.parents:
        if above.is_dir():
            break
        if above.exists() or above.is_symlink():
            raise DatabaseURLError(
                f'SQLConnection cannot create the SQLite database {path} '
                f'of the URL {shown!r}: {above} is a file, so no folder '
                'can be made there. Move or rename that file, or name '
                'another path in the URL.'
            )
    return path.parent
