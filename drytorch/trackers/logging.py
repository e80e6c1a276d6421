"""The ``drytorch`` logger of the standard library, as a tracker.

Messages have named levels (between INFO and WARNING) so that a mode can
show the start of each run but not each epoch, or metrics but not epoch
headers when a progress bar already shows them.
"""

from __future__ import annotations

import enum
import functools
import logging
import sys
from typing import TextIO

from typing_extensions import override

from drytorch.core import log_events
from drytorch.core.tracking import Tracker
from drytorch.trackers.base_classes import format_metrics

__all__ = [
    'BuiltinLogger',
    'DryTorchFilter',
    'DryTorchFormatter',
    'InfoLevels',
    'ProgressFormatter',
    'disable_default_handler',
    'disable_propagation',
    'enable_default_handler',
    'enable_propagation',
    'get_verbosity',
    'set_formatter',
    'set_verbosity',
]

logger = logging.getLogger('drytorch')
_FORMAT = '[%(asctime)s] - %(message)s'
_DATE_FORMAT = '%Y-%m-%d %H:%M:%S'


class InfoLevels(enum.IntEnum):
    """Levels of the library's messages, least important first."""

    internal = 19
    epoch = 20
    metrics = 21
    model_state = 23
    experiment = 24
    training = 25
    test = 26


for _level in InfoLevels:
    logging.addLevelName(_level.value, _level.name.upper())


