"""Metrics drawn live in the windows of a running Visdom server.

The server is checked at construction, so that a wrong address fails
before training starts rather than at the first epoch.  Each epoch sends
only the new points of each curve (``update='append'``), in one request
when every trace grows by the same epochs, so that neither the plotter
nor the request grows with the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from typing_extensions import override

from drytorch.core import exceptions
from drytorch.trackers.base_classes import MetricLoader, module_available
from drytorch.trackers.plotting import BasePlotter, Points, Series

if TYPE_CHECKING:
    import visdom

__all__ = ['VisdomNotRunningError', 'VisdomPlotter', 'is_available']


def is_available() -> bool:
    """Whether visdom can be imported."""
    return module_available('visdom')


class VisdomNotRunningError(exceptions.TrackerError):
    """Raised when no Visdom server answers at the given address."""

    def __init__(self, server: str, port: int, reason: str) -> None:
        super().__init__(
            f'No Visdom server answers at {server}:{port} ({reason}). '
            'Start one first, e.g. `python -m visdom.server -port '
            f'{port}`, or pass the server and port it listens on.'
        )


class VisdomPlotter(BasePlotter[str]):
    """Plots each metric of a model in a window of a Visdom server.

    Windows are named ``<model>-<metric>`` in the environment ``env``;
    :meth:`plot_metric` returns the window's name.

    Args:
        server: the server's address.
        port: the server's port.
        env: the Visdom environment of the windows.
        model_names: the models to plot; every model when empty.
        source_names: the sources to plot; every source when empty.
        metric_names: the metrics to plot; every metric when empty.
        start: the first epoch shown; negative: only the last epochs.
        metric_loader: reads the metrics of earlier sessions.

    Raises:
        VisdomNotRunningError: when the server does not answer.

    """

    live: ClassVar[bool] = True

    def __init__(
        self,
        server: str = 'http://localhost',
        port: int = 8097,
        env: str = 'drytorch',
        *,
        model_names: Iterable[str] = (),
        source_names: Iterable[str] = (),
        metric_names: Iterable[str] = (),
        start: int = 1,
        metric_loader: MetricLoader | None = None,
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('visdom', 'visdom')
        super().__init__(
            model_names, source_names, metric_names, start, metric_loader
        )
        self.server = server
        self.port = port
        self.env = env
        self.viz = self._connect()
        # per window: the names of the traces it holds
        self._traces: dict[str, set[str]] = {}

    @override
    def _draw(
        self,
        model_name: str,
        metric_name: str,
        series: Mapping[str, Series],
        previous: str | None,
    ) -> str:
        win = previous or f'{model_name}-{metric_name}'
        names = self._traces.get(win, set()) if previous else set()
        self._traces[win] = names
        opts = self._options(model_name, metric_name)
        for source, (epochs, values) in series.items():
            # the first trace of a new window creates (or clears) it; a
            # name the window lacks becomes a trace of its own
            update = 'replace' if names else None
            self._line(win, [source], epochs, [values], update, opts)
            names.add(source)
        return win

    @override
    def _extend(
        self,
        model_name: str,
        metric_name: str,
        grown: Mapping[str, Points],
        plot: str,
    ) -> str:
        opts = self._options(model_name, metric_name)
        tails = {source: points.tail() for source, points in grown.items()}
        epochs = [x for x, _ in tails.values()]
        if set(tails) == self._traces.get(plot) and all(
            len(x) == len(epochs[0]) and (x == epochs[0]).all() for x in epochs
        ):
            # every trace grows by the same epochs: one request for all
            values = [y for _, y in tails.values()]
            self._line(plot, [], epochs[0], values, 'append', opts)
            return plot
        for source, (x, y) in tails.items():
            self._line(plot, [source], x, [y], 'append', opts)
        return plot

    def _line(
        self,
        win: str,
        names: list[str],
        epochs: Sequence[int],
        values: Sequence[Sequence[float]],
        update: str | None,
        opts: dict[str, object],
    ) -> None:
        """Send one trace (named) or all the window's traces (unnamed)."""
        import numpy as np

        y = np.asarray(values, dtype=float).T
        self.viz.line(
            Y=y[:, 0] if names else y,
            X=np.asarray(epochs),
            win=win,
            env=self.env,
            name=names[0] if names else None,
            update=update,
            opts=dict(opts),
        )

    @override
    def clean_up(self) -> None:
        """Close the HTTP session; the next run opens a new one."""
        session = getattr(self.viz, '_session', None)
        if session is not None:
            session.close()
            self.viz._session = None
        self._traces.clear()
        return super().clean_up()

    def _options(self, model: str, metric: str) -> dict[str, object]:
        return {
            'title': f'{model}: {metric}',
            'xlabel': 'epoch',
            'ylabel': metric,
            'showlegend': True,
            # a trace starts with one point, invisible as a bare line
            'markers': True,
            'markersize': 5,
        }

    def _connect(self) -> visdom.Visdom:
        import visdom

        try:
            with warnings.catch_warnings():
                # visdom calls its logger's deprecated ``warn``
                warnings.simplefilter('ignore', DeprecationWarning)
                viz = visdom.Visdom(
                    server=self.server,
                    port=self.port,
                    env=self.env,
                    raise_exceptions=True,
                    use_incoming_socket=False,
                )
        except ConnectionError as err:
            raise VisdomNotRunningError(
                self.server, self.port, str(err)
            ) from err
        if not viz.check_connection():
            raise VisdomNotRunningError(
                self.server, self.port, 'no answer to the connection check'
            )
        return viz
