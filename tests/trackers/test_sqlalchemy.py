"""SQLConnection against SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

sa = pytest.importorskip('sqlalchemy', reason='sqlalchemy is not installed')

from drytorch.core.tracking import TrackerFailedWarning  # noqa: E402
from drytorch.trackers.csv import CSVDumper  # noqa: E402
from drytorch.trackers.sqlalchemy import SQLConnection  # noqa: E402
from tests.trackers._support import (  # noqa: E402
    SOURCES,
    emit_epochs,
    expected,
    make_experiment,
    preempted_and_resumed,
    run_epochs,
    value,
)

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
    assert sql._engine is None, 'connections must be closed at clean-up'


def _break_midway(tmp_path: pathlib.Path, tracker, breaker) -> CSVDumper:
    """Epochs 1-2, the backend breaks, epochs 3-4: the run goes on."""
    csv = CSVDumper(par_dir=tmp_path / 'csv')
    exp = make_experiment(tmp_path, tracker, csv)
    with exp.create_run('r'):
        emit_epochs([1, 2])
        breaker()
        with pytest.warns(TrackerFailedWarning, match='SQLConnection'):
            emit_epochs([3])
        emit_epochs([4])
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
    assert sql._engine is None


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
