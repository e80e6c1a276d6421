"""Gloo's interface on hosts whose name resolves only to loopback.

On the multi-node cluster each task renames its host to a name that does
not resolve (``unshare --uts``, as a container's name often does not):
plain gloo then binds to loopback and the ranks on the other node are
refused; drytorch gives gloo the interface towards rank zero, and the
all-reduce works.  A ``GLOO_SOCKET_IFNAME`` that names no interface is an
error that lists those there are.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Any

import pytest

from drytorch.distributed import interfaces
from tests.helpers.multiprocess import run_distributed

WORKER = pathlib.Path(__file__).with_name('_iface_worker.py')


def _results(stdout: str) -> list[dict[str, Any]]:
    return sorted(
        (
            json.loads(line.removeprefix('RESULT '))
            for line in stdout.splitlines()
            if line.startswith('RESULT ')
        ),
        key=lambda r: r['rank'],
    )


@pytest.mark.slow
def test_unresolvable_host_names_get_the_interface_towards_rank_zero(
    multinode_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('TORCH_CPP_LOG_LEVEL', 'ERROR')
    monkeypatch.setenv('DRYTORCH_DIST_TIMEOUT', '30')
    monkeypatch.delenv('GLOO_SOCKET_IFNAME', raising=False)
    renamed = (
        'unshare --uts sh -c '
        '"hostname unresolvable-$SLURM_NODEID && exec \\"$0\\" \\"$1\\""'
    )
    proc = subprocess.run(
        [
            'srun',
            '-p',
            multinode_env.partition,
            '-N2',
            '--ntasks-per-node=1',
            'bash',
            '-c',
            renamed,
            sys.executable,
            str(WORKER),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=multinode_env.env(),
    )
    results = _results(proc.stdout)
    assert [r['rank'] for r in results] == [0, 1], proc.stdout + proc.stderr
    assert {r['sum'] for r in results} == {3.0}
    assert {r['host'] for r in results} == {
        'unresolvable-0',
        'unresolvable-1',
    }
    # every node namespace has one interface towards the others: eth0
    assert {r['ifname'] for r in results} == {'eth0'}


def test_an_interface_that_is_not_there_is_named_with_those_that_are(
    tmp_path: pathlib.Path,
) -> None:
    launched = run_distributed(
        2,
        script=WORKER,
        env={
            'GLOO_SOCKET_IFNAME': 'no-such-if0',
            'DRYTORCH_DIST_TIMEOUT': '20',
        },
        cwd=tmp_path,
        timeout=90,
    )
    for process in launched:
        assert process.returncode == 3, launched.describe()
        assert "GLOO_SOCKET_IFNAME='no-such-if0' names no interface" in (
            process.stdout
        )
        assert 'it has lo' in process.stdout


def test_the_interface_is_the_one_that_holds_the_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host name that does not resolve, rank zero at an address of this
    host: the interface that holds that address is chosen; on one host
    (a loopback master) nothing is changed."""
    held = [interfaces._ipv4_of(name) for name in interfaces.names()]
    own = [a for a in held if a and not a.startswith('127.')]
    if not own:
        pytest.skip('this host has no interface besides loopback')
    address = own[0]
    monkeypatch.delenv('GLOO_SOCKET_IFNAME', raising=False)
    monkeypatch.setattr(socket, 'gethostname', lambda: 'no-such-host.invalid')
    assert interfaces.choose_for_gloo('127.0.0.1') is None
    chosen = interfaces.choose_for_gloo(address)
    assert chosen is not None
    assert interfaces._ipv4_of(chosen) == address
    assert os.environ['GLOO_SOCKET_IFNAME'] == chosen
    monkeypatch.setenv('GLOO_SOCKET_IFNAME', 'lo')
    assert interfaces.choose_for_gloo(address) is None  # the user's choice
