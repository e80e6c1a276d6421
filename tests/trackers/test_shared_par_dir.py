"""Dumpers given one ``par_dir`` for many experiments and runs.

The tutorial's own recipe subscribes one ``CSVDumper(par_dir=...)`` to
every experiment; each run must then get ``<par_dir>/<experiment>/runs/
<run id>``, so that no run touches another's files, while a resumed run
finds its own and replaces only the rows past its checkpoint.
"""

from __future__ import annotations

import csv
import functools
import pathlib
import re
from collections.abc import Mapping

import pytest
import yaml
from typing_extensions import override

from drytorch import Experiment, extend_default_trackers
from drytorch.core import exceptions, log_events
from drytorch.core.tracking import Tracker, TrackerExceptionWarning
from drytorch.trackers.base_classes import Dumper
from drytorch.trackers.csv import CSVDumper
from drytorch.trackers.plotting import BasePlotter, Series
from drytorch.trackers.yaml import YamlDumper
from tests.trackers._support import (
    MODEL,
    SOURCES,
    emit_epochs,
    expected,
    make_experiment,
    run_epochs,
    value,
)


class Notes(Dumper):
    """A dumper as a user writes one: a file in its folder per run."""

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        super().notify(event)
        self.par_dir.mkdir(parents=True, exist_ok=True)
        with (self.par_dir / 'notes.txt').open('a') as stream:
            stream.write(f'{event.exp_name}/{event.run_id}#{event.attempt}\n')


class Curves(BasePlotter[None]):
    """A plotter that draws nothing: its curves are what it would draw."""

    @override
    def _draw(
        self,
        model_name: str,
        metric_name: str,
        series: Mapping[str, Series],
        previous: None,
    ) -> None:
        return None


def rows(path: pathlib.Path) -> dict[int, float]:
    """Per epoch, the loss a CSV file holds; an epoch twice fails."""
    with path.open(newline='') as stream:
        header, *lines = list(csv.reader(stream))
    epochs = [int(line[2]) for line in lines]
    assert len(epochs) == len(set(epochs)), f'{path}: an epoch twice'
    loss = header.index('loss')
    return {int(line[2]): float(line[loss]) for line in lines}


def attempt_values(epochs: range, source: str) -> dict[int, float]:
    return {epoch: value(epoch, source) for epoch in epochs}


def run_folder(root: pathlib.Path, exp: str, run: str) -> pathlib.Path:
    return root / exp / 'runs' / run


def test_experiments_and_runs_sharing_a_par_dir(
    tmp_path: pathlib.Path,
) -> None:
    shared = tmp_path / 'shared'
    csv_dumper = CSVDumper(par_dir=shared)
    dumpers: list[Tracker] = [csv_dumper, YamlDumper(par_dir=shared)]
    dumpers.append(Notes(par_dir=shared))
    first = make_experiment(tmp_path, *dumpers, config={'lr': 0.1})
    second = make_experiment(tmp_path, *dumpers, name='u', config={'lr': 2})
    # interleaved: each new run starts at epoch 1, where the old code
    # dropped every row that another experiment or run had written
    run_epochs(first, range(1, 4), 'r', preempt=True)
    run_epochs(second, range(1, 3), 'r', attempt=7)  # values of its own
    with first.create_run('r', resume=True):
        first.trackers.flush()
        # the resumed run reads its own first attempt, and only it
        assert csv_dumper.load_metrics(MODEL) == {
            source: (
                [1, 2, 3],
                {
                    'loss': list(attempt_values(range(1, 4), source).values()),
                    'acc': [0.01, 0.02, 0.03],
                },
            )
            for source in SOURCES
        }
        emit_epochs(range(2, 5), attempt=2)  # from its checkpoint at 1
    run_epochs(first, range(1, 2), 's')
    # every file survives, with the rows of its own run
    for source in SOURCES:
        kept = {
            ('t', 'r'): expected(source),
            ('u', 'r'): {e: value(e, source, 7) for e in range(1, 3)},
            ('t', 's'): attempt_values(range(1, 2), source),
        }
        for (exp, run), want in kept.items():
            folder = run_folder(shared, exp, run) / 'csv_metrics' / MODEL
            assert rows(folder / f'{source}.csv') == pytest.approx(want)
    for exp, run, lr, attempts in (
        ('t', 'r', 0.1, [1, 2]),
        ('u', 'r', 2, [1]),
        ('t', 's', 0.1, [1]),
    ):
        folder = run_folder(shared, exp, run)
        metadata = folder / 'metadata'
        assert yaml.safe_load((metadata / 'config.yaml').read_text()) == {
            'lr': lr
        }
        logged = yaml.safe_load((metadata / 'attempts.yaml').read_text())
        assert [a['attempt'] for a in logged] == attempts
        notes = (folder / 'notes.txt').read_text().splitlines()
        assert notes == [f'{exp}/{run}#{n}' for n in attempts]
    # and nothing lies outside the runs' folders
    runs = [run_folder(shared, e, r) for e, r in kept]
    for path in shared.rglob('*'):
        if path.is_file():
            assert any(path.is_relative_to(run) for run in runs), path


