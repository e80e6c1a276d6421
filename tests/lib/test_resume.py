"""A run stopped after epoch k and resumed in a new process ends exactly
like an uninterrupted one: the same weights, bit for bit, and the same
metric values at every epoch."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import torch

from tests.helpers.multiprocess import clean_environ

WORKER = pathlib.Path(__file__).with_name('_resume_worker.py')


def _worker(folder: pathlib.Path, mode: str) -> None:
    process = subprocess.run(
        [sys.executable, str(WORKER), str(folder), mode],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]


@pytest.fixture(scope='module')
def runs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The folder of both runs, after both processes."""
    folder = tmp_path_factory.mktemp('resume')
    _worker(folder, 'first')
    _worker(folder, 'second')
    return folder


def _csv(folder: pathlib.Path, run: str, source: str) -> list[str]:
    path = (
        (folder / 'experiments' / 'Resume' / 'runs' / run / 'csv_metrics')
        / 'net'
        / f'{source}.csv'
    )
    return path.read_text().splitlines()


def test_resumed_weights_equal_the_uninterrupted_ones(
    runs: pathlib.Path,
) -> None:
    full = torch.load(runs / 'full.pt')
    resumed = torch.load(runs / 'resumed.pt')
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_resumed_metrics_equal_the_uninterrupted_ones(
    runs: pathlib.Path,
) -> None:
    for source in ('Trainer', 'Validation'):
        full = _csv(runs, 'full', source)
        resumed = _csv(runs, 'resumed', source)
        assert len(full) == 1 + 6  # header and one row per epoch
        assert resumed == full, source


def test_the_plateau_hook_state_came_back(runs: pathlib.Path) -> None:
    full = json.loads((runs / 'full.json').read_text())
    resumed = json.loads((runs / 'resumed.json').read_text())
    assert full == resumed
    assert full['epoch'] == 6
    # lowered after epochs 3 and 5: the second needs the saved counter
    assert full['base_lr'] == pytest.approx(0.03 / 4)
