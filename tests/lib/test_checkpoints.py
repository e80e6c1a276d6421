"""Tests of checkpoints: by epoch, newest by number, interrupted writes."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import warnings
from typing import Any

import pytest
import torch

from drytorch import Experiment, Run
from drytorch.core import exceptions, log_events
from drytorch.lib.checkpoints import LocalCheckpoint
from tests.helpers.kernel import RecordingTracker
from tests.helpers.multiprocess import clean_environ
from tests.lib import _support

WORKER = pathlib.Path(__file__).with_name('_checkpoint_worker.py')


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> LocalCheckpoint:
    checkpoint = LocalCheckpoint(tmp_path / 'checkpoints')
    checkpoint.bind('net')
    return checkpoint


def test_save_and_load_a_checkpoint_by_epoch(
    recorder: RecordingTracker, run: Run
) -> None:
    trainer = _support.make_trainer()
    trainer.train(1)
    trainer.save_checkpoint()
    after_one = weights(trainer)
    trainer.train(2)
    trainer.save_checkpoint()
    after_three = weights(trainer)
    trainer.load_checkpoint(1)
    assert trainer.model.epoch == 1
    assert same(weights(trainer), after_one)
    trainer.load_checkpoint(-1)
    assert trainer.model.epoch == 3
    assert same(weights(trainer), after_three)
    saved = recorder.of_type(log_events.SaveModelEvent)
    assert [e.epoch for e in saved] == [1, 3]
    folder = pathlib.Path(saved[0].location).parent
    assert folder == trainer.model.checkpoint.directory
    assert folder == run.dir / 'checkpoints' / 'net'  # the run's folder
    assert (folder / 'latest').read_text().strip() == 'epoch_000003.pt'
    loaded = recorder.of_type(log_events.LoadModelEvent)
    assert [e.epoch for e in loaded] == [1, 3]


@pytest.mark.usefixtures('run')
def test_a_loaded_checkpoint_continues_training_identically() -> None:
    trainer = _support.make_trainer()
    trainer.train(1)
    trainer.save_checkpoint()
    trainer.train(2)
    straight = weights(trainer)
    trainer.load_checkpoint(1)
    trainer.train(2)
    assert same(weights(trainer), straight)


def test_newest_is_chosen_by_epoch_not_file_time(
    store: LocalCheckpoint,
) -> None:
    for epoch in (1, 2, 999_999, 1_000_000):
        store.save({'epoch': epoch}, epoch)
    oldest = store.directory / 'epoch_000001.pt'
    future = time.time() + 3600
    os.utime(oldest, (future, future))  # newest by modification time
    state, info = store.load(-1)
    assert (state['epoch'], info.epoch) == (1_000_000, 1_000_000)
    assert [c.epoch for c in store.available()] == [1, 2, 999_999, 1_000_000]


@pytest.mark.usefixtures('run')
def test_trainer_loads_the_newest_epoch_not_the_newest_file(
    tmp_path: pathlib.Path,
) -> None:
    trainer = _support.make_trainer(
        checkpoint=LocalCheckpoint(tmp_path / 'checkpoints')
    )
    for _ in range(3):
        trainer.train(1)
        trainer.save_checkpoint()
    folder = trainer.model.checkpoint.directory
    future = time.time() + 3600
    os.utime(folder / 'epoch_000001.pt', (future, future))
    trainer.load_checkpoint(-1)
    assert trainer.model.epoch == 3


def test_mid_epoch_checkpoints_sort_after_their_epoch(
    store: LocalCheckpoint,
) -> None:
    store.save({'at': 'end of 1'}, 1)
    store.save({'at': 'end of 2'}, 2)
    store.save({'at': '5 batches into 3'}, 2, batch=5)
    assert store.load(-1)[0] == {'at': '5 batches into 3'}
    assert store.load(-1, mid_epoch=False)[0] == {'at': 'end of 2'}
    assert store.load(2)[0] == {'at': 'end of 2'}
    (store.directory / 'latest').unlink()  # the scan by position decides
    assert store.load(-1)[0] == {'at': '5 batches into 3'}
    assert store.load(-1, mid_epoch=False)[0] == {'at': 'end of 2'}


def test_a_corrupt_checkpoint_is_skipped_with_a_warning(
    store: LocalCheckpoint,
) -> None:
    store.save({'epoch': 1}, 1)
    store.save({'epoch': 2}, 2)
    newest = store.directory / 'epoch_000002.pt'
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.warns(exceptions.DryTorchWarning, match='epoch_000002.pt'):
        state, info = store.load(-1)
    assert (state['epoch'], info.epoch) == (1, 1)
    with (
        pytest.warns(exceptions.DryTorchWarning, match='cannot be read'),
        pytest.raises(exceptions.CheckpointNotFoundError, match='epoch 2'),
    ):
        store.load(2)


def test_no_checkpoint_is_a_clear_error(store: LocalCheckpoint) -> None:
    with pytest.raises(
        exceptions.CheckpointNotFoundError, match=r'any epoch.*save_checkpoint'
    ):
        store.load(-1)


@pytest.fixture(scope='module')
def killed(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pathlib.Path, subprocess.CompletedProcess[str]]:
    """The folder of a process killed while writing its second checkpoint."""
    folder = tmp_path_factory.mktemp('killed')
    process = subprocess.run(
        [sys.executable, str(WORKER), str(folder)],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return folder, process


def test_a_write_killed_halfway_leaves_the_previous_checkpoint(
    killed: tuple[pathlib.Path, subprocess.CompletedProcess[str]],
) -> None:
    folder, process = killed
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert 'not killed' not in process.stdout
    store = LocalCheckpoint(folder / 'checkpoints')
    store.bind('net')
    files = sorted(p.name for p in store.directory.iterdir())
    # the half-written file is there, under a name no loader reads
    partial = [name for name in files if name.endswith('.tmp')]
    assert len(partial) == 1
    assert (store.directory / partial[0]).stat().st_size > 0
    assert files == sorted(['epoch_000001.pt', 'latest', *partial])
    assert (store.directory / 'latest').read_text().strip() == (
        'epoch_000001.pt'
    )
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # not even a skipped file
        state, info = store.load(-1)
    assert info.epoch == 1
    assert state['model']['epoch'] == 1


def test_a_new_process_resumes_from_the_surviving_checkpoint(
    killed: tuple[pathlib.Path, subprocess.CompletedProcess[str]],
    tmp_path: pathlib.Path,
    experiment: Experiment[Any],
) -> None:
    shutil.copytree(killed[0] / 'checkpoints', tmp_path / 'checkpoints')
    with experiment.create_run(run_id='after'):
        trainer = _support.make_trainer(
            checkpoint=LocalCheckpoint(
                tmp_path / 'checkpoints', run_folders=False
            )
        )
        trainer.load_checkpoint()
        assert trainer.model.epoch == 1
        trainer.train(1)
        assert trainer.model.epoch == 2


def test_experiments_and_runs_sharing_a_checkpoint_folder_stay_apart(
    tmp_path: pathlib.Path,
) -> None:
    """One ``par_dir`` for every job (a scratch file system): each run's
    checkpoints under its own experiment and run, and a resume finds its
    own, not the newest of another run."""
    shared = tmp_path / 'scratch'
    trained: dict[tuple[str, str], int] = {}
    for exp_name, run_id, epochs in (
        ('a', 'r1', 1),
        ('a', 'r2', 3),
        ('b', 'r1', 2),
    ):
        exp: Experiment[None] = Experiment(
            None, name=exp_name, par_dir=tmp_path / 'experiments'
        )
        with exp.create_run(run_id=run_id):
            trainer = _support.make_trainer(
                checkpoint=LocalCheckpoint(shared, keep_last=1)
            )
            trainer.train(epochs)
            trained[(exp_name, run_id)] = epochs
    for (exp_name, run_id), epochs in trained.items():
        folder = shared / exp_name / 'runs' / run_id / 'net'
        assert sorted(p.name for p in folder.iterdir()) == [
            f'epoch_{epochs:06d}.pt',
            'latest',
        ]
    exp = Experiment(None, name='a', par_dir=tmp_path / 'experiments')
    with exp.create_run(run_id='r1', resume=True):
        trainer = _support.make_trainer(
            checkpoint=LocalCheckpoint(shared, keep_last=1)
        )
        trainer.load_checkpoint()
        assert trainer.model.epoch == 1  # its own, not r2's epoch 3


def test_run_folders_false_keeps_one_folder_for_every_run(
    tmp_path: pathlib.Path, experiment: Experiment[Any]
) -> None:
    shared = tmp_path / 'pretrained'
    with experiment.create_run(run_id='first'):
        _support.make_trainer(
            checkpoint=LocalCheckpoint(shared, run_folders=False)
        ).train(2)
    with experiment.create_run(run_id='fine-tune'):
        trainer = _support.make_trainer(
            checkpoint=LocalCheckpoint(shared, run_folders=False)
        )
        trainer.load_checkpoint()
        assert trainer.model.epoch == 2
    assert (shared / 'net' / 'latest').exists()