def test_a_plotter_loads_the_current_run_only(tmp_path: pathlib.Path) -> None:
    shared = tmp_path / 'shared'
    csv_dumper = CSVDumper(par_dir=shared)
    curves = Curves(metric_loader=csv_dumper)
    exp = make_experiment(tmp_path, csv_dumper, curves)
    other = make_experiment(tmp_path, csv_dumper, curves, name='u')
    run_epochs(exp, range(1, 4), 'r', preempt=True)
    # values of their own (attempt 7's): a curve must not show them
    run_epochs(other, range(1, 6), 'r', attempt=7)
    run_epochs(exp, range(2, 5), 'r', resume=True, attempt=2)
    series = curves.series(MODEL, 'loss')
    for source in SOURCES:
        epochs, values = series[source]
        assert dict(zip(epochs, values, strict=True)) == pytest.approx(
            expected(source)
        )
    run_epochs(exp, range(1, 2), 'new')
    assert curves.series(MODEL, 'loss')['train'] == ([1], [value(1, 'train')])


def test_the_tutorial_recipe_as_written(tmp_path: pathlib.Path) -> None:
    # the tutorial's block (its imports are this module's)
    csv_dumper = CSVDumper(par_dir=pathlib.Path('experiments', 'my_directory'))
    extend_default_trackers([csv_dumper])
    # two experiments of the tutorial's kind, each with two runs
    names = ('ExperimentWithCSVDumper', 'AnotherExperiment')
    for name in names:
        exp: Experiment[None] = Experiment(
            None, name=name, par_dir='experiments'
        )
        for run_id, last in (('one', 3), ('two', 2)):
            with exp.create_run(run_id):
                if CSVDumper.get_current() is not csv_dumper:
                    raise AssertionError('Trackers should coincide.')
                emit_epochs(range(1, last + 1))
    root = tmp_path / 'experiments' / 'my_directory'
    for name in names:
        for run_id, last in (('one', 3), ('two', 2)):
            folder = run_folder(root, name, run_id) / 'csv_metrics' / MODEL
            for source in SOURCES:
                assert rows(folder / f'{source}.csv') == pytest.approx(
                    attempt_values(range(1, last + 1), source)
                )


def test_without_par_dir_the_run_folder_is_used(
    tmp_path: pathlib.Path,
) -> None:
    notes = Notes()
    exp = make_experiment(tmp_path / 'e', notes)
    run_epochs(exp, [1], 'r')
    assert notes.par_dir == tmp_path / 'e' / 't' / 'runs' / 'r'
    assert (notes.par_dir / 'notes.txt').read_text() == 't/r#1\n'


# ------------------------------------------------------ par_dir is a file
@pytest.mark.parametrize('below', [False, True])
def test_a_par_dir_that_is_a_file_fails_at_construction(
    tmp_path: pathlib.Path, below: bool
) -> None:
    blocker = tmp_path / 'results.csv'
    blocker.write_text('keep me')
    par_dir = blocker / 'deeper' if below else blocker
    for dumper in (CSVDumper, YamlDumper, Notes):
        with pytest.raises(exceptions.NotAFolderError) as info:
            dumper(par_dir=par_dir)
        message = str(info.value)
        assert dumper.__name__ in message
        assert str(blocker) in message
        assert 'choose another par_dir' in message
    assert blocker.read_text() == 'keep me'


def test_a_file_in_the_way_at_start_drops_only_that_dumper(
    tmp_path: pathlib.Path,
) -> None:
    shared = tmp_path / 'shared'
    blocked = CSVDumper(par_dir=shared)
    healthy = CSVDumper(par_dir=tmp_path / 'healthy')
    exp = make_experiment(tmp_path, blocked)
    exp.trackers.subscribe(healthy=healthy)
    run_epochs(exp, [1, 2], 'r', preempt=True)
    written = run_folder(shared, 't', 'r') / 'csv_metrics' / MODEL
    before = {path: path.read_text() for path in written.iterdir()}
    # the experiment's folder under the shared par_dir becomes a file
    moved = shared / 't.moved'
    (shared / 't').rename(moved)
    (shared / 't').write_text('a file now')
    in_the_way = re.escape(f'{shared / "t"} is a file')
    with (
        pytest.warns(TrackerExceptionWarning, match=in_the_way),
        exp.create_run('r', resume=True),
    ):
        emit_epochs([3])
        exp.trackers.flush()
        assert list(exp.trackers.named_trackers) == ['healthy']
    with pytest.raises(exceptions.NoActiveExperimentError):
        _ = blocked.par_dir  # it took no folder for this run
    assert (shared / 't').read_text() == 'a file now'
    moved_rows = moved / 'runs' / 'r' / 'csv_metrics' / MODEL
    after = {written / p.name: p.read_text() for p in moved_rows.iterdir()}
    assert after == before  # nothing already written was lost
    folder = run_folder(tmp_path / 'healthy', 't', 'r') / 'csv_metrics'
    assert sorted(rows(folder / MODEL / 'train.csv')) == [1, 2, 3]
