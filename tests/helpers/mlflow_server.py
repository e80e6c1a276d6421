"""A real MLflow tracking server for the tests, and how to read it back.

``.ci/run`` starts one with ``slurm/mlflow/up.sh`` and exports its URL as
``$DRYTORCH_TEST_MLFLOW_URL``; without it, :func:`serve` starts one of its
own on 127.0.0.1 with a SQLite backend, for as long as the test session.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

HINT = 'export DRYTORCH_TEST_MLFLOW_URL=$(bash slurm/mlflow/up.sh)'
URL_VARIABLE = 'DRYTORCH_TEST_MLFLOW_URL'


def full_mlflow() -> bool:
    """Whether the SQL store is there (mlflow, not only mlflow-skinny)."""
    from drytorch.trackers.base_classes import module_available

    return module_available('mlflow.store.tracking.sqlalchemy_store')


def answers(url: str) -> bool:
    """Whether an MLflow server answers its health check at ``url``."""
    try:
        with urllib.request.urlopen(f'{url}/health', timeout=2):
            return True
    except (OSError, urllib.error.URLError):
        return False


def serve(
    folder: pathlib.Path, absent: Callable[[str], NoReturn]
) -> Iterator[str]:
    """Yield the URL of a running server; ``absent`` skips or fails."""
    from drytorch.trackers import mlflow as tracker_module

    if not tracker_module.is_available():
        absent("mlflow is not installed (pip install 'drytorch[mlflow]')")
    given = os.environ.get(URL_VARIABLE)
    if given:
        if not answers(given):
            absent(f'no MLflow server answers at {given}; {HINT}')
        yield given.rstrip('/')
        return
    if not full_mlflow():
        absent(f'the MLflow server needs `pip install mlflow`; or {HINT}')
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = int(sock.getsockname()[1])
    url = f'http://127.0.0.1:{port}'
    log = folder / 'server.log'
    command = [
        sys.executable,
        '-m',
        'mlflow',
        'server',
        '--backend-store-uri',
        f'sqlite:///{folder / "mlflow.db"}',
        '--artifacts-destination',
        str(folder / 'artifacts'),
        '--host',
        '127.0.0.1',
        '--port',
        str(port),
        '--workers',
        '1',
    ]
    with log.open('wb') as output:
        server = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY='true'),
            start_new_session=True,  # its workers go with it
        )
    try:
        deadline = time.monotonic() + 120  # migrations on a busy machine
        while not answers(url):
            if server.poll() is not None or time.monotonic() > deadline:
                absent(f'MLflow did not start: {log.read_text()[-3000:]}')
            time.sleep(0.2)
        os.environ[URL_VARIABLE] = url  # for the subprocesses of tests
        yield url
    finally:
        os.environ.pop(URL_VARIABLE, None)
        _stop(server)


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Stop the server's process group (it started its own)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def records(url: str, experiment: str, model: str) -> dict[str, Any]:
    """The one MLflow run of ``experiment``: status, run id and records.

    Records are keyed as the preemption tests' readers key them:
    (``source/metric``, epoch) to every value stored.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f'no MLflow experiment {experiment!r}'
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    values: dict[tuple[str, int], list[float]] = {}
    for key in run.data.metrics:
        name = key.removeprefix(f'{model}/')
        for point in client.get_metric_history(run.info.run_id, key):
            values.setdefault((name, point.step), []).append(point.value)
    return {
        'status': run.info.status,
        'run_id': run.info.run_id,
        'tags': run.data.tags,
        'records': values,
    }
