"""Progress bars: one over epochs, one over the batches of each loop.

On a terminal they are tqdm's live bars.  Anywhere else (SLURM writes the
job's stderr to a file) a live bar leaves carriage returns and cursor
escapes in the log, so progress becomes plain lines instead: the running
global metrics, the position and the rate, at most one every ``interval``
seconds (counted from the loop's start and from the last such line, of any
loop), and one line per epoch with that epoch's global metrics.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, ClassVar, TextIO

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.core.tracking import Tracker
from drytorch.trackers.base_classes import module_available

__all__ = ['INTERVAL_VARIABLE', 'TqdmLogger', 'is_available']

INTERVAL_VARIABLE = 'DRYTORCH_PROGRESS_INTERVAL'
_DEFAULT_INTERVAL = 30.0
_clock = time.monotonic  # replaced by tests


def _interval(value: float | None) -> float:
    if value is None:
        text = os.environ.get(INTERVAL_VARIABLE, '').strip()
        if not text:
            return _DEFAULT_INTERVAL
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        where = f'{INTERVAL_VARIABLE}={text!r}'
    else:
        where = f'interval={value!r}'
    if not value >= 0:
        raise exceptions.DryTorchError(
            f'{where} is not a number of seconds >= 0; progress lines are '
            f'written at most once per interval (default '
            f'{_DEFAULT_INTERVAL:g}).'
        )
    return float(value)


def _is_terminal(stream: TextIO) -> bool:
    """Whether a live bar can redraw itself in ``stream``."""
    isatty = getattr(stream, 'isatty', None)
    try:
        return bool(callable(isatty) and isatty())
    except ValueError:  # a closed stream
        return False


def _rate_text(rate: float) -> str:
    """Batches per second, readable at 0.02 and at 3,000 alike."""
    return f'{rate:.1f}' if rate >= 1 else f'{rate:.2g}'


def _metrics_text(metrics: Mapping[str, Any]) -> str:
    return '  '.join(f'{k}={v:.4g}' for k, v in metrics.items())


def is_available() -> bool:
    """Whether tqdm can be imported."""
    return module_available('tqdm')


class TqdmLogger(Tracker):
    """Shows training progress with tqdm.

    The batch bar is advanced at the loop's sync points only, with the
    global running metrics of that point, so it never forces a host sync.

    It is immediate (notified on the training thread): a bar shows what
    happens now, and its callbacks run at the loop's own sync points.

    Args:
        leave: keep the finished batch bars on screen.
        enable_training_bar: also show a bar over the training's epochs
            (DRYTorch's meaning; the batch bars are always shown).
        file: the stream to write to; ``sys.stderr`` (as it is when a
            training starts) by default.
        interval: when the stream is not a terminal, the least seconds
            between two progress lines of a loop; default
            ``$DRYTORCH_PROGRESS_INTERVAL`` or 30.

    """

    immediate: ClassVar[bool] = True

    def __init__(
        self,
        leave: bool = True,
        enable_training_bar: bool = False,
        file: TextIO | None = None,
        *,
        interval: float | None = None,
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('tqdm', 'recommended')
        super().__init__()
        self.leave = leave
        self.enable_training_bar = enable_training_bar
        self.file = file
        self.interval = _interval(interval)
        self._epoch_bar: Any = None
        self._batch_bars: dict[str, Any] = {}
        self._plain: TextIO | None = None  # the stream, when not a tty
        self._epoch_metrics: dict[str, Mapping[str, Any]] = {}
        self._end_epoch = 0
        self._last_line = -float('inf')  # when the last progress line went

    def _stream(self) -> TextIO:
        return self.file if self.file is not None else sys.stderr

    def _write(self, line: str) -> None:
        stream = self._plain
        if stream is not None:
            stream.write(line + '\n')
            stream.flush()

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartTrainingEvent) -> None:
        self._close_epoch_bar()
        stream = self._stream()
        if not _is_terminal(stream):
            self._plain = stream
            self._end_epoch = event.end_epoch
            return super().notify(event)
        self._plain = None
        if not self.enable_training_bar:
            return super().notify(event)
        from tqdm.auto import tqdm

        total = event.end_epoch - event.start_epoch + 1
        self._epoch_bar = tqdm(
            total=max(total, 0),
            desc=f'{event.model_name} epochs',
            unit='epoch',
            leave=True,
            file=stream,
            dynamic_ncols=True,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        if self._plain is not None:
            self._epoch_metrics[event.source_name] = event.metrics
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndEpochEvent) -> None:
        if self._epoch_bar is not None:
            self._epoch_bar.update(1)
        if self._plain is not None:
            parts = [
                f'{event.model_name} epoch {event.epoch}/{self._end_epoch}'
            ]
            parts += [
                f'{source}: {_metrics_text(metrics)}'
                for source, metrics in self._epoch_metrics.items()
            ]
            self._write(' | '.join(parts))
            self._epoch_metrics = {}
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.IterateBatchEvent) -> None:
        if self._plain is not None or not self._is_tty():
            self._plain = (
                self._stream() if self._plain is None else self._plain
            )
            self._plain_loop(event)
            return super().notify(event)
        from tqdm.auto import tqdm

        bar = self._batch_bars.get(event.source_name)
        if bar is not None:
            # the same loop again (next epoch): reuse its bar, which is
            # cheaper than a new one and does not flicker
            bar.reset(total=event.n_iter)
            bar.update(event.start_batch)
        else:
            bar = tqdm(
                total=event.n_iter,
                initial=event.start_batch,
                desc=event.source_name,
                unit='batch',
                leave=self.leave,
                file=self._stream(),
                dynamic_ncols=True,
            )
            self._batch_bars[event.source_name] = bar

        done = 0  # the increments add up to the position in the loop

        def push(metrics: Mapping[str, Any], advanced: int) -> None:
            nonlocal done
            done += advanced
            if metrics:
                bar.set_postfix(
                    {k: f'{v:.4g}' for k, v in metrics.items()},
                    refresh=False,
                )
            bar.update(done - bar.n)

        event.push_updates.append(push)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndTrainingEvent) -> None:
        self._close_batch_bar()
        self._close_epoch_bar()
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndTestEvent) -> None:
        self._close_batch_bar()
        return super().notify(event)

    def _is_tty(self) -> bool:
        return _is_terminal(self._stream())

    def _plain_loop(self, event: log_events.IterateBatchEvent) -> None:
        """Progress lines of one loop, throttled to one per interval.

        A loop waits a whole interval before its first line (its rate
        means little before) and after any progress line of another loop,
        so that a loop nested in another (a test run by a hook) does not
        double the rate of lines.
        """
        began = _clock()
        start = event.start_batch
        total = event.n_iter
        of_total = f'/{total}' if total is not None else ''
        batches_done = 0

        def push(metrics: Mapping[str, Any], advanced: int) -> None:
            nonlocal batches_done
            batches_done += advanced
            now = _clock()
            if now - max(began, self._last_line) < self.interval:
                return
            self._last_line = now
            rate = (batches_done - start) / max(now - began, 1e-9)
            line = (
                f'{event.source_name} batch {batches_done}{of_total}  '
                f'{_rate_text(rate)} batch/s'
            )
            if metrics:
                line += f'  {_metrics_text(metrics)}'
            self._write(line)

        event.push_updates.append(push)

    def batch_bar(self, source_name: str) -> Any:
        """The open progress bar of a loop's batches, if any."""
        return self._batch_bars.get(source_name)

    def _close_batch_bar(self) -> None:
        for bar in self._batch_bars.values():
            bar.close()
        self._batch_bars.clear()

    def _close_epoch_bar(self) -> None:
        if self._epoch_bar is not None:
            self._epoch_bar.close()
            self._epoch_bar = None

    @override
    def clean_up(self) -> None:
        self._close_batch_bar()
        self._close_epoch_bar()
        self._plain = None
        self._epoch_metrics = {}
        self._last_line = -float('inf')
        return super().clean_up()
