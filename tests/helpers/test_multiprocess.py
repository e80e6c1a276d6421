"""The multi-process launcher that other tests rely on."""

from __future__ import annotations

import os
import pathlib
import sys
import time

import pytest

from tests.helpers.multiprocess import run_distributed, run_parallel

ENV_NAMES = (
    'RANK',
    'LOCAL_RANK',
    'WORLD_SIZE',
    'LOCAL_WORLD_SIZE',
    'GROUP_RANK',
    'MASTER_ADDR',
    'MASTER_PORT',
    'TORCHELASTIC_RUN_ID',
)


def report_environment(suffix: str) -> dict[str, str | None]:
    print(f'stdout of rank {os.environ["RANK"]}')
    print(f'stderr of rank {os.environ["RANK"]}', file=sys.stderr)
    seen = {name: os.environ.get(name) for name in ENV_NAMES}
    seen['SLURM_JOB_ID'] = os.environ.get('SLURM_JOB_ID')
    seen['suffix'] = suffix
    return seen


def exit_with_rank() -> None:
    raise SystemExit(int(os.environ['RANK']))


def rank_one_fails_rank_zero_waits() -> None:
    if os.environ['RANK'] == '1':
        raise ValueError('rank one failed')
    time.sleep(60)


def sleep_forever() -> None:
    time.sleep(60)


def test_torchrun_variables_values_and_outputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv('SLURM_JOB_ID', '999')  # must not leak into ranks
    result = run_distributed(
        3, func=report_environment, kwargs={'suffix': 'x'}, nproc_per_node=2
    ).check()
    values = result.values
    assert [v['RANK'] for v in values] == ['0', '1', '2']
    assert [v['LOCAL_RANK'] for v in values] == ['0', '1', '0']
    assert [v['GROUP_RANK'] for v in values] == ['0', '0', '1']
    assert {v['WORLD_SIZE'] for v in values} == {'3'}
    assert {v['LOCAL_WORLD_SIZE'] for v in values} == {'2'}
    assert {v['MASTER_ADDR'] for v in values} == {'127.0.0.1'}
    assert len({v['MASTER_PORT'] for v in values}) == 1
    assert {v['SLURM_JOB_ID'] for v in values} == {None}
    assert {v['suffix'] for v in values} == {'x'}
    for rank, process in enumerate(result):
        assert process.stdout == f'stdout of rank {rank}\n'
        assert process.stderr == f'stderr of rank {rank}\n'


def test_return_codes_are_collected() -> None:
    result = run_distributed(3, func=exit_with_rank)
    assert result.returncodes == [0, 1, 2]
    assert not result.ok
    with pytest.raises(AssertionError, match=r'exit codes \[0, 1, 2\]'):
        result.check()


def test_a_failed_rank_ends_the_launch(tmp_path: pathlib.Path) -> None:
    start = time.monotonic()
    result = run_distributed(2, func=rank_one_fails_rank_zero_waits, grace=0.5)
    assert time.monotonic() - start < 30
    assert result[1].returncode == 1
    assert 'rank one failed' in result[1].stderr
    assert result[0].timed_out


def test_timeout_kills_every_process() -> None:
    start = time.monotonic()
    result = run_parallel(2, func=sleep_forever, timeout=1)
    assert time.monotonic() - start < 20
    assert all(p.timed_out for p in result)
    assert all(p.returncode != 0 for p in result)


def test_scripts_and_parallel_indices(tmp_path: pathlib.Path) -> None:
    script = tmp_path / 'script.py'
    script.write_text(
        'import os, sys\n'
        "print(os.environ['TEST_PROCESS_INDEX'],"
        " os.environ['TEST_PROCESS_COUNT'], 'RANK' in os.environ,"
        ' sys.argv[1:], os.getcwd())\n'
    )
    result = run_parallel(
        2, script=script, args=['a', 1], cwd=tmp_path
    ).check()
    assert [p.stdout.split()[:5] for p in result] == [
        ['0', '2', 'False', "['a',", "'1']"],
        ['1', '2', 'False', "['a',", "'1']"],
    ]
    assert all(p.stdout.split()[5] == str(tmp_path) for p in result)


def test_exactly_one_target() -> None:
    with pytest.raises(ValueError, match='exactly one'):
        run_parallel(1)
    with pytest.raises(ValueError, match='module-level'):
        run_parallel(1, func=lambda: None)
