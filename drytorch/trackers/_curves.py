"""The points of the plotters' curves: epochs and values, kept sorted.

A curve joins what an earlier session stored (read through a metric
loader) with what the running session logged: the session's values replace
the earlier ones from the session's first epoch on, so that a resumed run
never shows an epoch twice.
"""

from __future__ import annotations

import bisect
import itertools

from drytorch.trackers.base_classes import MetricHistory, SourceHistory

__all__ = ['Series', 'join', 'put', 'sorted_history', 'window']

Series = tuple[list[int], list[float]]
"""The epochs of a curve and its values at those epochs."""


def join(
    earlier: MetricHistory,
    curves: dict[str, Series],
    source_name: str,
    metric_name: str,
    start: int,
) -> Series:
    """A source's curve of a metric, the earlier session's epochs first.

    Args:
        earlier: the earlier sessions' history of the model.
        curves: the running session's curves of the source, by metric.
        source_name: the source.
        metric_name: the metric.
        start: the first epoch kept; negative: the last ``-start`` epochs.

    """
    epochs, values = _earlier_points(earlier, source_name, metric_name)
    starts = [curve[0][0] for curve in curves.values() if curve[0]]
    if starts:  # the session replaces what follows its start
        cut = bisect.bisect_left(epochs, min(starts))
        epochs, values = epochs[:cut], values[:cut]
    own_epochs, own_values = curves.get(metric_name, ([], []))
    return window(epochs + own_epochs, values + own_values, start)


def put(curve: Series, epoch: int, value: float) -> None:
    """Add a point to a curve sorted by epoch; a repeated epoch replaces."""
    epochs, values = curve
    if not epochs or epoch > epochs[-1]:  # the usual case
        epochs.append(epoch)
        values.append(value)
        return
    index = bisect.bisect_left(epochs, epoch)
    if epochs[index] == epoch:
        values[index] = value
    else:
        epochs.insert(index, epoch)
        values.insert(index, value)


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


def window(epochs: list[int], values: list[float], start: int) -> Series:
    """Keep the epochs from ``start`` on, or the last ``-start`` ones."""
    if not epochs:
        return epochs, values
    first = start if start > 0 else epochs[-1] + start + 1
    index = bisect.bisect_left(epochs, first)
    return epochs[index:], values[index:]


def _earlier_points(
    earlier: MetricHistory, source_name: str, metric_name: str
) -> Series:
    epochs, values = earlier.get(source_name, ([], {}))
    if metric_name not in values:
        return [], []
    return epochs, values[metric_name]
