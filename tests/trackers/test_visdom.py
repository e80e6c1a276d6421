"""VisdomPlotter against a Visdom server started on loopback."""

from __future__ import annotations

import json
import pathlib
from unittest import mock

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


def test_an_epoch_sends_one_request_with_its_new_points(
    tmp_path: pathlib.Path,
    visdom_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What goes to the server, and what the plotter reads, per epoch."""
    plotter = VisdomPlotter(
        'http://127.0.0.1', visdom_port, env='append', metric_names=['loss']
    )
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1])
        exp.trackers.flush()
        sent = mock.Mock(wraps=plotter.viz.line)
        monkeypatch.setattr(plotter.viz, 'line', sent)
        reads = mock.Mock(wraps=plotter.series)
        monkeypatch.setattr(plotter, 'series', reads)
        emit_epochs(range(2, 41))
        exp.trackers.flush()
        assert reads.call_count == 0, 'the history was read again'
        requests = [
            (list(call.kwargs['X']), call.kwargs['update'])
            for call in sent.call_args_list
        ]
        assert requests == [([epoch], 'append') for epoch in range(2, 41)]
        assert all(
            call.kwargs['Y'].shape == (1, 2) for call in sent.mock_calls
        )
    traces = _window(plotter, 'm-loss')
    for source in SOURCES:
        assert traces[source]['x'] == list(range(1, 41))
        assert traces[source]['y'] == pytest.approx(
            [value(e, source) for e in range(1, 41)]
        )


def test_a_one_off_plot_gives_the_window_back_at_the_next_epoch(
    tmp_path: pathlib.Path, visdom_port: int
) -> None:
    plotter = VisdomPlotter('http://127.0.0.1', visdom_port, env='one-off')
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1, 2])
        exp.trackers.flush()
        plotter.plot_metric('m', 'loss', source_names=['val'], start=2)
        assert list(_window(plotter, 'm-loss')) == ['val']
        emit_epochs([3])
    traces = _window(plotter, 'm-loss')
    assert list(traces) == list(SOURCES)
    assert traces['train']['x'] == [1, 2, 3]
