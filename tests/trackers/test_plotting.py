"""BasePlotter: which points each plot shows, and when plots are drawn."""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Mapping
from typing import ClassVar
from unittest import mock

import pytest
from typing_extensions import override

from drytorch.core import log_events
from drytorch.core.tracking import TrackerExceptionWarning
from drytorch.trackers.base_classes import MetricHistory, MetricLoader
from drytorch.trackers.plotting import BasePlotter, Points, Series
from tests.trackers._support import emit_epochs, make_experiment, value


class _Recorder(BasePlotter[dict]):
    """Draws into dicts and counts the draws."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.draws: list[tuple[str, str]] = []

    @override
    def _draw(
        self,
        model_name: str,
        metric_name: str,
        series: Mapping[str, Series],
        previous: dict | None,
    ) -> dict:
        self.draws.append((model_name, metric_name))
        plot = previous if previous is not None else {}
        plot.update(series)
        return plot


class _LiveRecorder(_Recorder):
    live: ClassVar[bool] = True


class _FixedLoader(MetricLoader):
    """An earlier session: epochs 1-5 of train, 1-2 of test."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    @override
    def load_metrics(
        self, model_name: str, max_epoch: int = -1
    ) -> MetricHistory:
        self.calls.append((model_name, max_epoch))
        epochs = [e for e in range(1, 6) if max_epoch < 0 or e <= max_epoch]
        return {
            'train': (epochs, {'loss': [-float(e) for e in epochs]}),
            'test': ([2], {'loss': [-20.0]}),
        }


def test_filters_and_start(tmp_path: pathlib.Path) -> None:
    plotter = _Recorder(source_names=['train'], metric_names=['loss'])
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs(range(1, 6))
        emit_epochs([1], model='other')
    assert plotter.metrics_of('m') == {'loss'}
    assert list(plotter.series('m', 'loss')) == ['train']
    assert plotter.series('m', 'loss', start=3)['train'][0] == [3, 4, 5]
    assert plotter.series('m', 'loss', start=-2)['train'][0] == [4, 5]
    only = _Recorder(model_names=['other'], start=-1)
    exp2 = make_experiment(tmp_path, only, name='t2')
    with exp2.create_run():
        emit_epochs(range(1, 4))
        emit_epochs([1, 2], model='other')
    assert only.model_names_seen() == ['other']
    assert only.series('other', 'acc')['val'] == ([2], [0.02])


def test_earlier_epochs_come_first_and_the_session_wins(
    tmp_path: pathlib.Path,
) -> None:
    loader = _FixedLoader()
    plotter = _Recorder(metric_loader=loader)
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        # the model resumes from a checkpoint at epoch 4
        log_events.LoadModelEvent(
            model_name='m', definition='state', location='x', epoch=4
        )
        emit_epochs([3, 4], sources=['train'])
    assert loader.calls == [('m', 4)]
    epochs, values = plotter.series('m', 'loss')['train']
    assert epochs == [1, 2, 3, 4]
    assert values == [-1.0, -2.0, value(3, 'train'), value(4, 'train')]
    # a source only the earlier session had is kept whole
    assert plotter.series('m', 'loss')['test'] == ([2], [-20.0])


def test_plots_update_at_epoch_end_once_asked_for(
    tmp_path: pathlib.Path,
) -> None:
    plotter = _Recorder()
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1])
        assert plotter.draws == [], 'nothing drawn before it is asked for'
        plot = plotter.plot_metric('m', 'loss')
        emit_epochs([2])
        exp.trackers.flush()  # the plotter runs on the background worker
        assert plot['train'][0] == [1, 2], 'updated in place'
        assert plotter.draws == [('m', 'loss')] * 2
        one_off = plotter.plot_metric('m', 'loss', source_names=['val'])
        assert list(one_off) == ['val']
    # at the end, every metric is drawn
    assert ('m', 'acc') in plotter.draws


def test_live_plotters_draw_every_metric_each_epoch(
    tmp_path: pathlib.Path,
) -> None:
    plotter = _LiveRecorder()
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1, 2])
    assert sorted(plotter.draws) == sorted([('m', 'acc'), ('m', 'loss')] * 2)


def test_a_new_run_starts_a_new_session(tmp_path: pathlib.Path) -> None:
    plotter = _Recorder()
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run('a'):
        emit_epochs([1, 2, 3])
    assert plotter.series('m', 'loss')['train'][0] == [1, 2, 3]
    with exp.create_run('b'):
        emit_epochs([1])
    assert plotter.series('m', 'loss')['train'][0] == [1]


def test_errors_name_what_is_wrong(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match='start=0'):
        _Recorder(start=0)
    plotter = _Recorder()
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1])
    with pytest.raises(ValueError, match=r"'lost'.*its metrics: acc, loss"):
        plotter.plot_metric('m', 'lost')


def test_empty_window_at_the_end_is_not_an_error(
    tmp_path: pathlib.Path,
) -> None:
    plotter = _Recorder(start=10)
    exp = make_experiment(tmp_path, plotter)
    with warnings.catch_warnings():
        warnings.simplefilter('error', TrackerExceptionWarning)
        with exp.create_run():
            emit_epochs([1, 2])
    assert plotter.draws == []


