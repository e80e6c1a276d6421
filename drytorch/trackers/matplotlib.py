"""Metrics as matplotlib figures, drawn without pyplot.

Figures are created as :class:`matplotlib.figure.Figure` objects rather
than through ``pyplot``: nothing depends on the interactive backend, so the
plotter works the same on a cluster node (no display, Agg) and in a
notebook, and a long run does not pile figures up in pyplot's registry.

An epoch hands each grown line the arrays the plotter keeps (views of
:class:`~drytorch.trackers.plotting.Points`) and widens the data limits by
the new points only: ``relim`` would walk every point of every line.
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
    from matplotlib.figure import Figure

__all__ = ['MatPlotter', 'is_available']


def is_available() -> bool:
    """Whether matplotlib can be imported."""
    return module_available('matplotlib')


class MatPlotter(FigurePlotter['Figure']):
    """Plots each metric of a model in a matplotlib figure.

    :meth:`plot_metric` returns the figure (shown by notebooks); the
    plotter's own figures are updated at each epoch end once asked for, and
    :meth:`save` writes every metric as a PNG file.

    Args:
        model_names: the models to plot; every model when empty.
        source_names: the sources to plot; every source when empty.
        metric_names: the metrics to plot; every metric when empty.
        start: the first epoch shown; negative: only the last epochs.
        metric_loader: reads the metrics of earlier sessions.
        figsize: the figure size in inches.
        dpi: the resolution of saved figures.

    """

    suffix: ClassVar[str] = '.png'

    def __init__(
        self,
        model_names: Iterable[str] = (),
        source_names: Iterable[str] = (),
        metric_names: Iterable[str] = (),
        start: int = 1,
        metric_loader: MetricLoader | None = None,
        *,
        figsize: tuple[float, float] = (6.4, 4.0),
        dpi: int = 100,
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('matplotlib', 'plots')
        super().__init__(
            model_names, source_names, metric_names, start, metric_loader
        )
        self.figsize = figsize
        self.dpi = dpi

    @override
    def _draw(
        self,
        model_name: str,
        metric_name: str,
        series: Mapping[str, Series],
        previous: Figure | None,
    ) -> Figure:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        if previous is None:
            figure = Figure(figsize=self.figsize, dpi=self.dpi)
            axes = figure.add_subplot()
            axes.set_title(f'{model_name}: {metric_name}')
            axes.set_xlabel('epoch')
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_ylabel(metric_name)
            axes.grid(alpha=0.3)
        else:
            figure = previous
            axes = figure.axes[0]
        lines = {line.get_label(): line for line in axes.get_lines()}
        added = False
        for source, (epochs, values) in series.items():
            line = lines.get(source)
            if line is None:
                (line,) = axes.plot(epochs, values, label=source)
                added = True
            else:
                line.set_data(epochs, values)
            # a source with one point (a test) is invisible as a line
            line.set_marker('o' if len(epochs) == 1 else '')
        if added:
            axes.legend()
        axes.relim()
        axes.autoscale_view()
        return figure

    @override
    def _extend(
        self,
        model_name: str,
        metric_name: str,
        grown: Mapping[str, Points],
        plot: Figure,
    ) -> Figure:
        import numpy as np

        axes = plot.axes[0]
        lines = {line.get_label(): line for line in axes.get_lines()}
        for source, points in grown.items():
            line = lines[source]
            line.set_data(points.x, points.y)
            line.set_marker('')  # two points at least: a line shows
            axes.update_datalim(np.column_stack(points.tail()))
        axes.autoscale_view()
        return plot

    @override
    def _write(self, figure: Figure, path: pathlib.Path) -> None:
        figure.savefig(path)
