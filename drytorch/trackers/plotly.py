"""Metrics as plotly figures, saved as self-contained HTML.

Traces hold numpy arrays: plotly validates a list point by point, which
made each epoch's update cost grow with the run, while an array is
copied whole in C.  An epoch sets each grown trace to the views the
plotter keeps (:class:`~drytorch.trackers.plotting.Points`), with no
Python work per point (plotly has no append of its own).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, ClassVar

from typing_extensions import override

from drytorch.core import exceptions
from drytorch.trackers.base_classes import MetricLoader, module_available
from drytorch.trackers.plotting import FigurePlotter, Points, Series

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

__all__ = ['PlotlyPlotter', 'is_available']


def is_available() -> bool:
    """Whether plotly can be imported."""
    return module_available('plotly')


class PlotlyPlotter(FigurePlotter['Figure']):
    """Plots each metric of a model in a plotly figure.

    :meth:`plot_metric` returns the figure; :meth:`save` writes every
    metric as an HTML file that embeds plotly.js, so that it opens on a
    cluster node or a laptop without network access.

    Args:
        model_names: the models to plot; every model when empty.
        source_names: the sources to plot; every source when empty.
        metric_names: the metrics to plot; every metric when empty.
        start: the first epoch shown; negative: only the last epochs.
        metric_loader: reads the metrics of earlier sessions.
        include_plotlyjs: passed to ``write_html``; ``'cdn'`` makes small
            files that need network access to open.

    """

    suffix: ClassVar[str] = '.html'

    def __init__(
        self,
        model_names: Iterable[str] = (),
        source_names: Iterable[str] = (),
        metric_names: Iterable[str] = (),
        start: int = 1,
        metric_loader: MetricLoader | None = None,
        *,
        include_plotlyjs: bool | str = True,
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('plotly', 'plots')
        super().__init__(
            model_names, source_names, metric_names, start, metric_loader
        )
        self.include_plotlyjs = include_plotlyjs

    @override
    def _draw(
        self,
        model_name: str,
        metric_name: str,
        series: Mapping[str, Series],
        previous: Figure | None,
    ) -> Figure:
        import numpy as np
        import plotly.graph_objects as go

        if previous is None:
            figure = go.Figure()
            figure.update_layout(
                title=f'{model_name}: {metric_name}',
                xaxis_title='epoch',
                yaxis_title=metric_name,
            )
        else:
            figure = previous
        traces = {trace.name: trace for trace in figure.data}
        with figure.batch_update():
            for source, (epochs, values) in series.items():
                x = np.asarray(epochs, dtype=np.int64)
                y = np.asarray(values, dtype=np.float64)
                # a source with one point (a test) is invisible as a line
                mode = 'markers' if len(epochs) == 1 else 'lines'
                trace = traces.get(source)
                if trace is None:
                    figure.add_trace(
                        go.Scatter(x=x, y=y, name=source, mode=mode)
                    )
                else:
                    trace.update(x=x, y=y, mode=mode)
        return figure

    @override
    def _extend(
        self,
        model_name: str,
        metric_name: str,
        grown: Mapping[str, Points],
        plot: Figure,
    ) -> Figure:
        traces = {trace.name: trace for trace in plot.data}
        for source, points in grown.items():
            trace = traces[source]
            # set one by one: batch_update would compare and copy more
            trace.x = points.x
            trace.y = points.y
            if trace.mode != 'lines':  # it had a single point
                trace.mode = 'lines'
        return plot

    @override
    def _write(self, figure: Figure, path: pathlib.Path) -> None:
        figure.write_html(path, include_plotlyjs=self.include_plotlyjs)
