"""Metrics as TensorBoard scalars, and optionally a TensorBoard server.

Scalars are tagged ``model/source/metric`` and stepped by epoch; the
configuration and tags are written as text.  A resumed run reopens its log
directory and purges what the earlier attempt wrote past its checkpoint
(see :class:`_Seam`), so that no epoch shows twice.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import IO, TYPE_CHECKING, Any

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.trackers.base_classes import Dumper, config_dict
from drytorch.trackers.logging import InfoLevels

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ['TensorBoard', 'is_available']

_logger = logging.getLogger('drytorch')


def is_available() -> bool:
    """Whether the tensorboard package can be imported."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoard(Dumper):
    """Writes TensorBoard event files; can serve them on loopback.

    The log directory is ``tensorboard`` in the run's folder by default.
    With ``par_dir`` given it is ``<par_dir>/tensorboard/<experiment>/<run
    id>``, so that a server started on ``<par_dir>/tensorboard`` lists the
    runs side by side.

    A resumed attempt appends to the same folder; where a source logs an
    epoch again, TensorBoard is told to purge from that epoch and what is
    still valid after it is written again, so every epoch shows once.

    Args:
        par_dir: the folder; the run's folder when None.
        start_server: start ``tensorboard`` on 127.0.0.1 for each run,
            print its address, and stop it when the run stops.
        port: the server's port; a free one when None.
        server_timeout: seconds to wait for the server to answer.

    """

    def __init__(
        self,
        par_dir: str | pathlib.Path | None = None,
        start_server: bool = False,
        port: int | None = None,
        server_timeout: float = 60.0,
    ) -> None:
        if not is_available():
            raise exceptions.MissingDependencyError(
                'tensorboard', 'tensorboard'
            )
        super().__init__(par_dir)
        self.start_server = start_server
        self.port = port
        self.server_timeout = server_timeout
        self.url: str | None = None
        self._writer: SummaryWriter | None = None
        self._log_dir: pathlib.Path | None = None
        self._text: dict[str, str] = {}
        self._seam: _Seam | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._server_output: IO[bytes] | None = None

    @property
    def root_dir(self) -> pathlib.Path:
        """The folder a server shows: every run's log directory is in it."""
        return self.par_dir / 'tensorboard'

    @property
    def log_dir(self) -> pathlib.Path:
        """This run's log directory (needs an active run)."""
        if self._par_dir is None:
            return self.root_dir
        return self.root_dir / self.exp_name / self.run_id

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
        if self.start_server:
            self._start_server()

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
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
        self._flush()
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndTestEvent) -> None:
        self._flush()
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StopExperimentEvent) -> None:
        if self._writer is None and self._text and not self.resumed:
            self._open()  # a run without metrics still shows its config
        return super().notify(event)

    @override
    def clean_up(self) -> None:
        """Flush and close the writer, stop the server."""
        writer, self._writer = self._writer, None
        log_dir, self._log_dir = self._log_dir, None
        self._text = {}
        self._seam = None
        try:
            if writer is not None:
                writer.close()
        except OSError:
            # the folder was removed under the writer: already reported
            if log_dir is None or log_dir.is_dir():
                raise
        finally:
            self._stop_server()
        return super().clean_up()

    def _flush(self) -> None:
        """Wait until the writer's thread has written the epoch.

        A killed process then loses no finished epoch, and no write of the
        epoch outlives it (into a folder removed meanwhile, say).
        """
        if self._writer is not None:
            self._writer.flush()

    def _open(self) -> SummaryWriter:
        """The writer, created at the first write; checks the folder."""
        log_dir = self._log_dir
        if log_dir is None:
            raise exceptions.NoActiveRunError('TensorBoard')
        if not log_dir.is_dir():
            # open event files survive their folder's removal: without this
            # check the metrics would go to files nobody can read
            raise exceptions.TrackerError(
                f'The TensorBoard log directory {log_dir} was removed '
                'during the run; keep it until the run stops'
            )
        if self._writer is not None:
            return self._writer
        from torch.utils.tensorboard import SummaryWriter

        if self.resumed:
            _wait_for_a_later_second(log_dir)
        writer = SummaryWriter(str(log_dir))
        if self.resumed:  # the first attempt wrote the text already
            self._seam = _Seam(log_dir)
        else:
            self._write_text(writer)
        self._writer = writer
        return writer

    def _write_text(self, writer: SummaryWriter) -> None:
        for tag, text in self._text.items():
            writer.add_text(tag, text, 0)

    def _start_server(self) -> None:
        self._stop_server()
        port = self.port or _free_port()
        command = [
            sys.executable,
            '-m',
            'tensorboard.main',
            '--logdir',
            str(self.root_dir),
            '--host',
            '127.0.0.1',
            '--port',
            str(port),
        ]
        # kept open while the server runs; closed in _stop_server
        self._server_output = tempfile.TemporaryFile()  # noqa: SIM115
        self._server = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._server_output,
            stderr=subprocess.STDOUT,
        )
        url = f'http://127.0.0.1:{port}/'
        self._wait_for(url)
        self.url = url
        _logger.log(InfoLevels.experiment, 'TensorBoard serves at %s', url)

    def _wait_for(self, url: str) -> None:
        deadline = time.monotonic() + self.server_timeout
        server = self._server
        while server is not None and time.monotonic() < deadline:
            if server.poll() is not None:
                raise exceptions.TrackerError(
                    f'TensorBoard exited with status {server.returncode}: '
                    f'{self._server_tail()}'
                )
            if _answers(url):
                return
            time.sleep(0.1)
        tail = self._server_tail()
        self._stop_server()
        raise exceptions.TrackerError(
            f'TensorBoard did not answer at {url} within '
            f'{self.server_timeout} s (server_timeout): {tail}'
        )

    def _server_tail(self) -> str:
        output = self._server_output
        if output is None:
            return ''
        output.seek(0)
        text = output.read().decode(errors='replace').strip()
        return text[-1000:] or '(no output)'

    def _stop_server(self) -> None:
        server, self._server = self._server, None
        self.url = None
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if self._server_output is not None:
            self._server_output.close()
            self._server_output = None


