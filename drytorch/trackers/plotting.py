"""What every plotter shares: the metrics to draw and when to draw them.

A plotter keeps the metrics of the running session in memory, and, when it
has a :class:`~drytorch.trackers.base_classes.MetricLoader`, the metrics an
earlier session stored for the same model.  A curve shows the earlier
epochs followed by the session's own: where both hold an epoch, or the
session went back to an earlier epoch (a resumed run), the session wins, so
that no epoch is drawn twice.

Drawing is left to the subclasses; this module decides which curves a plot
shows (their points: ``_curves``) and refreshes plots at the end of each
epoch, only where new values arrived.  A refresh must not cost more as the
run grows (a plot of epoch 5,000 is updated as fast as one of epoch 10):
once a plot is drawn (:meth:`BasePlotter._draw`), an epoch that only adds
points hands the backend those points (:meth:`BasePlotter._extend`), and
the history is read again only when what the plot shows changed otherwise
(a repeated or late epoch, a new source, a window of the last epochs).
"""

from __future__ import annotations

import abc
import functools
import pathlib
from collections.abc import Iterable, Mapping
from typing import ClassVar, Generic, TypeVar

from typing_extensions import override

from drytorch.core import log_events
from drytorch.core.tracking import EventDispatcher, Tracker
from drytorch.trackers._curves import (
    Curve,
    Points,
    Series,
    Shown,
    join,
    sorted_history,
)
from drytorch.trackers.base_classes import MetricHistory, MetricLoader

__all__ = ['BasePlotter', 'FigurePlotter', 'Points', 'Series']

_Plot = TypeVar('_Plot')


