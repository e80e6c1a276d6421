"""Batch-level scalars of the TensorBoard tracker.

At each sync point a loop pushes the running means of its pass so far; they
are written under ``batch/<model>/<source>/<metric>`` against a global step:
the epochs the model had completed when the pass started, times the batches
of a pass, plus the batches done.  A training pass of epoch ``e`` therefore
covers the steps ``(e - 1) * n + 1`` to ``e * n``, and an evaluation of a
model at epoch ``e`` the steps ``e * n + 1`` to ``(e + 1) * n``.

Each model and source writes to a folder of its own, under ``batches``
(``batches/<model>/<source>``, names percent-quoted), which TensorBoard
shows as a run of its own.  A restart marker hides every tag of its folder
(see ``_tensorboard_files``), so with one source per folder a pass that
goes back over steps already written (a resumed attempt, or a repeated
evaluation) is a marker at its first step and nothing else: what the
earlier attempt wrote before that step stays, what it wrote from it on
is replaced, and nothing needs to be written again.
"""

from __future__ import annotations

import pathlib
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from drytorch.core import exceptions, log_events
from drytorch.trackers._tensorboard_files import (
    has_event_files,
    purge,
    wait_for_a_later_second,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ['BatchScalars', 'Push']

Push = Callable[[Mapping[str, Any], int], None]


class _SourceLog:
    """The writer of one model and source, and how far it wrote."""

    def __init__(self, path: pathlib.Path, tag_prefix: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        path.mkdir(parents=True, exist_ok=True)
        # an earlier attempt's values: unknown, so the first pass purges
        self.inherited = has_event_files(path)
        if self.inherited:
            wait_for_a_later_second(path)
        self.path = path
        self.tag_prefix = tag_prefix
        self.writer: SummaryWriter | None = SummaryWriter(str(path))
        self.high = 0  # the highest step written in this attempt

    def write(self, metrics: Mapping[str, Any], step: int) -> None:
        writer = self.writer
        if writer is None:  # closed: a push after the run stopped
            return
        if not self.path.is_dir():
            raise exceptions.TrackerError(
                f'The TensorBoard folder {self.path} was removed during the '
                'run; keep it until the run stops'
            )
        for name, value in metrics.items():
            writer.add_scalar(self.tag_prefix + name, float(value), step)
        self.high = max(self.high, step)

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            writer.close()
        except OSError:
            # the folder was removed under the writer: already reported
            if self.path.is_dir():
                raise


class BatchScalars:
    """Writes the running metrics that loops push at their sync points.

    Args:
        root: the folder of the per-source folders.

    Attributes:
        failure: the first error of a push, which cannot raise inside the
            training loop; the tracker raises it at its next event.

    """

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.failure: Exception | None = None
        self._logs: dict[tuple[str, str], _SourceLog] = {}
        self._epochs: dict[str, int] = {}
        self._models: dict[str, str] = {}

    def epochs_done(self, model_name: str, epochs: int) -> None:
        """The model has completed ``epochs`` epochs."""
        self._epochs[model_name] = epochs

    def source_of(self, source_name: str, model_name: str) -> None:
        """A source acts on a model (for events that do not say which)."""
        self._models[source_name] = model_name

    def start_pass(self, event: log_events.IterateBatchEvent) -> Push:
        """The callback that writes what the pass of ``event`` pushes."""
        source = event.source_name
        model = event.model_name or self._models.get(source, '')
        log = self._log(model, source)
        if model and event.n_iter:
            base = self._epochs.get(model, 0) * event.n_iter
        else:  # no position known: a running count of the source's steps
            base = log.high
        first = base + event.start_batch + 1
        restart = log.inherited or first <= log.high
        log.inherited = False

        batches_done = 0  # the increments add up to the position

        def push(metrics: Mapping[str, Any], advanced: int) -> None:
            nonlocal restart, batches_done
            batches_done += advanced
            if self.failure is not None or log.writer is None:
                return
            try:
                if restart:
                    restart = False
                    purge(log.writer, first)
                log.write(metrics, base + batches_done)
            except Exception as err:  # noqa: BLE001 - reported at next event
                self.failure = err

        return push

    def flush(self) -> None:
        """Wait until every writer's thread has written what it was given."""
        for log in self._logs.values():
            if log.writer is not None:
                log.writer.flush()

    def close(self) -> None:
        """Close every writer; pushes that come later are ignored."""
        logs = list(self._logs.values())
        self._logs.clear()
        error: OSError | None = None
        for log in logs:
            try:
                log.close()
            except OSError as err:
                error = error or err
        if error is not None:
            raise error

    def _log(self, model: str, source: str) -> _SourceLog:
        log = self._logs.get((model, source))
        if log is not None:
            if not log.path.is_dir():
                raise exceptions.TrackerError(
                    f'The TensorBoard folder {log.path} was removed during '
                    'the run; keep it until the run stops'
                )
            return log
        path = self.root / _component(model) / _component(source)
        prefix = f'batch/{model}/{source}/' if model else f'batch/{source}/'
        log = _SourceLog(path, prefix)
        self._logs[(model, source)] = log
        return log


def _component(name: str) -> str:
    """A folder name for a model or source name, one per name.

    Quoting leaves letters, digits and ``_.-~`` alone and never writes a
    parenthesis or ``%2E``, so the stand-ins for no name and for the
    special names ``.`` and ``..`` cannot be the quote of another name.
    """
    if not name:
        return '(none)'
    quoted = urllib.parse.quote(name, safe='')
    if quoted in ('.', '..'):
        return quoted.replace('.', '%2E')
    return quoted