class _CurrentStream(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout``/``sys.stderr`` is at emit time.

    Binding the stream at import would bypass later redirections (pytest's
    capture, ``contextlib.redirect_stderr``, notebooks).
    """

    def __init__(self, to_stdout: bool) -> None:
        super().__init__()
        self.to_stdout = to_stdout

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stdout if self.to_stdout else sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        return None

    def emit(self, record: logging.LogRecord) -> None:
        """Write above any live progress bar rather than through it."""
        tqdm_module = sys.modules.get('tqdm')
        if tqdm_module is None or not getattr(
            tqdm_module.tqdm, '_instances', None
        ):
            super().emit(record)
            return
        try:
            tqdm_module.tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def set_verbosity(level: InfoLevels | int) -> None:
    """Show the library's messages from ``level`` up."""
    logger.setLevel(int(level))


def get_verbosity() -> int:
    """The level from which messages are shown."""
    return logger.level


def _configure(to_stdout: bool, propagate: bool) -> None:
    for handler in list(logger.handlers):
        if isinstance(handler, _CurrentStream):
            logger.removeHandler(handler)
    handler = _CurrentStream(to_stdout)
    handler.setFormatter(DryTorchFormatter())
    logger.addHandler(handler)
    logger.propagate = propagate


class BuiltinLogger(Tracker):
    """Logs the life of a run through the ``drytorch`` logger.

    Args:
        verbosity: the least important level shown.
        to_stdout: log to stdout instead of stderr (Hydra's mode).
        propagate: also pass records to the root logger (for Hydra's file).

    It is immediate: a log line must be written when its event happens,
    interleaved with the user's own prints and warnings, not later.

    """

    immediate = True

    def __init__(
        self,
        verbosity: InfoLevels | int = InfoLevels.epoch,
        *,
        to_stdout: bool = False,
        propagate: bool = False,
    ) -> None:
        super().__init__()
        _configure(to_stdout, propagate)
        set_verbosity(verbosity)

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        verb = 'Resuming' if event.resumed else 'Starting'
        logger.log(
            InfoLevels.experiment,
            'Experiment: %s - %s run: %s',
            event.exp_name,
            verb,
            event.run_id,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StopExperimentEvent) -> None:
        suffix = '' if event.status == 'completed' else f' ({event.status})'
        logger.log(
            InfoLevels.experiment,
            'Experiment: %s - Stopping run: %s%s',
            event.exp_name,
            event.run_id,
            suffix,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartTrainingEvent) -> None:
        logger.log(
            InfoLevels.training,
            '%s: Training %s (epochs %d to %d).',
            event.source_name,
            event.model_name,
            event.start_epoch,
            event.end_epoch,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartEpochEvent) -> None:
        end = f'/{event.end_epoch}' if event.end_epoch else ''
        logger.log(InfoLevels.epoch, '====> Epoch %d%s:', event.epoch, end)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.TerminatedTrainingEvent) -> None:
        logger.log(
            InfoLevels.training,
            '%s: Training %s terminated at epoch %d. Reason: %s',
            event.source_name,
            event.model_name,
            event.epoch,
            event.reason,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndTrainingEvent) -> None:
        logger.log(
            InfoLevels.training, '%s: Training ended.', event.source_name
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartTestEvent) -> None:
        logger.log(
            InfoLevels.test,
            '%s: Testing %s.',
            event.source_name,
            event.model_name,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        logger.log(
            InfoLevels.metrics,
            '%s: %s (epoch %d) - %s',
            event.model_name,
            event.source_name,
            event.epoch,
            format_metrics(event.metrics),
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.SaveModelEvent) -> None:
        logger.log(
            InfoLevels.model_state,
            '%s: Saved %s at epoch %d in %s',
            event.model_name,
            event.definition,
            event.epoch,
            event.location,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.LoadModelEvent) -> None:
        logger.log(
            InfoLevels.model_state,
            '%s: Loaded %s of epoch %d from %s',
            event.model_name,
            event.definition,
            event.epoch,
            event.location,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.LearningRateEvent) -> None:
        logger.log(
            InfoLevels.model_state,
            '%s: %s set the learning rate to %s%s at epoch %d.',
            event.model_name,
            event.source_name,
            event.base_lr,
            f' ({event.scheduler_name})' if event.scheduler_name else '',
            event.epoch,
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.ModelRegistrationEvent) -> None:
        logger.log(
            InfoLevels.internal, 'Registered model %s.', event.model_name
        )
        return super().notify(event)


# ------------------------------------------------- DRYTorch's set-up helpers
# The handler of the ``drytorch`` logger and its relation to the root logger,
# with DRYTorch's names.  They change only this process's logging; under a
# process group only rank zero has a BuiltinLogger, so only its records are
# written anyway.


class DryTorchFilter(logging.Filter):
    """Drops the library's records from a handler it is added to.

    Added to a root handler, it keeps that handler from repeating what the
    library's own handler already wrote.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except the ``drytorch`` logger's."""
        return not (
            record.name == logger.name
            or record.name.startswith(logger.name + '.')
        )


class DryTorchFormatter(logging.Formatter):
    """``[date time] - message``, the library's line format."""

    def __init__(self) -> None:
        super().__init__(_FORMAT, _DATE_FORMAT)


class ProgressFormatter(DryTorchFormatter):
    """Epoch and model-state lines without a date, to be read as progress.

    For streams without a progress bar (the ``minimal`` mode without tqdm):
    the lines that come every epoch stay short, the others keep the date.
    """

    def format(self, record: logging.LogRecord) -> str:
        """A short line for epoch messages, the default line otherwise."""
        if record.levelno in (InfoLevels.epoch, InfoLevels.model_state):
            return record.getMessage()
        return super().format(record)


def _stream_handlers() -> list[logging.StreamHandler]:  # type: ignore[type-arg]
    return [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]


def enable_default_handler(stream: TextIO | None = None) -> None:
    """Write the library's records to ``stream`` (the current stderr).

    Replaces the logger's handlers; the logger stops propagating.  With no
    ``stream``, the handler writes to whatever ``sys.stderr`` is when a
    record comes (pytest's capture, a redirection), as the default does.
    """
    logger.handlers.clear()
    handler: logging.Handler
    if stream is None or stream is sys.stderr:
        handler = _CurrentStream(to_stdout=False)
    elif stream is sys.stdout:
        handler = _CurrentStream(to_stdout=True)
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(DryTorchFormatter())
    logger.addHandler(handler)
    logger.propagate = False


def disable_default_handler() -> None:
    """Silence the library's own output (records may still propagate)."""
    logger.handlers.clear()
    logger.addHandler(logging.NullHandler())


def enable_propagation(deduplicate_stream: bool = True) -> None:
    """Pass the library's records on to the root logger (Hydra's file).

    Args:
        deduplicate_stream: filter the library's records out of root
            handlers that write to a stream the library already writes to,
            so that no line shows twice on the console.

    """
    logger.propagate = True
    if not deduplicate_stream:
        return
    ours = {id(h.stream) for h in _stream_handlers()}
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, 'stream', None)
        shared = stream is not None and id(stream) in ours
        filtered = any(isinstance(f, DryTorchFilter) for f in handler.filters)
        if shared and not filtered:
            handler.addFilter(DryTorchFilter())


def disable_propagation() -> None:
    """Undo :func:`enable_propagation`."""
    logger.propagate = False
    for handler in logging.getLogger().handlers:
        for log_filter in list(handler.filters):
            if isinstance(log_filter, DryTorchFilter):
                handler.removeFilter(log_filter)


def set_formatter(style: str) -> None:
    """Format the library's stream output as 'drytorch' or 'progress'.

    Raises:
        ValueError: for another style.

    """
    formatters = {'drytorch': DryTorchFormatter, 'progress': ProgressFormatter}
    if style not in formatters:
        raise ValueError(
            f"style must be 'drytorch' or 'progress'; got {style!r}."
        )
    for handler in _stream_handlers():
        handler.setFormatter(formatters[style]())
