"""MatPlotter: PNG files checked pixel by pixel; earlier sessions loaded."""

from __future__ import annotations

import itertools
import pathlib
from unittest import mock

import pytest

pytest.importorskip('matplotlib', reason='matplotlib is not installed')

import numpy as np
from matplotlib import colors
from matplotlib import image as mpimg

from drytorch.trackers.csv import CSVDumper
from drytorch.trackers.matplotlib import MatPlotter
from tests.trackers._support import (
    SOURCES,
    emit_epochs,
    expected,
    make_experiment,
    run_epochs,
    value,
)


def _assert_lines_drawn(figure, path: pathlib.Path) -> None:
    """Along every segment of every line, the PNG has the line's colour."""
    pixels = mpimg.imread(path)[..., :3]
    height = pixels.shape[0]
    axes = figure.axes[0]
    assert np.allclose(pixels[2, 2], 1.0), 'the background is white'
    for line in axes.get_lines():
        colour = np.array(colors.to_rgb(line.get_color()))
        xy = np.column_stack([line.get_xdata(), line.get_ydata()])
        for start, end in itertools.pairwise(xy):
            for t in np.linspace(0.1, 0.9, 9):
                x, y = axes.transData.transform(start + t * (end - start))
                row, col = round(height - y), round(x)
                patch = pixels[row - 2 : row + 3, col - 2 : col + 3]
                distance = np.abs(patch - colour).sum(axis=-1).min()
                assert distance < 0.25, (
                    f'{line.get_label()} not drawn at ({col}, {row})'
                )


def test_saved_png_shows_every_source(tmp_path: pathlib.Path) -> None:
    plotter = MatPlotter()
    exp = make_experiment(tmp_path, plotter)
    run_epochs(exp, range(1, 6))
    written = plotter.save(tmp_path / 'png')
    assert sorted(p.name for p in written) == ['acc.png', 'loss.png']
    path = tmp_path / 'png' / 'm' / 'loss.png'
    assert path.stat().st_size > 5000
    figure = plotter.plot_metric('m', 'loss')
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == list(SOURCES)
    _assert_lines_drawn(figure, path)


@pytest.mark.parametrize('loader_first', [True, False])
@pytest.mark.parametrize('kind', ['csv', 'sql'])
def test_resumed_session_draws_earlier_epochs_first(
    tmp_path: pathlib.Path, kind: str, loader_first: bool
) -> None:
    """The resumed attempt's plot shows epoch 1 from the first attempt."""
    if kind == 'sql':
        pytest.importorskip('sqlalchemy', reason='sqlalchemy not installed')
        from drytorch.trackers.sqlalchemy import SQLConnection

        loader = SQLConnection()
    else:
        loader = CSVDumper()
    exp = make_experiment(tmp_path, loader)
    run_epochs(exp, range(1, 4), preempt=True)
    plotter = MatPlotter(metric_loader=loader)
    exp.trackers.remove(type(loader).__name__)
    pair = (loader, plotter) if loader_first else (plotter, loader)
    exp.trackers.subscribe(*pair)
    run_epochs(exp, range(2, 5), resume=True, attempt=2)
    figure = plotter.plot_metric('m', 'loss')
    for line in figure.axes[0].get_lines():
        source = line.get_label()
        want = expected(source)
        assert list(line.get_xdata()) == list(want)
        assert list(line.get_ydata()) == pytest.approx(list(want.values()))
    path = tmp_path / f'{kind}.png'
    figure.savefig(path)
    _assert_lines_drawn(figure, path)


def test_test_metrics_show_as_a_point(tmp_path: pathlib.Path) -> None:
    plotter = MatPlotter()
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs(range(1, 3))
        emit_epochs([2], sources=['test'])
    figure = plotter.plot_metric('m', 'loss')
    [test_line] = [
        line
        for line in figure.axes[0].get_lines()
        if line.get_label() == 'test'
    ]
    assert test_line.get_marker() == 'o'
    assert list(test_line.get_ydata()) == [value(2, 'test')]


def test_an_epoch_extends_the_lines_and_their_limits(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines grow in place, limits by the new points: no relim per epoch."""
    plotter = MatPlotter(metric_names=['loss'])
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1])
        figure = plotter.plot_metric('m', 'loss')
        axes = figure.axes[0]
        lines = axes.get_lines()
        draws = mock.Mock(wraps=plotter._draw)
        monkeypatch.setattr(plotter, '_draw', draws)
        relims = mock.Mock(wraps=axes.relim)
        monkeypatch.setattr(axes, 'relim', relims)
        emit_epochs(range(2, 101))
        exp.trackers.flush()
        assert draws.call_count == 0, 'extended, not drawn again'
        assert relims.call_count == 0, 'relim walks every point'
    assert axes.get_lines() == lines
    for line in lines:
        assert list(line.get_xdata()) == list(range(1, 101))
        assert line.get_marker() == ''
    every = [value(e, s) for e in range(1, 101) for s in SOURCES]
    (x0, y0), (x1, y1) = axes.dataLim.get_points()
    assert (x0, x1) == (1, 100)
    assert (y0, y1) == pytest.approx((min(every), max(every)))
    path = tmp_path / 'extended.png'
    figure.savefig(path)
    _assert_lines_drawn(figure, path)
