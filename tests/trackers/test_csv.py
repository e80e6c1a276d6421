"""CSVDumper: one CSV per model and source, read back by load_metrics."""

from __future__ import annotations

import csv
import pathlib
import warnings
from typing import Any

import pytest

from drytorch import Experiment
from drytorch.core import exceptions, log_events
from drytorch.core.tracking import TrackerExceptionWarning
from drytorch.trackers.base_classes import MetricLoader
from drytorch.trackers.csv import CSVDumper


def metric(
    epoch: int, source: str = 'trainer', model: str = 'net', **values: float
) -> None:
    log_events.MetricEvent(
        model_name=model, source_name=source, epoch=epoch, metrics=values
    )


def read(path: pathlib.Path, delimiter: str = ',') -> list[list[str]]:
    with path.open(newline='') as stream:
        return list(csv.reader(stream, delimiter=delimiter))


def flush() -> None:
    """Let the tracker thread write what was published, before a read."""
    Experiment.get_current().trackers.flush()


def run_folder(root: pathlib.Path, run_id: str = 'r') -> pathlib.Path:
    """A run's folder under a dumper's ``par_dir``: experiment, run."""
    return root / 'CsvExp' / 'runs' / run_id


def experiment(tmp_path: pathlib.Path, dumper: CSVDumper) -> Experiment[Any]:
    exp: Experiment[Any] = Experiment(
        None, name='CsvExp', par_dir=tmp_path / 'experiments'
    )
    exp.trackers.subscribe(dumper)
    return exp


def test_is_a_metric_loader() -> None:
    assert isinstance(CSVDumper(), MetricLoader)


def test_writes_and_reads_back(tmp_path: pathlib.Path) -> None:
    dumper = CSVDumper(par_dir=tmp_path / 'csv')
    with experiment(tmp_path, dumper).create_run():
        for epoch in (1, 2, 3):
            metric(epoch, loss=1 / epoch, acc=epoch / 10)
            metric(epoch, source='validation', loss=2 / epoch)
        metric(1, model='other', loss=9.0)
        flush()
        history = dumper.load_metrics('net')
    assert history == {
        'trainer': (
            [1, 2, 3],
            {'loss': [1.0, 0.5, 1 / 3], 'acc': [0.1, 0.2, 0.3]},
        ),
        'validation': ([1, 2, 3], {'loss': [2.0, 1.0, 2 / 3]}),
    }
    assert dumper.load_metrics('other') == {'trainer': ([1], {'loss': [9.0]})}
    assert dumper.load_metrics('unknown') == {}
    # after the run the files are still there to read
    assert dumper.load_metrics('net', max_epoch=2) == {
        'trainer': ([1, 2], {'loss': [1.0, 0.5], 'acc': [0.1, 0.2]}),
        'validation': ([1, 2], {'loss': [2.0, 1.0]}),
    }


def test_file_layout_and_header(tmp_path: pathlib.Path) -> None:
    dumper = CSVDumper(par_dir=tmp_path / 'csv')
    with experiment(tmp_path, dumper).create_run('r'):
        metric(1, loss=0.25, acc=0.5)
        metric(2, loss=0.125, acc=0.75)
    path = run_folder(tmp_path / 'csv') / 'csv_metrics' / 'net' / 'trainer.csv'
    assert dumper.file_path('net', 'trainer') == path
    assert read(path) == [
        ['model', 'source', 'epoch', 'loss', 'acc'],
        ['net', 'trainer', '1', '0.25', '0.5'],
        ['net', 'trainer', '2', '0.125', '0.75'],
    ]


def test_values_round_trip_exactly(tmp_path: pathlib.Path) -> None:
    dumper = CSVDumper(par_dir=tmp_path / 'csv')
    values = [0.1 + 0.2, 1e-12, 123456789.123456789, float('inf')]
    with experiment(tmp_path, dumper).create_run():
        for epoch, value in enumerate(values, start=1):
            metric(epoch, loss=value)
        flush()
        loaded = dumper.load_metrics('net')['trainer'][1]['loss']
    assert loaded == values


