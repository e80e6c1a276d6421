"""PlotlyPlotter: figures and self-contained HTML files."""

from __future__ import annotations

import base64
import json
import pathlib
import re
from typing import Any
from unittest import mock

import numpy as np
import pytest

pytest.importorskip('plotly', reason='plotly is not installed')

from drytorch.trackers.csv import CSVDumper
from drytorch.trackers.plotly import PlotlyPlotter
from tests.trackers._support import (
    SOURCES,
    emit_epochs,
    expected,
    make_experiment,
    run_epochs,
    value,
)


def _array(data: Any) -> list[float]:
    """A trace's array: plotly writes numpy arrays as typed base64."""
    if isinstance(data, dict):
        import numpy as np

        raw = base64.b64decode(data['bdata'])
        return np.frombuffer(raw, dtype=data['dtype']).tolist()
    return list(data)


def _traces(html: str) -> list[dict]:
    """The trace list passed to ``Plotly.newPlot`` in a written file."""
    match = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', html)
    assert match, 'no Plotly.newPlot call in the HTML'
    traces = json.loads(match.group(1))
    for trace in traces:
        trace['x'], trace['y'] = _array(trace['x']), _array(trace['y'])
    return traces


def test_html_holds_the_traces_and_plotly_itself(
    tmp_path: pathlib.Path,
) -> None:
    plotter = PlotlyPlotter()
    exp = make_experiment(tmp_path, plotter)
    run_epochs(exp, range(1, 4))
    written = plotter.save(tmp_path / 'html')
    assert sorted(p.name for p in written) == ['acc.html', 'loss.html']
    html = (tmp_path / 'html' / 'm' / 'loss.html').read_text()
    offline = 'src="https://cdn' not in html
    assert offline, 'the file must open offline'
    assert len(html) > 1_000_000, 'plotly.js is embedded'
    traces = {trace['name']: trace for trace in _traces(html)}
    assert list(traces) == list(SOURCES)
    for source, trace in traces.items():
        assert trace['x'] == [1, 2, 3]
        assert trace['y'] == pytest.approx(
            [value(e, source) for e in (1, 2, 3)]
        )


def test_figure_updates_and_loads_earlier_epochs(
    tmp_path: pathlib.Path,
) -> None:
    csv = CSVDumper()
    exp = make_experiment(tmp_path, csv)
    run_epochs(exp, range(1, 4), preempt=True)
    plotter = PlotlyPlotter(metric_loader=csv)
    exp.trackers.subscribe(plotter)
    run_epochs(exp, range(2, 5), resume=True, attempt=2)
    figure = plotter.plot_metric('m', 'loss')
    for trace in figure.data:
        want = expected(trace.name)
        assert list(trace.x) == list(want)
        assert list(trace.y) == pytest.approx(list(want.values()))


def test_an_epoch_extends_the_traces_by_their_new_points(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Traces grow in place; the plotter neither redraws nor rereads."""
    plotter = PlotlyPlotter(metric_names=['loss'])
    exp = make_experiment(tmp_path, plotter)
    draws = mock.Mock(wraps=plotter._draw)
    monkeypatch.setattr(plotter, '_draw', draws)
    with exp.create_run():
        emit_epochs([1])
        figure = plotter.plot_metric('m', 'loss')
        first = figure.data
        assert [trace.mode for trace in first] == ['markers', 'markers']
        reads = mock.Mock(wraps=plotter.series)
        monkeypatch.setattr(plotter, 'series', reads)
        emit_epochs(range(2, 201))
        exp.trackers.flush()
        assert draws.call_count == 1, 'drawn once, then extended'
        assert reads.call_count == 0, 'the history was read again'
        assert plotter.plot_metric('m', 'loss') is figure
    assert all(a is b for a, b in zip(figure.data, first, strict=True))
    for trace in figure.data:
        assert isinstance(trace.x, np.ndarray), 'plotly would iterate a list'
        assert trace.mode == 'lines'
        assert trace.x.tolist() == list(range(1, 201))
        assert trace.y == pytest.approx(
            [value(e, trace.name) for e in range(1, 201)]
        )
    [path] = plotter.save(tmp_path / 'html')
    for trace in _traces(path.read_text()):
        assert trace['x'] == list(range(1, 201))
