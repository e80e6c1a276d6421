"""The README's first command, run as a user would in a fresh folder."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from tests.helpers.multiprocess import clean_environ


@pytest.fixture(scope='module')
def demo(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pathlib.Path, subprocess.CompletedProcess[str]]:
    """`python -m drytorch.demo` with its defaults, in an empty folder."""
    folder = tmp_path_factory.mktemp('demo')
    env = clean_environ()
    env.pop('OMP_NUM_THREADS')  # the demo's own default, as on a new machine
    env.pop('DRYTORCH_INIT_MODE', None)  # the standard trackers
    process = subprocess.run(
        [sys.executable, '-m', 'drytorch.demo'],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return folder, process


def _line(stdout: str, label: str) -> str:
    match = re.search(rf'^\s+{re.escape(label)}:\s+(.+)$', stdout, re.M)
    assert match, f'no {label!r} line in:\n{stdout}'
    return match.group(1).strip()


def test_demo_reaches_a_trained_accuracy(
    demo: tuple[pathlib.Path, subprocess.CompletedProcess[str]],
) -> None:
    _, process = demo
    assert process.returncode == 0, process.stderr[-3000:]
    assert 'Digits demo finished (1 process(es)' in process.stdout
    accuracy = float(_line(process.stdout, 'test accuracy').rstrip('%'))
    assert accuracy > 90.0


def test_demo_says_where_its_outputs_are(
    demo: tuple[pathlib.Path, subprocess.CompletedProcess[str]],
) -> None:
    folder, process = demo
    outputs = folder / _line(process.stdout, 'outputs')
    csv_folder = folder / _line(process.stdout, 'metrics (CSV)')
    checkpoints = folder / _line(process.stdout, 'checkpoints')
    assert outputs.is_dir()
    assert csv_folder.parent == checkpoints.parent == outputs
    names = {p.name for p in (csv_folder / 'mlp').glob('*.csv')}
    assert names == {'Trainer.csv', 'Validation.csv', 'Test.csv'}
    trainer_rows = (csv_folder / 'mlp' / 'Trainer.csv').read_text()
    assert len(trainer_rows.splitlines()) == 1 + 30  # one row per epoch
    saved = sorted(p.name for p in (checkpoints / 'mlp').glob('epoch_*.pt'))
    assert saved[-1] == 'epoch_000030.pt'
    assert (outputs / 'metadata' / 'config.yaml').exists()
