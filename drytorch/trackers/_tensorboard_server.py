"""A ``tensorboard`` server process on loopback, for the TensorBoard tracker.

The server runs in its own process (the current interpreter's
``tensorboard.main``), bound to 127.0.0.1 on the port asked for or a free
one.  Its output goes to a temporary file, whose end is quoted when the
server exits early or does not answer in time.
"""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import IO

from drytorch.core import exceptions

__all__ = ['TensorBoardServer']


class TensorBoardServer:
    """Starts, waits for and stops one ``tensorboard`` process.

    Args:
        log_dir: the folder the server shows (every run below it).
        port: the port; a free one when None.
        timeout: seconds to wait for the first answer.

    Attributes:
        url: the address once the server answers; None otherwise.
        process: the server's process while it runs.

    """

    def __init__(
        self, log_dir: pathlib.Path, port: int | None, timeout: float
    ) -> None:
        self.log_dir = log_dir
        self.port = port
        self.timeout = timeout
        self.url: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    def start(self) -> str:
        """Start the server and wait until it answers; its address.

        Raises:
            TrackerError: the server exited or did not answer in time.

        """
        self.stop()
        port = self.port or _free_port()
        command = [
            sys.executable,
            '-m',
            'tensorboard.main',
            '--logdir',
            str(self.log_dir),
            '--host',
            '127.0.0.1',
            '--port',
            str(port),
        ]
        # kept open while the server runs; closed in stop()
        self._output = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        url = f'http://127.0.0.1:{port}/'
        self._wait_for(url)
        self.url = url
        return url

    def stop(self) -> None:
        """Terminate the server (kill it if it lingers); idempotent."""
        process, self.process = self.process, None
        self.url = None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None

    def _wait_for(self, url: str) -> None:
        deadline = time.monotonic() + self.timeout
        process = self.process
        while process is not None and time.monotonic() < deadline:
            if process.poll() is not None:
                tail = self._tail()
                self.stop()
                raise exceptions.TrackerError(
                    f'TensorBoard exited with status {process.returncode}: '
                    f'{tail}'
                )
            if _answers(url):
                return
            time.sleep(0.1)
        tail = self._tail()
        self.stop()
        raise exceptions.TrackerError(
            f'TensorBoard did not answer at {url} within '
            f'{self.timeout} s (server_timeout): {tail}'
        )

    def _tail(self) -> str:
        """The end of what the server printed."""
        output = self._output
        if output is None:
            return ''
        output.seek(0)
        text = output.read().decode(errors='replace').strip()
        return text[-1000:] or '(no output)'


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
