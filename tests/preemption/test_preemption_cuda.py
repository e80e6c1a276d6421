"""Exact resume on a GPU: CUDA random state, mixed precision's scaler.

Skipped without CUDA.  Each attempt is a fresh interpreter running the
worker (on the GPU, the model's default device), since the zygote of the
other tests imports trackers that a GPU machine may lack.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from tests.preemption._support import (
    REQUEUE,
    WORKER,
    assert_bitwise_equal,
    base_environ,
    checkpoint_name,
    csv_records,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs a CUDA GPU'
)


def attempt(root: pathlib.Path, *argv: str) -> int:
    """One attempt of the worker on the GPU; its exit status."""
    env = base_environ()
    env['CUBLAS_WORKSPACE_CONFIG'] = ':4096:8'
    root.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(WORKER), '--root', str(root)]
    command += ['--out', str(root), '--trackers', 'csv', *argv]
    with (root / 'attempts.log').open('a') as log:
        return subprocess.run(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        ).returncode


@pytest.mark.parametrize('mixed', [False, True], ids=['fp32', 'amp'])
def test_preempted_and_resumed_on_cuda(
    tmp_path: pathlib.Path, mixed: bool
) -> None:
    flags = ['--mixed-precision'] if mixed else []
    reference, trial = tmp_path / 'reference', tmp_path / 'trial'
    assert attempt(reference, *flags) == 0, _log(reference)
    assert attempt(trial, *flags, '--signal-at', '8') == REQUEUE, _log(trial)
    folder = trial / 'Preempt' / 'runs' / 'run' / 'checkpoints' / 'net'
    saved = torch.load(
        folder / checkpoint_name(1, 2), map_location='cpu', weights_only=False
    )
    assert 'cuda' in saved['ranks'][0]['rng']
    assert saved['scaler'] if mixed else True
    assert attempt(trial, *flags, '--resume') == 0, _log(trial)
    final = torch.load(
        trial / 'final.pt', map_location='cpu', weights_only=False
    )
    expected = torch.load(
        reference / 'final.pt', map_location='cpu', weights_only=False
    )
    assert_bitwise_equal(final, expected)
    run_dir = pathlib.Path('Preempt') / 'runs' / 'run'
    assert csv_records(trial / run_dir) == csv_records(reference / run_dir)


def _log(root: pathlib.Path) -> str:
    path = root / 'attempts.log'
    return path.read_text()[-5000:] if os.path.exists(path) else ''
