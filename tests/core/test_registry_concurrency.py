"""Eight processes creating runs of one experiment at the same moment."""

from __future__ import annotations

import json
import pathlib
import re

from tests.helpers.multiprocess import run_parallel

WORKER = pathlib.Path(__file__).with_name('_concurrent_worker.py')
PROCESSES = 8
RUNS_EACH = 2
RUN_ID = re.compile(r'^\d{4}-\d\d-\d\d@\d\dh\d\dm\d\ds(_\d+)?$')


def test_concurrent_runs_leave_a_valid_registry(
    tmp_path: pathlib.Path,
) -> None:
    par_dir = tmp_path / 'experiments'
    barrier = tmp_path / 'barrier'
    barrier.mkdir()
    launched = run_parallel(
        PROCESSES,
        script=WORKER,
        args=[par_dir, barrier, PROCESSES, RUNS_EACH],
        cwd=tmp_path,
        env={'DRYTORCH_INIT_MODE': 'none'},
        timeout=120,
    ).check()
    printed = [
        line.removeprefix('RUN:')
        for process in launched
        for line in process.stdout.splitlines()
        if line.startswith('RUN:')
    ]
    assert len(printed) == PROCESSES * RUNS_EACH
    assert len(set(printed)) == len(printed), printed
    assert all(RUN_ID.match(run_id) for run_id in printed), printed

    text = (par_dir / 'Shared' / 'registry.json').read_text()
    runs = json.loads(text)['runs']  # valid JSON, not half a file
    assert sorted(r['run_id'] for r in runs) == sorted(printed)
    assert all(r['status'] == 'completed' for r in runs)
    assert all(r['attempts'] == 1 for r in runs)
    folders = {p.name for p in (par_dir / 'Shared').iterdir()}
    assert 'registry.json' in folders
    assert not [name for name in folders if name.endswith('.tmp')]
