"""The points of the plotters' curves: epochs and values, kept sorted.

A curve joins what an earlier session stored (read through a metric
loader) with what the running session logged: the session's values replace
the earlier ones from the session's first epoch on, so that a resumed run
never shows an epoch twice.

Plots are updated at every epoch end, so nothing here may cost in
proportion to the history on the usual path, a new epoch after the last:
:class:`Curve` counts the changes that are not appends (after which a plot
is drawn anew), :func:`join` slices before it concatenates, and
:class:`Points` hands backends the arrays they show without copying them
per epoch.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from drytorch.trackers.base_classes import MetricHistory, SourceHistory

__all__ = [
    'Curve',
    'Points',
    'Series',
    'Shown',
    'join',
    'kept',
    'sorted_history',
]

Series = tuple[list[int], list[float]]
"""The epochs of a curve and its values at those epochs."""


class Curve:
    """The running session's values of one metric of one source.

    Attributes:
        epochs: the epochs, increasing.
        values: the value at each epoch.
        rewrites: how many changes were not appends (a repeated or a late
            epoch); a plot drawn before one no longer matches the curve.

    """

    __slots__ = ('epochs', 'rewrites', 'values')

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.values: list[float] = []
        self.rewrites = 0

    def put(self, epoch: int, value: float) -> None:
        """Add a point; a repeated epoch replaces its value."""
        epochs, values = self.epochs, self.values
        if not epochs or epoch > epochs[-1]:  # the usual case
            epochs.append(epoch)
            values.append(value)
            return
        self.rewrites += 1
        index = bisect.bisect_left(epochs, epoch)
        if epochs[index] == epoch:
            values[index] = value
        else:
            epochs.insert(index, epoch)
            values.insert(index, value)


class Points:
    """What a plot shows of one source, in arrays grown by doubling.

    Appending k points costs O(k) amortized whatever the length, and
    :attr:`x` and :attr:`y` are views (no copy), so a backend that needs
    the whole arrays (a figure's line) gets them at no cost per point.
    """

    __slots__ = ('_x', '_y', 'added', 'size')

    def __init__(self, epochs: Sequence[int], values: Sequence[float]) -> None:
        self.size = len(epochs)
        self.added = self.size
        capacity = max(16, 2 * self.size)
        self._x = np.empty(capacity, dtype=np.int64)
        self._y = np.empty(capacity, dtype=np.float64)
        self._x[: self.size] = epochs
        self._y[: self.size] = values

    @property
    def x(self) -> np.ndarray:
        """The epochs shown."""
        return self._x[: self.size]

    @property
    def y(self) -> np.ndarray:
        """The values shown."""
        return self._y[: self.size]

    def tail(self) -> tuple[np.ndarray, np.ndarray]:
        """The points the last :meth:`extend` added."""
        begin = self.size - self.added
        return self._x[begin : self.size], self._y[begin : self.size]

    def extend(self, epochs: Sequence[int], values: Sequence[float]) -> None:
        """Append points (epochs after the last one shown)."""
        size, count = self.size, len(epochs)
        if size + count > len(self._x):
            capacity = max(2 * len(self._x), size + count)
            self._x = np.resize(self._x, capacity)
            self._y = np.resize(self._y, capacity)
        self._x[size : size + count] = epochs
        self._y[size : size + count] = values
        self.size = size + count
        self.added = count


class Shown:
    """What a plot shows of one source's curve, and what it was drawn from.

    While the earlier epochs kept and the session curve's rewrites are what
    they were at the drawing, the curve changed only by appending, so its
    new points can be added to the plot; otherwise it must be drawn anew.

    Attributes:
        points: the points on the plot.

    """

    __slots__ = ('_taken', '_token', 'points')

    def __init__(
        self,
        series: Series,
        earlier: MetricHistory,
        curves: Mapping[str, Curve],
        source_name: str,
        metric_name: str,
    ) -> None:
        curve = curves.get(metric_name)
        self._token = _token(earlier, curves, source_name, curve)
        self._taken = len(curve.epochs) if curve is not None else 0
        self.points = Points(*series)

    def grow(
        self,
        earlier: MetricHistory,
        curves: Mapping[str, Curve],
        source_name: str,
        metric_name: str,
        start: int,
    ) -> bool | None:
        """Add the curve's new points from epoch ``start`` on.

        Returns:
            Whether points were added; None if the plot must be drawn anew.

        """
        curve = curves.get(metric_name)
        if _token(earlier, curves, source_name, curve) != self._token:
            return None
        if curve is None or len(curve.epochs) == self._taken:
            return False
        begin = bisect.bisect_left(curve.epochs, start, lo=self._taken)
        self._taken = len(curve.epochs)
        if begin == self._taken:
            return False
        self.points.extend(curve.epochs[begin:], curve.values[begin:])
        return True


def _token(
    earlier: MetricHistory,
    curves: Mapping[str, Curve],
    source_name: str,
    curve: Curve | None,
) -> tuple[int, int]:
    rewrites = curve.rewrites if curve is not None else 0
    return kept(earlier, curves, source_name), rewrites


def kept(
    earlier: MetricHistory, curves: Mapping[str, Curve], source_name: str
) -> int:
    """How many of the earlier session's epochs of a source are shown.

    Those before the running session's first epoch of the source: the
    session replaces what follows its start.
    """
    epochs = earlier.get(source_name, ([], {}))[0]
    starts = [curve.epochs[0] for curve in curves.values() if curve.epochs]
    if not starts:
        return len(epochs)
    return bisect.bisect_left(epochs, min(starts))


def join(
    earlier: MetricHistory,
    curves: Mapping[str, Curve],
    source_name: str,
    metric_name: str,
    start: int,
) -> Series:
    """A source's curve of a metric, the earlier session's epochs first.

    Both parts are cut to the window before they are joined, so that the
    last ``-start`` epochs cost in proportion to the window only.

    Args:
        earlier: the earlier sessions' history of the model.
        curves: the running session's curves of the source, by metric.
        source_name: the source.
        metric_name: the metric.
        start: the first epoch kept; negative: the last ``-start`` epochs.

    """
    epochs, values = _earlier_points(earlier, source_name, metric_name)
    cut = kept(earlier, curves, source_name) if epochs else 0
    own = curves.get(metric_name)
    own_epochs, own_values = (own.epochs, own.values) if own else ([], [])
    if own_epochs:
        last = own_epochs[-1]
    elif cut:
        last = epochs[cut - 1]
    else:
        return [], []
    first = start if start > 0 else last + start + 1
    begin = bisect.bisect_left(epochs, first, 0, cut)
    own_begin = bisect.bisect_left(own_epochs, first)
    return (
        epochs[begin:cut] + own_epochs[own_begin:],
        values[begin:cut] + own_values[own_begin:],
    )


def sorted_history(history: SourceHistory) -> SourceHistory:
    """A loaded history in epoch order (loaders return it so, normally)."""
    epochs, values = history
    if all(a < b for a, b in itertools.pairwise(epochs)):
        return history
    order = sorted(range(len(epochs)), key=epochs.__getitem__)
    return (
        [epochs[i] for i in order],
        {name: [vals[i] for i in order] for name, vals in values.items()},
    )


def _earlier_points(
    earlier: MetricHistory, source_name: str, metric_name: str
) -> Series:
    epochs, values = earlier.get(source_name, ([], {}))
    if metric_name not in values:
        return [], []
    return epochs, values[metric_name]