def test_repeated_and_late_epochs_keep_the_curve_sorted(
    tmp_path: pathlib.Path,
) -> None:
    plotter = _Recorder()
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        for epoch, loss in [(1, 1.0), (3, 3.0), (3, 3.5), (2, 2.0)]:
            log_events.MetricEvent(
                model_name='m',
                source_name='train',
                epoch=epoch,
                metrics={'loss': loss},
            )
    assert plotter.series('m', 'loss')['train'] == ([1, 2, 3], [1.0, 2.0, 3.5])


class _Extending(_Recorder):
    """Also records what each epoch appends, as a real backend would."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.extends: list[dict[str, list[int]]] = []

    @override
    def _extend(
        self,
        model_name: str,
        metric_name: str,
        grown: Mapping[str, Points],
        plot: dict,
    ) -> dict:
        self.extends.append(
            {source: p.tail()[0].tolist() for source, p in grown.items()}
        )
        for source, points in grown.items():
            plot[source] = (points.x.tolist(), points.y.tolist())
        return plot


def test_an_epoch_hands_the_backend_only_its_new_points(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-epoch work does not grow with the history: no redraw, no read."""
    plotter = _Extending(metric_names=['loss'])
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1])
        plot = plotter.plot_metric('m', 'loss')
        reads = mock.Mock(wraps=plotter.series)
        monkeypatch.setattr(plotter, 'series', reads)
        emit_epochs(range(2, 301))
        exp.trackers.flush()
        assert reads.call_count == 0, 'the history was read again'
        assert plotter.draws == [('m', 'loss')], 'drawn once, then extended'
        assert plotter.extends == [
            {'train': [epoch], 'val': [epoch]} for epoch in range(2, 301)
        ]
        assert plotter.plot_metric('m', 'loss') is plot
        assert len(plotter.extends) == 299, 'asking again adds nothing'
    assert plot == plotter.series('m', 'loss')


def test_changes_other_than_appends_draw_the_plot_anew(
    tmp_path: pathlib.Path,
) -> None:
    plotter = _Extending(metric_names=['loss'])
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1, 2])
        plot = plotter.plot_metric('m', 'loss')
        emit_epochs([3])  # appended
        emit_epochs([2])  # a repeated epoch: a rewrite
        emit_epochs([3], sources=['test'])  # a new source
        emit_epochs([4])  # appended again
        exp.trackers.flush()
        assert plotter.draws == [('m', 'loss')] * 3
        assert plotter.extends == [
            {'train': [3], 'val': [3]},
            {'train': [4], 'val': [4]},
        ]
        assert plot == plotter.series('m', 'loss')


def test_a_window_of_the_last_epochs_is_drawn_at_its_size(
    tmp_path: pathlib.Path,
) -> None:
    shown: list[int] = []

    class _Window(_Extending):
        @override
        def _draw(self, model_name, metric_name, series, previous):
            shown.append(len(series['train'][0]))
            return super()._draw(model_name, metric_name, series, previous)

    plotter = _Window(metric_names=['loss'], source_names=['train'], start=-3)
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1])
        plot = plotter.plot_metric('m', 'loss')
        emit_epochs(range(2, 8))
        exp.trackers.flush()
        assert plot['train'][0] == [5, 6, 7]
    assert shown == [1, 2, 3, 3, 3, 3, 3]
    assert plotter.extends == []


def test_a_one_off_plot_on_a_server_gives_the_window_back(
    tmp_path: pathlib.Path,
) -> None:
    class _LiveExtending(_Extending):
        live: ClassVar[bool] = True

    plotter = _LiveExtending(metric_names=['loss'])
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        emit_epochs([1, 2])
        plotter.plot_metric('m', 'loss', source_names=['val'])
        emit_epochs([3])
        exp.trackers.flush()
        # drawn live at 1, extended at 2, one-off, own plot anew at 3
        assert len(plotter.draws) == 3
        assert plotter.extends == [{'train': [2], 'val': [2]}]
        own = plotter.plot_metric('m', 'loss')
        assert own['train'][0] == [1, 2, 3]


def test_earlier_epochs_are_cut_once_then_the_plot_grows(
    tmp_path: pathlib.Path,
) -> None:
    """The session's first epoch replaces the earlier ones: one redraw."""
    plotter = _Extending(metric_loader=_FixedLoader(), source_names=['train'])
    exp = make_experiment(tmp_path, plotter)
    with exp.create_run():
        plot = plotter.plot_metric('m', 'loss')  # earlier epochs only
        assert plot['train'][0] == [1, 2, 3, 4, 5]
        emit_epochs(range(3, 9), sources=['train'])
        exp.trackers.flush()
        assert plotter.draws == [('m', 'loss')] * 2
        assert plotter.extends == [{'train': [e]} for e in range(4, 9)]
        assert plot == plotter.series('m', 'loss')
        assert plot['train'][0] == list(range(1, 9))
