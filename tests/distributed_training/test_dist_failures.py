"""A rank that dies or freezes mid-training fails the others, never hangs.

- SIGKILL: the victim's sockets close; the others' next collective (DDP's
  gradient all-reduce or the packed metric reduction) fails at once.
- SIGSTOP: the victim hangs with its sockets open, as a rank stuck in a
  deadlock or on a dead node would; only the collective timeout
  (``DRYTORCH_DIST_TIMEOUT``, the process group's timeout) frees the
  others, and it must.

The launch has its own deadline far above the timeout, and the processes
are not killed early when one fails (``fail_fast=False`` for SIGKILL), so
a hang would show as a timed-out survivor.
"""

from __future__ import annotations

import pathlib
import socket

import pytest

from tests.distributed_training import _training_worker as worker
from tests.helpers.multiprocess import LaunchResult, run_distributed

DIST_TIMEOUT = 5  # seconds; the process group's timeout in these tests
KILL_AT_STEP = 12


def launch_victim(
    tmp_path: pathlib.Path,
    world_size: int,
    victim: int,
    how: str,
    fail_fast: bool,
) -> LaunchResult:
    return run_distributed(
        world_size,
        func=worker.train_until_killed,
        args=(str(tmp_path / 'experiments'), victim, KILL_AT_STEP, how),
        env={
            'DRYTORCH_INIT_MODE': 'none',
            'DRYTORCH_DIST_TIMEOUT': str(DIST_TIMEOUT),
        },
        cwd=tmp_path,
        timeout=90,
        fail_fast=fail_fast,
    )


def check_survivors(
    launched: LaunchResult, victim: int, within: float
) -> list[float]:
    """Every other rank exited with an error ``within`` s of the signal.

    Returns how long after the signal each of them failed.
    """
    victim_reports = worker.reports(launched[victim].stdout)
    signalled = [r for r in victim_reports if r['event'] == 'killing']
    assert signalled, launched.describe()
    signalled_at = signalled[0]['at']
    delays = []
    for process in launched:
        if process.index == victim:
            continue
        assert not process.timed_out, launched.describe()
        assert process.returncode not in (0, None), launched.describe()
        failed = [
            r for r in worker.reports(process.stdout) if r['event'] == 'failed'
        ]
        assert failed, launched.describe()
        # named: which rank saw it, and the peer behind the transport error
        error = failed[0]['error']
        assert error.startswith('PeerLostError: '), error
        assert f'rank {process.index} on {socket.gethostname()}' in error
        assert 'training victim in epoch 1' in error, error
        assert failed[0]['at'] - signalled_at < within, failed[0]
        assert 'Traceback' in process.stderr
        delays.append(failed[0]['at'] - signalled_at)
    return delays


@pytest.mark.parametrize(('world_size', 'victim'), [(2, 1), (3, 1)])
def test_a_killed_rank_fails_the_others(
    tmp_path: pathlib.Path, world_size: int, victim: int
) -> None:
    launched = launch_victim(
        tmp_path, world_size, victim, 'SIGKILL', fail_fast=False
    )
    assert launched[victim].returncode == -9, launched.describe()
    # A closed socket is noticed at once, well before the timeout.
    check_survivors(launched, victim, within=DIST_TIMEOUT)
    # the first to notice names the victim's host and its rank (an address
    # names a host, so every rank on it is listed; here, all but itself)
    first = [
        r['error']
        for p in launched
        if p.index != victim
        for r in worker.reports(p.stdout)
        if r['event'] == 'failed'
    ]
    assert any(
        f'its peer on {socket.gethostname()} (ranks there: ' in e
        and str(victim) in e.split('ranks there: ')[1].split(')')[0]
        for e in first
    ), first


def test_a_frozen_rank_fails_the_others_at_the_timeout(
    tmp_path: pathlib.Path,
) -> None:
    # fail_fast: once a survivor has failed, the frozen victim is killed.
    launched = launch_victim(tmp_path, 2, 1, 'SIGSTOP', fail_fast=True)
    delays = check_survivors(launched, 1, within=DIST_TIMEOUT + 10)
    # The timeout is what freed them: nothing failed before it.  The first
    # to fail timed out; a later one may instead see the first one leave.
    assert min(delays) > DIST_TIMEOUT * 0.8, delays
    assert any('Timed out' in p.stdout for p in launched), launched.describe()
    assert any(
        'stopped answering within the distributed timeout' in p.stdout
        for p in launched
    ), launched.describe()
