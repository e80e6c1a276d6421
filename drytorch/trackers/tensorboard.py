"""Metrics as TensorBoard scalars, and optionally a TensorBoard server.

Epoch-level scalars are tagged ``model/source/metric`` and stepped by epoch;
the running means that loops push at their sync points are tagged
``batch/model/source/metric`` and stepped by a global batch count (see
``_tensorboard_batches``); the configuration and tags are written as text.
A resumed run reopens its log directory and purges what the earlier attempt
wrote past its checkpoint (see ``_tensorboard_files.Seam``), so that no
epoch, and no step, shows twice.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import threading
from typing import TYPE_CHECKING

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.trackers._tensorboard_batches import BatchScalars
from drytorch.trackers._tensorboard_files import Seam, wait_for_a_later_second
from drytorch.trackers._tensorboard_server import TensorBoardServer
from drytorch.trackers.base_classes import (
    Dumper,
    config_dict,
    module_available,
)
from drytorch.trackers.logging import InfoLevels

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ['TensorBoard', 'is_available']

_logger = logging.getLogger('drytorch')


def is_available() -> bool:
    """Whether the tensorboard package can be imported."""
    return module_available('tensorboard')


class TensorBoard(Dumper):
    """Writes TensorBoard event files; can serve them on loopback.

    The log directory is ``tensorboard`` in the run's folder: by default
    ``<experiment par_dir>/<experiment>/runs/<run id>/tensorboard``, with
    ``par_dir`` given ``<par_dir>/<experiment>/runs/<run id>/tensorboard``
    (see :class:`Dumper`).  The server shows the run's log directory by
    default, and all of ``par_dir`` when it is given, so that every
    experiment and run written there is listed side by side.

    Batch-level values go to ``batches/<model>/<source>`` in the log
    directory, one TensorBoard run per model and source, tagged
    ``batch/<model>/<source>/<metric>``.  Their step is the global batch:
    ``(epoch - 1) * batches per epoch + batches done`` for training, and
    ``epoch * batches per pass + batches done`` for an evaluation of the
    model at ``epoch``.

    A resumed attempt appends to the same folders; where a source logs an
    epoch (or a step) again, TensorBoard is told to purge from there, so
    every epoch and every step shows once.  A purge hides every tag of its
    folder: the epoch-level values still valid past it are written again,
    while a batch-level folder holds one source only and loses nothing
    else.

    Args:
        par_dir: the folder under which each run's folder goes; the
            experiment's ``par_dir`` when None.
        start_server: start ``tensorboard`` on 127.0.0.1 for each run,
            print its address, and stop it when the run stops.
        max_queue_size: events the run's ``SummaryWriter`` queues before
            it writes (DRYTorch's option).
        flush_secs: seconds between the writer's flushes (DRYTorch's).
        port: the server's port; a free one when None.
        server_timeout: seconds to wait for the server to answer.
        log_batches: also write the running metrics of each sync point.

    ``start_server`` is False by default here (DRYTorch: True): a job on a
    cluster node has nobody to look at a local server.

    """

    def __init__(
        self,
        par_dir: str | pathlib.Path | None = None,
        start_server: bool = False,
        max_queue_size: int = 10,
        flush_secs: int = 120,
        *,
        port: int | None = None,
        server_timeout: float = 60.0,
        log_batches: bool = True,
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError(
                'tensorboard', 'tensorboard'
            )
        super().__init__(par_dir)
        for name, value in (
            ('max_queue_size', max_queue_size),
            ('flush_secs', flush_secs),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f'{name} must be an int; got {value!r}.')
            if value < 1:
                raise ValueError(f'{name} must be >= 1; got {value}.')
        self.start_server = start_server
        self.max_queue_size = max_queue_size
        self.flush_secs = flush_secs
        self.port = port
        self.server_timeout = server_timeout
        self.log_batches = log_batches
        self._writer: SummaryWriter | None = None
        # the training thread (``writer``) and the worker may both open it
        self._open_lock = threading.Lock()
        self._log_dir: pathlib.Path | None = None
        self._text: dict[str, str] = {}
        self._seam: Seam | None = None
        self._batches: BatchScalars | None = None
        self._server: TensorBoardServer | None = None

    @property
    def writer(self) -> SummaryWriter:
        """The run's ``SummaryWriter``, for what the library does not log.

        Call it on rank zero (where the tracker runs), after
        ``TensorBoard.get_current()``, which waits until the tracker has
        seen the run start.  What is written through it goes to the run's
        ``tensorboard/`` folder, beside the library's scalars.

        Raises:
            AccessOutsideScopeError: outside a run.

        """
        if self._log_dir is None:
            raise exceptions.AccessOutsideScopeError('TensorBoard.writer')
        return self._open()

    @property
    def url(self) -> str | None:
        """The server's address while it runs."""
        return None if self._server is None else self._server.url

    @property
    def root_dir(self) -> pathlib.Path:
        """The folder a server shows: the given ``par_dir``, else the run's.

        TensorBoard looks for event files in every sub-folder, so the
        given folder lists all the runs written under it.
        """
        if self._par_dir is not None:
            return self._par_dir
        return self.log_dir

    @property
    def log_dir(self) -> pathlib.Path:
        """This run's log directory (needs a run)."""
        return self.par_dir / 'tensorboard'

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        super().notify(event)
        self._log_dir = self.log_dir
        self._log_dir.mkdir(parents=True, exist_ok=True)
        config = json.dumps(config_dict(event.config), indent=2)
        # four leading spaces: a code block in TensorBoard's markdown
        self._text = {
            'config': _indent(config),
            'tags': ', '.join(event.tags) or '(none)',
        }
        if self.log_batches:
            self._batches = BatchScalars(self._log_dir / 'batches')
        if self.start_server:
            self._server = TensorBoardServer(
                self.root_dir, self.port, self.server_timeout
            )
            url = self._server.start()
            _logger.log(InfoLevels.experiment, 'TensorBoard serves at %s', url)

    @notify.register
    def _(self, event: log_events.LoadModelEvent) -> None:
        if self._batches is not None:
            self._batches.epochs_done(event.model_name, event.epoch)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartEpochEvent) -> None:
        if self._batches is not None:
            self._batches.epochs_done(event.model_name, event.epoch - 1)
            self._batches.source_of(event.source_name, event.model_name)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartTestEvent) -> None:
        if self._batches is not None:
            self._batches.source_of(event.source_name, event.model_name)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.IterateBatchEvent) -> None:
        batches = self._raise_push_failure()
        if batches is not None:
            self._check_dir()
            event.push_updates.append(batches.start_pass(event))
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        batches = self._raise_push_failure()
        if batches is not None:
            batches.epochs_done(event.model_name, event.epoch)
            batches.source_of(event.source_name, event.model_name)
        writer = self._open()
        prefix = f'{event.model_name}/{event.source_name}/'
        seam = self._seam
        if (
            seam is not None
            and prefix not in seam.started
            and seam.restart(writer, prefix, event.epoch)
            and event.epoch <= 0
        ):
            self._write_text(writer)  # purged with the scalars
        for name, value in event.metrics.items():
            writer.add_scalar(prefix + name, float(value), event.epoch)
            if seam is not None:
                seam.record(prefix + name, event.epoch, float(value))
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndEpochEvent) -> None:
        self._raise_push_failure()
        self._flush()
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndTestEvent) -> None:
        self._raise_push_failure()
        self._flush()
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StopExperimentEvent) -> None:
        if self._writer is None and self._text and not self.resumed:
            self._open()  # a run without metrics still shows its config
        return super().notify(event)

    @override
    def clean_up(self) -> None:
        """Flush and close the writers, stop the server."""
        writer, self._writer = self._writer, None
        batches, self._batches = self._batches, None
        log_dir, self._log_dir = self._log_dir, None
        self._text = {}
        self._seam = None
        try:
            try:
                if batches is not None:
                    batches.close()
            finally:
                if writer is not None:
                    writer.close()
        except OSError:
            # the folder was removed under the writer: already reported
            if log_dir is None or log_dir.is_dir():
                raise
        finally:
            server, self._server = self._server, None
            if server is not None:
                server.stop()
        return super().clean_up()

    def _flush(self) -> None:
        """Wait until the writers' threads have written the epoch.

        A killed process then loses no finished epoch, and no write of the
        epoch outlives it (into a folder removed meanwhile, say).
        """
        if self._writer is not None:
            self._writer.flush()
        if self._batches is not None:
            self._batches.flush()

    def _raise_push_failure(self) -> BatchScalars | None:
        """The batch-level writer; raises what failed in a push since.

        A push runs inside the training loop, where it must not raise; its
        error comes out here, at the next event, and unsubscribes the
        tracker as any other failure does.
        """
        batches = self._batches
        if batches is None or batches.failure is None:
            return batches
        failure = batches.failure
        if isinstance(failure, exceptions.TrackerError):
            raise failure
        raise exceptions.TrackerError(
            f'Writing batch-level scalars failed: {failure!r}'
        ) from failure

    def _check_dir(self) -> pathlib.Path:
        """The log directory, if it is still there."""
        log_dir = self._log_dir
        if log_dir is None:
            raise exceptions.NoActiveExperimentError('TensorBoard')
        if not log_dir.is_dir():
            # open event files survive their folder's removal: without this
            # check the metrics would go to files nobody can read
            raise exceptions.TrackerError(
                f'The TensorBoard log directory {log_dir} was removed '
                'during the run; keep it until the run stops'
            )
        return log_dir

    def _open(self) -> SummaryWriter:
        """The writer, created at the first write; checks the folder."""
        with self._open_lock:
            return self._open_locked()

    def _open_locked(self) -> SummaryWriter:
        log_dir = self._check_dir()
        if self._writer is not None:
            return self._writer
        from torch.utils.tensorboard import SummaryWriter

        if self.resumed:
            wait_for_a_later_second(log_dir)
        writer = SummaryWriter(
            str(log_dir),
            max_queue=self.max_queue_size,
            flush_secs=self.flush_secs,
        )
        if self.resumed:  # the first attempt wrote the text already
            self._seam = Seam(log_dir)
        else:
            self._write_text(writer)
        self._writer = writer
        return writer

    def _write_text(self, writer: SummaryWriter) -> None:
        for tag, text in self._text.items():
            writer.add_text(tag, text, 0)


def _indent(text: str) -> str:
    return '\n'.join('    ' + line for line in text.splitlines())