def test_default_location_is_the_run_folder(tmp_path: pathlib.Path) -> None:
    dumper = CSVDumper()
    with pytest.raises(exceptions.NoActiveExperimentError):
        _ = dumper.par_dir  # no run yet
    exp = experiment(tmp_path, dumper)
    with exp.create_run() as run:
        metric(1, loss=1.0)
        flush()
        assert dumper.par_dir == run.dir
        assert dumper.load_metrics('net') == {
            'trainer': ([1], {'loss': [1.0]})
        }
    expected = (
        tmp_path / 'experiments' / 'CsvExp' / 'runs' / run.id / 'csv_metrics'
    )
    assert (expected / 'net' / 'trainer.csv').is_file()
    # the stopped run's files can still be read
    assert dumper.par_dir == run.dir
    assert dumper.load_metrics('net') == {'trainer': ([1], {'loss': [1.0]})}


def test_each_run_keeps_its_own_files(tmp_path: pathlib.Path) -> None:
    dumper = CSVDumper()
    exp = experiment(tmp_path, dumper)
    with exp.create_run(run_id='a') as first:
        metric(1, loss=1.0)
    with exp.create_run(run_id='b') as second:
        metric(1, loss=2.0)
        flush()
        assert dumper.load_metrics('net') == {
            'trainer': ([1], {'loss': [2.0]})
        }
    assert (
        read(first.dir / 'csv_metrics' / 'net' / 'trainer.csv')[1][3] == '1.0'
    )
    assert read(second.dir / 'csv_metrics' / 'net' / 'trainer.csv')[1][3] == (
        '2.0'
    )


def test_resume_drops_rows_past_the_resumed_epoch(
    tmp_path: pathlib.Path,
) -> None:
    dumper = CSVDumper()
    exp = experiment(tmp_path, dumper)
    with exp.create_run():
        for epoch in range(1, 6):
            metric(epoch, loss=float(epoch))
            metric(epoch, source='validation', loss=10.0 * epoch)
    # preempted after epoch 5, but the last checkpoint was at epoch 3
    with exp.create_run(resume=True) as run:
        flush()
        assert dumper.load_metrics('net', max_epoch=3)['trainer'][0] == [
            1,
            2,
            3,
        ]
        metric(4, loss=40.0)
        metric(4, source='validation', loss=400.0)
        metric(5, loss=50.0)
        flush()
        history = dumper.load_metrics('net')
    assert history == {
        'trainer': ([1, 2, 3, 4, 5], {'loss': [1.0, 2.0, 3.0, 40.0, 50.0]}),
        'validation': ([1, 2, 3, 4], {'loss': [10.0, 20.0, 30.0, 400.0]}),
    }
    rows = read(run.dir / 'csv_metrics' / 'net' / 'trainer.csv')
    assert [row[2] for row in rows[1:]] == ['1', '2', '3', '4', '5']


def test_resumed_rows_line_up_with_the_old_columns(
    tmp_path: pathlib.Path,
) -> None:
    dumper = CSVDumper()
    exp = experiment(tmp_path, dumper)
    with exp.create_run():
        metric(1, loss=1.0, acc=0.1)
    with exp.create_run(resume=True):
        log_events.MetricEvent(
            model_name='net',
            source_name='trainer',
            epoch=2,
            metrics={'acc': 0.2, 'loss': 2.0},
        )
        flush()
        history = dumper.load_metrics('net')
    assert history == {
        'trainer': ([1, 2], {'loss': [1.0, 2.0], 'acc': [0.1, 0.2]})
    }


def test_metrics_in_another_order_stay_in_their_columns(
    tmp_path: pathlib.Path,
) -> None:
    dumper = CSVDumper(par_dir=tmp_path / 'csv')
    with experiment(tmp_path, dumper).create_run():
        metric(1, loss=1.0, acc=0.1)
        log_events.MetricEvent(
            model_name='net',
            source_name='trainer',
            epoch=2,
            metrics={'acc': 0.2, 'loss': 2.0},
        )
        flush()
        history = dumper.load_metrics('net')
    assert history['trainer'][1] == {'loss': [1.0, 2.0], 'acc': [0.1, 0.2]}


