"""SQLConnection against SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import datetime
import importlib.util
import json
import pathlib
import shutil
import time

import pytest

sa = pytest.importorskip('sqlalchemy', reason='sqlalchemy is not installed')

from drytorch.core import exceptions, log_events  # noqa: E402
from drytorch.core.tracking import TrackerExceptionWarning  # noqa: E402
from drytorch.trackers.csv import CSVDumper  # noqa: E402
from drytorch.trackers.sqlalchemy import (  # noqa: E402
    DatabaseURLError,
    SQLConnection,
)
from tests.helpers.kernel import RecordingTracker  # noqa: E402
from tests.trackers._support import (  # noqa: E402
    SOURCES,
    emit_epochs,
    expected,
    make_experiment,
    preempted_and_resumed,
    run_epochs,
    value,
)
from tests.trackers._threads import notify_on_thread, run_events  # noqa: E402

_VALUES = sa.text(
    'SELECT s.source_name, v.epoch, v.name, v.value, v.attempt '
    'FROM metric_values v JOIN sources s ON s.id = v.source_id '
    "WHERE s.model_name = 'm' ORDER BY s.source_name, v.epoch, v.name"
)


def _rows(url: str, query: sa.TextClause = _VALUES) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]
    finally:
        engine.dispose()


def _sqlite(path: pathlib.Path) -> str:
    return f'sqlite:///{path}'


@pytest.fixture(
    params=['sqlite', pytest.param('postgres', marks=pytest.mark.postgres)]
)
def database(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> tuple[SQLConnection, str]:
    """A tracker and the URL to read back, for SQLite and PostgreSQL."""
    if request.param == 'sqlite':
        return SQLConnection(par_dir=tmp_path / 'db'), _sqlite(
            tmp_path / 'db' / 'metrics.db'
        )
    url = request.getfixturevalue('pg_url')
    return SQLConnection(engine=url), url


def test_default_is_a_sqlite_file_in_the_run_folder(
    tmp_path: pathlib.Path,
) -> None:
    exp = make_experiment(tmp_path, SQLConnection(), config={'lr': 0.1})
    run_epochs(exp, range(1, 3))
    url = _sqlite(tmp_path / 't' / 'runs' / 'r' / 'metrics.db')
    assert _rows(url, sa.text('SELECT name FROM experiments')) == [('t',)]
    [(name, status, attempts, config)] = _rows(
        url, sa.text('SELECT name, status, attempts, config FROM runs')
    )
    assert (name, status, attempts) == ('r', 'completed', 1)
    assert json.loads(config) == {'lr': 0.1}
    tags = _rows(url, sa.text('SELECT name FROM tags ORDER BY name'))
    assert tags == [('tag-a',), ('tag-b',)]
    rows = _rows(url)
    assert len(rows) == 2 * len(SOURCES) * 2
    losses = {(r[0], r[1]): r[3] for r in rows if r[2] == 'loss'}
    assert losses == {
        (s, e): value(e, s) for s in SOURCES for e in range(1, 3)
    }


def test_resumed_run_stores_each_epoch_once(
    tmp_path: pathlib.Path, database: tuple[SQLConnection, str]
) -> None:
    tracker, url = database
    preempted_and_resumed(make_experiment(tmp_path, tracker))
    rows = _rows(url)
    keys = [(r[0], r[1], r[2]) for r in rows]
    assert len(keys) == len(set(keys)), 'an epoch was stored twice'
    for source in SOURCES:
        losses = {
            r[1]: r[3] for r in rows if r[0] == source and r[2] == 'loss'
        }
        assert losses == expected(source)
    runs = sa.text('SELECT name, status, attempts FROM runs')
    assert _rows(url, runs) == [('r', 'completed', 2)]


def test_loader_chains_runs_and_cuts_at_max_epoch(
    tmp_path: pathlib.Path,
) -> None:
    sql = SQLConnection(par_dir=tmp_path / 'db')
    exp = make_experiment(tmp_path, sql)
    run_epochs(exp, range(1, 4), run_id='first')
    # a second run continues the model from epoch 3, as from a checkpoint
    run_epochs(exp, range(3, 6), run_id='second', attempt=2)
    history = sql.load_metrics('m')
    epochs, metrics = history['val']
    assert epochs == [1, 2, 3, 4, 5]
    assert metrics['loss'] == [
        value(e, 'val', 1 if e < 3 else 2) for e in epochs
    ]
    assert sql.load_metrics('m', max_epoch=2)['train'][0] == [1, 2]
    assert sql.load_metrics('other') == {}


def test_instance_serves_several_runs_and_records_failure(
    tmp_path: pathlib.Path,
) -> None:
    sql = SQLConnection()
    exp = make_experiment(tmp_path, sql)
    with pytest.raises(ZeroDivisionError), exp.create_run('bad'):
        emit_epochs([1])
        _ = 1 / 0
    run_epochs(exp, [1], run_id='good')
    for run_id, status in [('bad', 'failed'), ('good', 'completed')]:
        url = _sqlite(tmp_path / 't' / 'runs' / run_id / 'metrics.db')
        query = sa.text('SELECT status FROM runs')
        assert _rows(url, query) == [(status,)]
    assert sql._open is None, 'connections must be closed at clean-up'


def _break_midway(tmp_path: pathlib.Path, tracker, breaker) -> CSVDumper:
    """Epochs 1-2, the backend breaks, epochs 3-4: the run goes on."""
    csv = CSVDumper(par_dir=tmp_path / 'csv')
    exp = make_experiment(tmp_path, tracker, csv)
    with exp.create_run('r'):
        emit_epochs([1, 2])
        exp.trackers.flush()  # the worker wrote epochs 1-2 before the break
        breaker()
        with pytest.warns(TrackerExceptionWarning, match='SQLConnection'):
            emit_epochs([3])
            exp.trackers.flush()
        emit_epochs([4])
        exp.trackers.flush()
        assert list(exp.trackers.named_trackers) == ['CSVDumper']
    return csv


def _assert_csv_complete(csv: CSVDumper) -> None:
    history = csv.load_metrics('m')
    for source in SOURCES:
        epochs, metrics = history[source]
        assert epochs == [1, 2, 3, 4]
        assert metrics['loss'] == [value(e, source) for e in epochs]


def test_sqlite_folder_removed_drops_only_this_tracker(
    tmp_path: pathlib.Path,
) -> None:
    folder = tmp_path / 'db'
    sql = SQLConnection(par_dir=folder)
    csv = _break_midway(tmp_path, sql, lambda: shutil.rmtree(folder))
    _assert_csv_complete(csv)
    assert sql._open is None


@pytest.mark.postgres
def test_postgres_database_dropped_drops_only_this_tracker(
    tmp_path: pathlib.Path, pg_url: str
) -> None:
    target = sa.make_url(pg_url)

    def drop() -> None:
        admin = sa.create_engine(
            target.set(database='postgres'), isolation_level='AUTOCOMMIT'
        )
        with admin.connect() as conn:
            conn.execute(
                sa.text(f'DROP DATABASE {target.database} WITH (FORCE)')
            )
        admin.dispose()

    sql = SQLConnection(engine=pg_url)
    csv = _break_midway(tmp_path, sql, drop)
    _assert_csv_complete(csv)


def test_engine_object_is_kept_across_runs(tmp_path: pathlib.Path) -> None:
    engine = sa.create_engine(_sqlite(tmp_path / 'shared.db'))
    sql = SQLConnection(engine=engine)
    exp = make_experiment(tmp_path, sql)
    run_epochs(exp, [1], run_id='a')
    run_epochs(exp, [1, 2], run_id='b')
    runs = sa.text('SELECT name FROM runs ORDER BY id')
    assert _rows(_sqlite(tmp_path / 'shared.db'), runs) == [('a',), ('b',)]
    assert sql.engine is engine


# -- runs keep their first start; each attempt is recorded --


def _starts(recorder: RecordingTracker) -> list[datetime.datetime]:
    return [
        e.run_ts for e in recorder.of_type(log_events.StartExperimentEvent)
    ]


def _when(found: datetime.datetime | str) -> datetime.datetime:
    """A timestamp read by raw SQL: SQLite gives back its ISO text."""
    if isinstance(found, str):
        return datetime.datetime.fromisoformat(found)
    return found


def test_run_keeps_its_first_start_and_lists_every_attempt(
    tmp_path: pathlib.Path, database: tuple[SQLConnection, str]
) -> None:
    tracker, url = database
    recorder = RecordingTracker()
    preempted_and_resumed(make_experiment(tmp_path, tracker, recorder))
    first, second = _starts(recorder)
    assert first < second
    [(started_at,)] = _rows(url, sa.text('SELECT started_at FROM runs'))
    assert _when(started_at) == first, 'a resumed attempt overwrote it'
    attempts = _rows(
        url,
        sa.text(
            'SELECT attempt, started_at, status, stopped_at IS NOT NULL '
            'FROM run_attempts ORDER BY attempt'
        ),
    )
    assert [(n, _when(t), *rest) for n, t, *rest in attempts] == [
        (1, first, 'preempted', True),
        (2, second, 'completed', True),
    ]


def test_database_of_the_previous_schema_gains_the_attempts_table(
    tmp_path: pathlib.Path, database: tuple[SQLConnection, str]
) -> None:
    tracker, url = database
    recorder = RecordingTracker()
    exp = make_experiment(tmp_path, tracker, recorder)
    run_epochs(exp, range(1, 3), preempt=True)
    # what the previous version wrote: the same tables but run_attempts
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text('DROP TABLE run_attempts'))
    engine.dispose()
    run_epochs(exp, range(2, 4), resume=True, attempt=2)
    first, second = _starts(recorder)
    [(started_at, *run)] = _rows(
        url, sa.text('SELECT started_at, status, attempts FROM runs')
    )
    assert (_when(started_at), *run) == (first, 'completed', 2)
    [(number, attempt_start, status)] = _rows(
        url, sa.text('SELECT attempt, started_at, status FROM run_attempts')
    )
    assert (number, _when(attempt_start), status) == (2, second, 'completed')
    assert tracker.load_metrics('m')['train'][0] == [1, 2, 3]


# -- a URL is checked when the tracker is constructed --


@pytest.mark.parametrize(
    ('url', 'match'),
    [
        ('not a url', 'cannot parse the database URL'),
        ('postgress://u@localhost/db', "no dialect 'postgress'.*postgresql"),
        ('postgresql+nodriver://u@localhost/db', "no driver 'nodriver'"),
        ('postgresql+asyncpg://u@localhost/db', 'asyncio driver'),
        ('sqlite://somehost/x.db', 'refuses the URL'),
    ],
)
def test_bad_url_fails_at_construction(url: str, match: str) -> None:
    with pytest.raises(DatabaseURLError, match=match):
        SQLConnection(engine=url)


def test_missing_driver_is_named_without_the_password() -> None:
    # psycopg2 is no dependency (drytorch[postgres] brings psycopg 3)
    if importlib.util.find_spec('psycopg2') is not None:
        pytest.skip('psycopg2 is installed here')
    with pytest.raises(DatabaseURLError, match="'psycopg2'") as info:
        SQLConnection(engine='postgresql+psycopg2://u:s3cret@localhost/db')
    assert 's3cret' not in str(info.value)
    assert 'drytorch[postgres]' in str(info.value)


def test_unparsable_url_hides_its_password() -> None:
    with pytest.raises(DatabaseURLError) as info:
        SQLConnection(engine='postgresql://u:s3cret@host:notaport/db')
    assert 's3cret' not in str(info.value)


def test_no_server_is_contacted_at_construction() -> None:
    began = time.monotonic()
    # nothing listens on port 9 (discard) of a documentation address
    SQLConnection(engine='postgresql+psycopg://u@192.0.2.1:9/db')
    assert time.monotonic() - began < 5


def test_sqlite_url_under_a_file_fails_at_construction(
    tmp_path: pathlib.Path,
) -> None:
    blocker = tmp_path / 'blocker'
    blocker.write_text('')
    path = blocker / 'sub' / 'metrics.db'
    with pytest.raises(DatabaseURLError, match=f'{blocker} is a file'):
        SQLConnection(engine=_sqlite(path))
    with pytest.raises(DatabaseURLError, match='is a folder'):
        SQLConnection(engine=_sqlite(tmp_path))


def test_sqlite_url_folder_is_made_when_the_run_starts(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / 'new' / 'deeper' / 'metrics.db'
    sql = SQLConnection(engine=_sqlite(path))
    assert not path.parent.exists()
    run_epochs(make_experiment(tmp_path, sql), [1, 2])
    assert len(_rows(_sqlite(path))) == 2 * len(SOURCES) * 2


def test_engine_of_an_unknown_type_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TypeError, match='give a SQLAlchemy engine, a URL'):
        SQLConnection(engine=tmp_path / 'metrics.db')  # type: ignore[arg-type]


# -- a par_dir that is a file --


def test_par_dir_that_is_a_file_fails_at_construction(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / 'metrics'
    path.write_text('')
    with pytest.raises(exceptions.NotAFolderError, match=f'{path} is a file'):
        SQLConnection(par_dir=path)
    with pytest.raises(exceptions.NotAFolderError, match=f'{path} is a file'):
        SQLConnection(par_dir=path / 'below')


def test_par_dir_that_became_a_file_is_named_when_the_run_starts(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / 'metrics'
    sql = SQLConnection(par_dir=path)
    path.write_text('')
    exp = make_experiment(tmp_path, sql)
    with pytest.warns(TrackerExceptionWarning, match=f'{path} is a file'):
        run_epochs(exp, [1])
    assert path.read_text() == ''


# -- built on one thread, notified on another (the trackers' worker) --


def _losses(history: dict) -> dict[str, list[float]]:
    return {source: history[source][1]['loss'] for source in SOURCES}


def _expected_losses(epochs: list[int]) -> dict[str, list[float]]:
    return {source: [value(e, source) for e in epochs] for source in SOURCES}


def test_url_engine_made_here_serves_another_thread(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / 'db' / 'metrics.db'
    sql = SQLConnection(engine=_sqlite(path))
    notify_on_thread(sql, run_events(tmp_path, [1, 2]))
    assert len(_rows(_sqlite(path))) == 2 * len(SOURCES)
    sql.exp_name = 't'
    assert _losses(sql.load_metrics('m')) == _expected_losses([1, 2])


def test_default_file_made_on_another_thread_loads_here(
    tmp_path: pathlib.Path,
) -> None:
    sql = SQLConnection(par_dir=tmp_path / 'db')
    notify_on_thread(sql, run_events(tmp_path, [1, 2, 3]))
    assert _losses(sql.load_metrics('m')) == _expected_losses([1, 2, 3])


def test_in_memory_database_is_one_for_every_thread(
    tmp_path: pathlib.Path,
) -> None:
    sql = SQLConnection(engine='sqlite://')
    notify_on_thread(sql, run_events(tmp_path, [1, 2]))
    assert _losses(sql.load_metrics('m')) == _expected_losses([1, 2])
    # a second run writes into the same database
    notify_on_thread(sql, run_events(tmp_path, [3], run_id='r2'))
    assert sql.load_metrics('m')['train'][0] == [1, 2, 3]


def test_engine_with_a_database_per_thread_is_warned_about() -> None:
    with pytest.warns(exceptions.DryTorchWarning, match='StaticPool'):
        SQLConnection(engine=sa.create_engine('sqlite://'))


@pytest.mark.postgres
def test_postgres_engine_made_here_serves_another_thread(
    tmp_path: pathlib.Path, pg_url: str
) -> None:
    sql = SQLConnection(engine=pg_url)
    notify_on_thread(sql, run_events(tmp_path, [1, 2]))
    assert _losses(sql.load_metrics('m')) == _expected_losses([1, 2])
    assert len(_rows(pg_url)) == 2 * len(SOURCES)


def test_rows_are_readable_during_the_run_after_a_flush(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / 'db' / 'metrics.db'
    exp = make_experiment(tmp_path, SQLConnection(engine=_sqlite(path)))
    with exp.create_run('r'):
        emit_epochs([1, 2])
        exp.trackers.flush()
        assert len(_rows(_sqlite(path))) == 2 * len(SOURCES) * 2
        status = _rows(_sqlite(path), sa.text('SELECT status FROM runs'))
        assert status == [('running',)]
