"""PlotlyPlotter: figures and self-contained HTML files."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

pytest.importorskip('plotly', reason='plotly is not installed')

from drytorch.trackers.csv import CSVDumper
from drytorch.trackers.plotly import PlotlyPlotter
from tests.trackers._support import (
    SOURCES,
    expected,
    make_experiment,
    run_epochs,
    value,
)


def _traces(html: str) -> list[dict]:
    """The trace list passed to ``Plotly.newPlot`` in a written file."""
    match = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', html)
    assert match, 'no Plotly.newPlot call in the HTML'
    return json.loads(match.group(1))


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
