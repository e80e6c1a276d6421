"""The digits demo through each recipe of ``launchers/``: same accuracy.

One process (``local.py``), two under torchrun (``torchrun.sh``) and two
under Open MPI (``mpirun.sh``) run the same script; each must reach the
single-process accuracy range, print its summary once (rank zero) and
leave one run with one CSV history.  CI installs Open MPI and mpi4py and
sets CI_REQUIRE_SERVICES=1, so the MPI case fails there instead of being
skipped when they are missing.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.helpers.multiprocess import REPO_ROOT, clean_environ

LAUNCHERS = REPO_ROOT / 'launchers'
EPOCHS = 8  # enough for > 95% here; the full demo runs 30
MIN_ACCURACY = 0.90
SUMMARY = re.compile(
    r'Digits demo finished \((\d+) process\(es\), attempt 1 of run (\S+)\)\.'
    r'\s+test accuracy: ([\d.]+)%'
)


@dataclasses.dataclass(frozen=True)
class DemoResult:
    processes: int
    run_id: str
    accuracy: float
    par_dir: pathlib.Path

    @property
    def run_dir(self) -> pathlib.Path:
        return self.par_dir / 'Digits' / 'runs' / self.run_id


def run_demo(
    command: list[str], tmp_path: pathlib.Path, **variables: str
) -> DemoResult:
    """Run a launcher with the demo's arguments; parse rank zero's summary."""
    par_dir = tmp_path / 'experiments'
    env = clean_environ()
    # torchrun, mpirun's python: those of the interpreter running the tests.
    bin_dir = str(pathlib.Path(sys.executable).parent)
    env['PATH'] = os.pathsep.join([bin_dir, env.get('PATH', '')])
    env['PYTHON'] = sys.executable
    env['DRYTORCH_INIT_MODE'] = 'minimal'
    env.update(variables)
    proc = subprocess.run(
        [*command, '--epochs', str(EPOCHS), '--par-dir', str(par_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    report = f'stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}'
    assert proc.returncode == 0, report
    found = SUMMARY.findall(proc.stdout)
    assert len(found) == 1, f'one summary, from rank zero\n{report}'
    processes, run_id, accuracy = found[0]
    return DemoResult(int(processes), run_id, float(accuracy) / 100, par_dir)


def check_outputs(result: DemoResult) -> None:
    runs = result.par_dir / 'Digits' / 'runs'
    assert [path.name for path in runs.iterdir()] == [result.run_id]
    history = result.run_dir / 'csv_metrics' / 'mlp' / 'Trainer.csv'
    with history.open(newline='') as stream:
        epochs = [int(row['epoch']) for row in csv.DictReader(stream)]
    assert epochs == list(range(1, EPOCHS + 1))


@pytest.fixture(scope='module')
def single(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    tmp_path = tmp_path_factory.mktemp('local')
    result = run_demo([sys.executable, str(LAUNCHERS / 'local.py')], tmp_path)
    assert result.processes == 1
    return result


def test_one_process(single: DemoResult) -> None:
    assert single.accuracy > MIN_ACCURACY
    check_outputs(single)


def test_torchrun_two_processes(
    single: DemoResult, tmp_path: pathlib.Path
) -> None:
    result = run_demo(
        ['bash', str(LAUNCHERS / 'torchrun.sh')], tmp_path, NPROC='2'
    )
    assert result.processes == 2
    assert result.accuracy > MIN_ACCURACY
    assert abs(result.accuracy - single.accuracy) < 0.05
    check_outputs(result)


def test_mpirun_two_processes(
    mpirun: str, single: DemoResult, tmp_path: pathlib.Path
) -> None:
    result = run_demo(['bash', str(LAUNCHERS / 'mpirun.sh')], tmp_path, NP='2')
    assert result.processes == 2
    assert result.accuracy > MIN_ACCURACY
    assert abs(result.accuracy - single.accuracy) < 0.05
    check_outputs(result)


@pytest.mark.parametrize(
    'script',
    [
        'launchers/torchrun.sh',
        'launchers/mpirun.sh',
        'benchmarks/gpu_check.sh',
    ],
)
def test_shell_recipes_parse(script: str) -> None:
    """The GPU check cannot run here; it must at least be valid bash."""
    path = REPO_ROOT / script
    assert path.read_text().startswith('#!/usr/bin/env bash\n# ')
    subprocess.run(['bash', '-n', str(path)], check=True)