def test_other_metrics_mid_run_are_refused_loudly(
    tmp_path: pathlib.Path,
) -> None:
    dumper = CSVDumper(par_dir=tmp_path / 'csv')
    exp = experiment(tmp_path, dumper)
    with exp.create_run('r'):
        metric(1, loss=1.0)
        with pytest.warns(TrackerExceptionWarning, match='metric columns'):
            metric(2, loss=1.0, acc=0.5)
            flush()
    folder = run_folder(tmp_path / 'csv') / 'csv_metrics'
    rows = read(folder / 'net' / 'trainer.csv')
    assert rows == [
        ['model', 'source', 'epoch', 'loss'],
        ['net', 'trainer', '1', '1.0'],
    ]


def test_a_file_with_other_columns_is_moved_aside(
    tmp_path: pathlib.Path,
) -> None:
    path = run_folder(tmp_path / 'csv') / 'csv_metrics' / 'net' / 'trainer.csv'
    path.parent.mkdir(parents=True)
    path.write_text('model,source,epoch,old\nnet,trainer,1,3.0\n')
    dumper = CSVDumper(par_dir=tmp_path / 'csv')
    with experiment(tmp_path, dumper).create_run('r'):
        with pytest.warns(exceptions.DryTorchWarning, match='other columns'):
            metric(1, loss=1.0)
            flush()
        history = dumper.load_metrics('net')
    assert history == {'trainer': ([1], {'loss': [1.0]})}
    aside = path.with_name('trainer.previous.csv')
    assert read(aside) == [
        ['model', 'source', 'epoch', 'old'],
        ['net', 'trainer', '1', '3.0'],
    ]


def test_dialect_and_read_csv(tmp_path: pathlib.Path) -> None:
    class Semicolons(csv.excel):
        delimiter = ';'
        lineterminator = '\n'

    dumper = CSVDumper(par_dir=tmp_path / 'csv', dialect=Semicolons())
    with experiment(tmp_path, dumper).create_run():
        metric(1, loss=1.5)
        metric(2, loss=0.5)
        flush()
        assert dumper.load_metrics('net') == {
            'trainer': ([1, 2], {'loss': [1.5, 0.5]})
        }
        assert dumper.read_csv('net', 'trainer') == (
            [1, 2],
            {'loss': [1.5, 0.5]},
        )
        assert dumper.read_csv('net', 'trainer', max_epoch=1) == (
            [1],
            {'loss': [1.5]},
        )
        with pytest.raises(
            FileNotFoundError, match=r"'validation'.*'trainer'"
        ):
            dumper.read_csv('net', 'validation')
    path = dumper.file_path('net', 'trainer')
    assert path.read_bytes().decode().splitlines(keepends=True) == [
        'model;source;epoch;loss\n',
        'net;trainer;1;1.5\n',
        'net;trainer;2;0.5\n',
    ]
    with pytest.raises(csv.Error):
        CSVDumper(dialect='no-such-dialect')


def test_get_current(tmp_path: pathlib.Path) -> None:
    dumper = CSVDumper(par_dir=tmp_path / 'csv')
    with experiment(tmp_path, dumper).create_run():
        assert CSVDumper.get_current() is dumper


def test_other_events_write_nothing(tmp_path: pathlib.Path) -> None:
    dumper = CSVDumper(par_dir=tmp_path / 'csv')
    with (
        warnings.catch_warnings(),
        experiment(tmp_path, dumper).create_run(),
    ):
        warnings.simplefilter('error')
        log_events.StartEpochEvent(source_name='t', model_name='net', epoch=1)
        log_events.EndTrainingEvent(source_name='t')
    assert not (tmp_path / 'csv').exists()
