"""What the launch tests share: the demo's outputs, waiting on SLURM.

Jobs train the digits demo for ``EPOCHS`` epochs with 2 tasks; the demo
saves a checkpoint every 5 epochs, so the checkpoint of the last epoch holds
the final weights, which every way of running the job must reproduce.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

EPOCHS = 5
TASKS = 2
REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    """What a demo run left: registry record, final weights, CSV logs."""

    record: dict[str, Any]
    weights: dict[str, torch.Tensor]
    csv: dict[str, str]

    def assert_same_training(self, other: RunOutputs) -> None:
        """Same final weights, bit for bit, and the same metric logs."""
        assert self.weights.keys() == other.weights.keys()
        for name, tensor in self.weights.items():
            assert torch.equal(tensor, other.weights[name]), name
        assert self.csv == other.csv


def read_record(par_dir: Path) -> dict[str, Any]:
    """The registry record of the one demo run under ``par_dir``."""
    registry = par_dir / 'Digits' / 'registry.json'
    records = json.loads(registry.read_text())['runs']
    assert len(records) == 1, records
    return dict(records[0])


def read_run(par_dir: Path, epochs: int = EPOCHS) -> RunOutputs:
    """The one run of the demo experiment under ``par_dir``."""
    record = read_record(par_dir)
    run_dir = par_dir / 'Digits' / 'runs' / record['run_id']
    state = torch.load(
        run_dir / 'checkpoints' / 'mlp' / f'epoch_{epochs:06d}.pt',
        weights_only=False,
    )
    csv = {
        path.name: path.read_text()
        for path in sorted((run_dir / 'csv_metrics' / 'mlp').glob('*.csv'))
    }
    return RunOutputs(record, state['model']['module'], csv)


def assert_no_duplicate_rows(outputs: RunOutputs) -> None:
    """Every CSV has each epoch once, in order."""
    for name, text in outputs.csv.items():
        rows = text.splitlines()[1:]
        epochs = [int(row.split(',')[2]) for row in rows]
        assert epochs == sorted(set(epochs)), (name, text)


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f'timed out after {timeout_s:g} s waiting for {what}')
        time.sleep(0.2)


def squeue_state(job_id: str) -> str:
    """``STATE REASON`` of a job in the queue, '' once it left it."""
    proc = subprocess.run(
        ['squeue', '-h', '-j', job_id, '-o', '%T %r'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout.strip()


def sacct_state(job_id: str) -> str:
    """The job's final state in SLURM's accounting (COMPLETED, FAILED...)."""
    proc = subprocess.run(
        ['sacct', '-j', job_id, '-X', '-n', '-P', '-o', 'State'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''


def start_requeued_now(job_id: str, timeout_s: float = 120.0) -> None:
    """Shorten the ~2 minutes a requeued job waits (Reason=BeginTime).

    Not to zero: slurmd refuses to launch a job in the second its previous
    attempt was killed ("Job credential revoked", and the job fails), which
    is why SLURM makes a requeued job wait; a few seconds are enough.
    """
    wait_for(
        lambda: (
            squeue_state(job_id).startswith('PENDING')
            and 'BeginTime' in squeue_state(job_id)
        ),
        timeout_s,
        f'job {job_id} to be requeued (PENDING, BeginTime)',
    )
    subprocess.run(
        ['scontrol', 'update', f'JobId={job_id}', 'StartTime=now+5'],
        check=True,
        timeout=30,
    )