class BasePlotter(Tracker, Generic[_Plot]):
    """Keeps metrics and hands subclasses the curves to draw.

    Args:
        model_names: the models to plot; every model when empty.
        source_names: the sources to plot; every source when empty.
        metric_names: the metrics to plot; every metric when empty.
        start: the first epoch shown; a negative value shows only the last
            ``-start`` epochs, which keeps long runs readable.
        metric_loader: reads what earlier sessions stored for a model; its
            epochs come first on every curve.

    """

    live: ClassVar[bool] = False
    """Draw every metric at each epoch end (a server shows it), rather than
    only the plots already asked for."""

    def __init__(
        self,
        model_names: Iterable[str] = (),
        source_names: Iterable[str] = (),
        metric_names: Iterable[str] = (),
        start: int = 1,
        metric_loader: MetricLoader | None = None,
    ) -> None:
        super().__init__()
        if start == 0:
            raise ValueError(
                'start=0 selects nothing; use a positive first epoch '
                '(1 shows every epoch) or a negative count of last epochs.'
            )
        self.model_names = frozenset(model_names)
        self.source_names = frozenset(source_names)
        self.metric_names = frozenset(metric_names)
        self.start = start
        self.metric_loader = metric_loader
        # model -> source -> metric -> curve, kept sorted by epoch
        self._session: dict[str, dict[str, dict[str, Curve]]] = {}
        self._earlier: dict[str, MetricHistory] = {}
        self._load_epoch: dict[str, int] = {}
        self._stale: dict[str, set[str]] = {}
        self._plots: dict[tuple[str, str], _Plot] = {}
        self._shown: dict[tuple[str, str], dict[str, Shown]] = {}

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        # A new session starts: the previous one's plots stay with whoever
        # holds them, but are no longer updated.
        self._session.clear()
        self._earlier.clear()
        self._load_epoch.clear()
        self._stale.clear()
        self._plots.clear()
        self._shown.clear()
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.LoadModelEvent) -> None:
        # A model resumed from a checkpoint: earlier metrics past it are
        # from a history this session does not continue.
        if event.model_name not in self._earlier:
            self._load_epoch[event.model_name] = event.epoch
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        if self._wanted(event.model_name, event.source_name):
            self._load_earlier(event.model_name)
            metrics = {
                name: float(value)
                for name, value in event.metrics.items()
                if self._metric_wanted(name)
            }
            if metrics:
                model = self._session.setdefault(event.model_name, {})
                curves = model.setdefault(event.source_name, {})
                for name, value in metrics.items():
                    curves.setdefault(name, Curve()).put(event.epoch, value)
                stale = self._stale.setdefault(event.model_name, set())
                stale.update(metrics)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndEpochEvent) -> None:
        self._refresh(event.model_name, create=self.live)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndTestEvent) -> None:
        self._refresh(event.model_name, create=self.live)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StopExperimentEvent) -> None:
        self._refresh(None, create=True)
        return super().notify(event)

    def plot_metric(
        self,
        model_name: str,
        metric_name: str,
        source_names: Iterable[str] | None = None,
        start: int | None = None,
    ) -> _Plot:
        """Draw a metric of a model, one curve per source.

        Without ``source_names`` and ``start`` the plot is the plotter's
        own, updated at each epoch end; with them, a new plot is drawn
        once (a server plotter draws it in the metric's window, where the
        plotter's own plot comes back at the next epoch end).

        Args:
            model_name: the model.
            metric_name: the metric.
            source_names: the sources to draw; the plotter's choice if None.
            start: the first epoch (negative: the last epochs to show); the
                plotter's ``start`` if None.

        Returns:
            The backend's figure, or window name for a server.

        """
        dispatcher = EventDispatcher.active()
        if dispatcher is not None:  # the plot has every event published
            dispatcher.flush()
        self._load_earlier(model_name)
        chosen = None if source_names is None else list(source_names)
        if chosen is None and start is None:
            plot = self._update(model_name, metric_name)
        else:
            series = self.series(model_name, metric_name, chosen, start)
            plot = None
            if series:
                plot = self._draw(model_name, metric_name, series, None)
                if self.live:  # drawn over the own plot: draw that anew
                    self._plots.pop((model_name, metric_name), None)
                    self._shown.pop((model_name, metric_name), None)
        if plot is None:
            known = ', '.join(sorted(self.metrics_of(model_name))) or 'none'
            raise ValueError(
                f'No values of metric {metric_name!r} for model '
                f'{model_name!r} (its metrics: {known}); check the names and '
                "the plotter's model_names, source_names and metric_names."
            )
        return plot

    def series(
        self,
        model_name: str,
        metric_name: str,
        source_names: Iterable[str] | None = None,
        start: int | None = None,
    ) -> dict[str, Series]:
        """The points of each source's curve, earlier sessions first."""
        earlier = self._earlier.get(model_name, {})
        current = self._session.get(model_name, {})
        first = self.start if start is None else start
        out: dict[str, Series] = {}
        for name in self._sources(model_name, source_names):
            curves = current.get(name, {})
            epochs, values = join(earlier, curves, name, metric_name, first)
            if epochs:
                out[name] = (epochs, values)
        return out

    def metrics_of(self, model_name: str) -> set[str]:
        """Names of the metrics known for a model, in either session."""
        names: set[str] = set()
        for _, values in self._earlier.get(model_name, {}).values():
            names.update(values)
        for curves in self._session.get(model_name, {}).values():
            names.update(curves)
        return {name for name in names if self._metric_wanted(name)}

    def _sources(
        self, model_name: str, chosen: Iterable[str] | None = None
    ) -> list[str]:
        """A model's sources to draw: the earlier session's first."""
        earlier = self._earlier.get(model_name, {})
        current = self._session.get(model_name, {})
        names = list(earlier) + [s for s in current if s not in earlier]
        if chosen is not None:
            allowed = set(chosen)
            return [name for name in names if name in allowed]
        return [name for name in names if self._source_wanted(name)]

    def model_names_seen(self) -> list[str]:
        """Models with metrics from either session."""
        seen = list(self._earlier)
        return seen + [name for name in self._session if name not in seen]

    @abc.abstractmethod
    def _draw(
        self,
        model_name: str,
        metric_name: str,
        series: Mapping[str, Series],
        previous: _Plot | None,
    ) -> _Plot:
        """Draw ``series`` into ``previous`` (an update) or a new plot."""

    def _extend(
        self,
        model_name: str,
        metric_name: str,
        grown: Mapping[str, Points],
        plot: _Plot,
    ) -> _Plot:
        """Add the new points of the sources in ``grown`` to ``plot``.

        ``grown`` holds only the sources with new points, each after the
        last one drawn: :meth:`Points.tail` are the new points, ``x`` and
        ``y`` all the points the curve now shows.  Override it so that an
        epoch costs the same however long the run is; by default the plot
        is drawn again with every point.
        """
        series = self.series(model_name, metric_name)
        return self._draw(model_name, metric_name, series, plot)

    def _refresh(self, model_name: str | None, create: bool) -> None:
        """Update the plots of metrics that received values."""
        models = list(self._stale) if model_name is None else [model_name]
        for model in models:
            for metric in sorted(self._stale.get(model, ())):
                if create or (model, metric) in self._plots:
                    self._update(model, metric)

    def _update(self, model_name: str, metric_name: str) -> _Plot | None:
        """Bring the plotter's own plot of a metric up to date.

        Returns:
            The plot, or None when the metric has no point to show.

        """
        self._stale.get(model_name, set()).discard(metric_name)
        key = (model_name, metric_name)
        plot = self._plots.get(key)
        if plot is not None:
            grown = self._grown(model_name, metric_name)
            if grown is not None:
                if grown:
                    plot = self._extend(model_name, metric_name, grown, plot)
                    self._plots[key] = plot
                return plot
        series = self.series(model_name, metric_name)
        if not series:
            return None
        plot = self._draw(model_name, metric_name, series, plot)
        self._plots[key] = plot
        earlier = self._earlier.get(model_name, {})
        current = self._session.get(model_name, {})
        self._shown[key] = {
            source: Shown(
                drawn, earlier, current.get(source, {}), source, metric_name
            )
            for source, drawn in series.items()
        }
        return plot

    def _grown(
        self, model_name: str, metric_name: str
    ) -> dict[str, Points] | None:
        """The sources a plot must add points to, with those points.

        Returns:
            None when the plot must be drawn anew: a window of the last
            epochs moved, a curve changed other than by appending, or a
            source the plot does not show has points now.

        """
        if self.start < 0:
            return None
        shown = self._shown.get((model_name, metric_name), {})
        earlier = self._earlier.get(model_name, {})
        current = self._session.get(model_name, {})
        grown: dict[str, Points] = {}
        for source in self._sources(model_name):
            curves = current.get(source, {})
            state = shown.get(source)
            if state is None:
                curve = curves.get(metric_name)
                if curve is not None and curve.epochs[-1] >= self.start:
                    return None  # a source to show: a trace to add
                continue
            added = state.grow(
                earlier, curves, source, metric_name, self.start
            )
            if added is None:
                return None
            if added:
                grown[source] = state.points
        return grown

    def _load_earlier(self, model_name: str) -> None:
        if self.metric_loader is None or model_name in self._earlier:
            return
        max_epoch = self._load_epoch.pop(model_name, -1)
        loaded = self.metric_loader.load_metrics(model_name, max_epoch)
        self._earlier[model_name] = {
            source: sorted_history(history)
            for source, history in loaded.items()
            if self._source_wanted(source)
        }

    def _wanted(self, model_name: str, source_name: str) -> bool:
        model_ok = not self.model_names or model_name in self.model_names
        return model_ok and self._source_wanted(source_name)

    def _source_wanted(self, source_name: str) -> bool:
        return not self.source_names or source_name in self.source_names

    def _metric_wanted(self, metric_name: str) -> bool:
        return not self.metric_names or metric_name in self.metric_names


class FigurePlotter(BasePlotter[_Plot], Generic[_Plot]):
    """A plotter whose plots are figures in memory that can be saved."""

    suffix: ClassVar[str] = ''
    """The file suffix :meth:`save` gives each figure."""

    def save(self, folder: str | pathlib.Path) -> list[pathlib.Path]:
        """Write every metric's figure as ``<folder>/<model>/<metric>``.

        Returns:
            The paths written.

        """
        written: list[pathlib.Path] = []
        for model in self.model_names_seen():
            for metric in sorted(self.metrics_of(model)):
                if not self.series(model, metric):
                    continue
                figure = self.plot_metric(model, metric)
                path = pathlib.Path(folder, model, metric + self.suffix)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._write(figure, path)
                written.append(path)
        return written

    @abc.abstractmethod
    def _write(self, figure: _Plot, path: pathlib.Path) -> None:
        """Write ``figure`` to ``path``."""