class _Seam:
    """Joins a resumed attempt to the scalars of the earlier ones.

    A source's values are stale from the epoch at which it logs again in
    this attempt, but TensorBoard's only purge, a restart marker at a step,
    hides every tag's values from that step on.  So the valid values are
    read back first, and when a source logs again below values it already
    has, the purge is followed by writing again every value that is still
    valid past that step.  What TensorBoard shows is then right after every
    event, also if the process is killed before it can clean up.
    """

    def __init__(self, log_dir: pathlib.Path) -> None:
        from tensorboard.backend.event_processing import event_accumulator

        reader = event_accumulator.EventAccumulator(
            str(log_dir), size_guidance={event_accumulator.SCALARS: 0}
        )
        reader.Reload()
        self.valid: dict[str, dict[int, float]] = {
            tag: {int(s.step): s.value for s in reader.Scalars(tag)}
            for tag in reader.Tags()[event_accumulator.SCALARS]
        }
        self.started: set[str] = set()

    def restart(self, writer: SummaryWriter, prefix: str, epoch: int) -> bool:
        """A source logs again from ``epoch``; True if that purged."""
        self.started.add(prefix)
        stale = False
        for tag, points in self.valid.items():
            if tag.startswith(prefix):
                for step in [s for s in points if s >= epoch]:
                    del points[step]
                    stale = True
        if not stale:  # an exact resume: nothing to hide
            return False
        _purge(writer, epoch)
        for tag, points in self.valid.items():
            for step, value in sorted(points.items()):
                if step >= epoch:
                    writer.add_scalar(tag, value, step)
        return True

    def record(self, tag: str, step: int, value: float) -> None:
        """A value of this attempt, to write again after a later purge."""
        self.valid.setdefault(tag, {})[step] = value


def _wait_for_a_later_second(log_dir: pathlib.Path) -> None:
    """Make this attempt's event file sort after the earlier ones' files.

    TensorBoard reads a folder's files in name order, and a name starts
    with the second the file was created; within one second the order is
    left to the process id and a counter.  A resume in the same second as
    the previous attempt (the same process, in practice) waits for the next
    second.
    """
    latest = 0
    for path in log_dir.glob('events.out.tfevents.*'):
        created = path.name.split('.')[3]
        if created.isdigit():
            latest = max(latest, int(created))
    while int(time.time()) <= latest:
        time.sleep(0.02)


def _purge(writer: SummaryWriter, step: int) -> None:
    """Hide every scalar from ``step`` on: a restart marker."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    marker = Event(step=step, session_log=SessionLog(status=SessionLog.START))
    file_writer: Any = writer.file_writer
    file_writer.add_event(marker)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status < 500)
    except OSError:  # URLError and timeouts included
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def _indent(text: str) -> str:
    return '\n'.join('    ' + line for line in text.splitlines())
