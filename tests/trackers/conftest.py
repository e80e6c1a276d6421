"""Fixtures of the tracker tests: an isolated kernel, a Visdom server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.helpers.kernel import kernel_in_tmp_path
from tests.trackers._support import free_port

_kernel = pytest.fixture(autouse=True, name='_kernel')(kernel_in_tmp_path)


@pytest.fixture(scope='session')
def visdom_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Visdom server on loopback, started the way that works offline.

    ``python -m visdom.server`` downloads web assets first and fails
    without network; ``run_server.main`` serves the API without them.
    """
    pytest.importorskip('visdom', reason='visdom is not installed')
    port = free_port()
    log = tmp_path_factory.mktemp('visdom') / 'server.log'
    env_path = log.parent / 'envs'
    with log.open('wb') as output:
        server = subprocess.Popen(
            [
                sys.executable,
                '-c',
                'from visdom.server.run_server import main; main()',
                '-port',
                str(port),
                '--hostname',
                '127.0.0.1',
                '-bind_local',
                '-env_path',
                str(env_path),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(('127.0.0.1', port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f'Visdom did not start: {log.read_text()}')
            time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
