"""VisdomPlotter against a Visdom server started on loopback."""

from __future__ import annotations

import json
import pathlib

import pytest

pytest.importorskip('visdom', reason='visdom is not installed')

from drytorch.trackers.csv import CSVDumper
from drytorch.trackers.visdom import VisdomNotRunningError, VisdomPlotter
from tests.trackers._support import (
    SOURCES,
    emit_epochs,
    expected,
    free_port,
    make_experiment,
    run_epochs,
    value,
)


def _window(plotter: VisdomPlotter, win: str) -> dict[str, dict]:
    data = json.loads(plotter.viz.get_window_data(win, plotter.env))
    return {trace['name']: trace for trace in data['content']['data']}


def test_windows_hold_every_epoch(
    tmp_path: pathlib.Path, visdom_port: int
) -> None:
    plotter = VisdomPlotter('http://127.0.0.1', visdom_port, env='live')
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1, 2])
        exp.trackers.flush()  # the plotter runs on the background worker
        # drawn at each epoch end, before the run stops
        assert _window(plotter, 'm-loss')['train']['x'] == [1, 2]
        emit_epochs([3])
        emit_epochs([3], sources=['test'])
    traces = _window(plotter, 'm-loss')
    assert list(traces) == [*SOURCES, 'test']
    for source in SOURCES:
        assert traces[source]['x'] == [1, 2, 3]
        assert traces[source]['y'] == pytest.approx(
            [value(e, source) for e in (1, 2, 3)]
        )
    assert traces['test']['y'] == pytest.approx([value(3, 'test')])
    assert plotter.plot_metric('m', 'acc') == 'm-acc'


def test_resumed_session_replaces_what_it_redraws(
    tmp_path: pathlib.Path, visdom_port: int
) -> None:
    csv = CSVDumper()
    exp = make_experiment(tmp_path, csv)
    plotter = VisdomPlotter('http://127.0.0.1', visdom_port, env='resume')
    exp.trackers.subscribe(plotter)
    run_epochs(exp, range(1, 4), preempt=True)
    resumed = VisdomPlotter(
        'http://127.0.0.1', visdom_port, env='resume', metric_loader=csv
    )
    exp.trackers.remove('VisdomPlotter')
    exp.trackers.subscribe(resumed)
    run_epochs(exp, range(2, 5), resume=True, attempt=2)
    traces = _window(resumed, 'm-loss')
    for source in SOURCES:
        want = expected(source)
        assert traces[source]['x'] == list(want)
        assert traces[source]['y'] == pytest.approx(list(want.values()))


def test_no_server_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(VisdomNotRunningError, match=f'No Visdom.*:{port}'):
        VisdomPlotter('http://127.0.0.1', port)
