"""Progress bars: one over epochs, one over the batches of each loop."""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.core.tracking import Tracker
from drytorch.trackers.base_classes import module_available

__all__ = ['TqdmLogger', 'is_available']


def is_available() -> bool:
    """Whether tqdm can be imported."""
    return module_available('tqdm')


class TqdmLogger(Tracker):
    """Shows training progress with tqdm.

    The batch bar is advanced at the loop's sync points only, with the
    global running metrics of that point, so it never forces a host sync.

    Args:
        leave: keep the finished batch bars on screen.
        enable_training_bar: show a bar over each loop's batches.

    """

    def __init__(
        self, leave: bool = False, enable_training_bar: bool = True
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError('tqdm', 'recommended')
        super().__init__()
        self.leave = leave
        self.enable_training_bar = enable_training_bar
        self._epoch_bar: Any = None
        self._batch_bars: dict[str, Any] = {}

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartTrainingEvent) -> None:
        from tqdm.auto import tqdm

        self._close_epoch_bar()
        total = event.end_epoch - event.start_epoch + 1
        self._epoch_bar = tqdm(
            total=max(total, 0),
            desc=f'{event.model_name} epochs',
            unit='epoch',
            leave=True,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndEpochEvent) -> None:
        if self._epoch_bar is not None:
            self._epoch_bar.update(1)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.IterateBatchEvent) -> None:
        if not self.enable_training_bar:
            return super().notify(event)
        from tqdm.auto import tqdm

        bar = self._batch_bars.get(event.source_name)
        if bar is not None:
            # the same loop again (next epoch): reuse its bar, which is
            # cheaper than a new one and does not flicker
            bar.reset(total=event.num_batches)
            bar.update(event.start_batch)
        else:
            bar = tqdm(
                total=event.num_batches,
                initial=event.start_batch,
                desc=event.source_name,
                unit='batch',
                leave=self.leave,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            self._batch_bars[event.source_name] = bar

        def push(metrics: Mapping[str, Any], batches_done: int) -> None:
            if metrics:
                bar.set_postfix(
                    {k: f'{v:.4g}' for k, v in metrics.items()},
                    refresh=False,
                )
            bar.update(batches_done - bar.n)

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
        return super().clean_up()
