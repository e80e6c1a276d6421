"""drytorch-launch: options before the script, the script's after."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drytorch.launch.__main__ import main, split_command


@pytest.mark.parametrize(
    ('argv', 'options', 'target', 'args', 'module'),
    [
        (
            ['--nodes', '2', 'train.py', '--nodes', '5'],
            ['--nodes', '2'],
            'train.py',
            ['--nodes', '5'],
            False,
        ),
        (
            ['--wait', '--partition=gpu', '-m', 'pkg.mod', '-m', 'x'],
            ['--wait', '--partition=gpu'],
            'pkg.mod',
            ['-m', 'x'],
            True,
        ),
        (['train.py'], [], 'train.py', [], False),
    ],
)
def test_split_command(
    argv: list[str],
    options: list[str],
    target: str,
    args: list[str],
    module: bool,
) -> None:
    found_options, found = split_command(argv)
    assert found is not None
    assert found_options == options
    assert (found.target, found.args, found.module) == (target, args, module)


def test_no_script_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(['--nodes', '2'])
    assert info.value.code == 2
    assert 'give the script to run (SCRIPT.py) or -m MODULE' in (
        capsys.readouterr().err
    )


def test_debug_runs_the_script_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / 'out.txt'
    script = tmp_path / 'job.py'
    script.write_text(
        f'import sys, pathlib\npathlib.Path({str(out)!r}).write_text('
        '",".join(sys.argv[1:]))\n'
    )
    assert main(['--cluster', 'debug', str(script), '--lr', '1']) == 0
    assert out.read_text() == '--lr,1'
    assert 'debug job debug finished: 0' in capsys.readouterr().out


def test_launch_errors_exit_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(['--cluster', 'local', '--nodes', '2', 'missing.py'])
    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith('drytorch-launch: error: script ')
    status = main(
        [
            '--tasks-per-node',
            '3',
            '--gpus-per-node',
            '2',
            '-m',
            'drytorch.demo',
        ]
    )
    assert status == 1
    assert 'tasks_per_node=3 is more than gpus_per_node=2' in (
        capsys.readouterr().err
    )


def test_module_entry_point_answers_help() -> None:
    proc = subprocess.run(
        [sys.executable, '-m', 'drytorch.launch', '--help'],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'usage: drytorch-launch [OPTIONS] (SCRIPT.py | -m MODULE)' in (
        proc.stdout
    )
