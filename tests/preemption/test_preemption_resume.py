"""The pieces of a resume: watcher, stop event, progress bar, world size.

Most tests here run attempts in the test process itself (the run arms the
handlers, and the worker's cue sends the signal to this process); the
world-size tests run real processes, with gloo for two ranks.
"""

from __future__ import annotations

import functools
import os
import pathlib
import signal
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from typing_extensions import override

from drytorch import Experiment
from drytorch.core import exceptions, log_events
from drytorch.core.tracking import Tracker
from drytorch.distributed import preemption
from drytorch.lib.checkpoints import LocalCheckpoint
from drytorch.lib.resume import Position
from drytorch.lib.training import Trainer
from drytorch.trackers.tqdm import TqdmLogger
from tests.helpers.kernel import RecordingTracker
from tests.preemption import _worker
from tests.preemption._support import (
    REQUEUE,
    Trial,
    Zygote,
    assert_bitwise_equal,
    checkpoint_name,
    csv_records,
)
from tests.preemption.conftest import options


def attempt(
    root: pathlib.Path, *argv: str, extra: tuple[Tracker, ...] = ()
) -> int:
    """One attempt of the worker in this process; its exit status."""
    try:
        return _worker.main(['--root', str(root), *argv], extra=extra)
    except SystemExit as leaving:
        assert isinstance(leaving.code, int)
        return leaving.code


# ---------------------------------------------------------------- watcher
class TestWatcher:
    def test_the_handler_only_records_the_first_signal(self) -> None:
        watcher = preemption.PreemptionWatcher()
        with watcher.armed([signal.SIGUSR2, signal.SIGTERM]):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR2)
            assert watcher.requested
            assert watcher.signum == signal.SIGTERM
        watcher.reset()
        assert not watcher.requested

    def test_handlers_stay_until_disarmed(self) -> None:
        """Armed once; still armed between runs; disarm restores them."""
        before = signal.getsignal(signal.SIGUSR1)
        watcher = preemption.PreemptionWatcher()
        with watcher.armed():
            with watcher.armed():  # nested: armed once
                assert signal.getsignal(signal.SIGUSR1) == watcher._handle
            assert signal.getsignal(signal.SIGUSR1) == watcher._handle
        # between runs: a late signal is kept, not the default action
        assert signal.getsignal(signal.SIGUSR1) == watcher._handle
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watcher.signum == signal.SIGUSR1
        with watcher.armed():  # the next run: the same handlers
            assert watcher.requested
        watcher.disarm()
        assert signal.getsignal(signal.SIGUSR1) == before
        assert not watcher.installed

    def test_default_signals(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(preemption.SIGNALS_VARIABLE, raising=False)
        assert preemption.configured_signals() == (
            signal.SIGUSR2,
            signal.SIGUSR1,
            signal.SIGTERM,
        )

    def test_signals_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(preemption.SIGNALS_VARIABLE, 'usr2, SIGINT')
        assert preemption.configured_signals() == (
            signal.SIGUSR2,
            signal.SIGINT,
        )
        monkeypatch.setenv(preemption.SIGNALS_VARIABLE, 'USR2,TREM')
        with pytest.raises(ValueError, match="names 'TREM', which is not"):
            preemption.configured_signals()


# ---------------------------------------------------------------- events
class ProgressSpy(Tracker):
    """Sees the progress bar right after the tqdm tracker made it.

    Immediate, like the bar it looks at.
    """

    immediate = True

    def __init__(self, bars: TqdmLogger) -> None:
        self.bars = bars
        self.loops: list[dict[str, Any]] = []

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.IterateBatchEvent) -> None:
        bar = self.bars.batch_bar(event.source_name)
        loop = {
            'source': event.source_name,
            'start': event.start_batch,
            'shown': bar.n,
            'total': bar.total,
            'pushed': [],
        }

        def push(metrics: Mapping[str, Any], done: int) -> None:
            loop['pushed'].append(bar.n)

        event.push_updates.append(push)
        self.loops.append(loop)
        return super().notify(event)


def test_trackers_hear_of_the_preemption(tmp_path: pathlib.Path) -> None:
    recorder = RecordingTracker()
    code = attempt(tmp_path, '--signal-at', '4', extra=(recorder,))
    assert code == REQUEUE
    (stop,) = recorder.of_type(log_events.StopExperimentEvent)
    assert stop.status == 'preempted' and stop.preempted
    assert recorder.clean_ups == 1
    (saved,) = recorder.of_type(log_events.SaveModelEvent)
    assert pathlib.Path(saved.location).name == checkpoint_name(0, 4)
    assert recorder.names.index('SaveModelEvent') < recorder.names.index(
        'StopExperimentEvent'
    )
    # the handlers stay for a next run; the stop consumed the signal
    assert signal.getsignal(signal.SIGUSR2) == preemption.watcher._handle
    assert not preemption.watcher.requested


def test_progress_bar_starts_at_the_resumed_batch(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drytorch.trackers import tqdm as tqdm_tracker

    # the live bar, as on a terminal (a file gets plain lines)
    monkeypatch.setattr(tqdm_tracker, '_is_terminal', lambda stream: True)
    assert attempt(tmp_path, '--signal-at', '10') == REQUEUE
    bars = TqdmLogger(leave=False)
    spy = ProgressSpy(bars)
    assert attempt(tmp_path, '--resume', extra=(bars, spy)) == 0
    first, *others = spy.loops
    assert first == {
        'source': 'Trainer',
        'start': 4,
        'shown': 4,
        'total': 6,
        'pushed': [6],
    }
    assert {loop['start'] for loop in others} == {0}


# ---------------------------------------------------------------- world size
def build_trainer(root: pathlib.Path) -> Trainer:
    """A trainer of the worker's model, in a run that the caller stops."""
    import drytorch
    from drytorch.lib import objectives

    train_set, _ = _worker.data()

    exp: Experiment[None] = Experiment(None, name='Preempt', par_dir=root)
    exp.create_run(run_id='run').start()
    model = drytorch.Model(_worker.network(torch.nn.Identity()), name='net')
    return drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(train_set, 16, seed=3),
        loss=drytorch.Loss(objectives.cross_entropy, 'CE'),
        learning_schema=drytorch.LearningSchema.adam(base_lr=0.05),
    )


def test_mid_epoch_checkpoint_of_another_world_size_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    trainer = build_trainer(tmp_path)
    state = trainer.state_dict(Position(1, 3, 'train'))
    # as 2 ranks of 16 would have written it: a global batch of 32
    state['world_size'] = 2
    state['loader']['global_batch_size'] = 32
    with pytest.raises(
        exceptions.WorldSizeChangedError,
        match=r'written by 2 process\(es\) in the middle of an epoch, and '
        r'this attempt runs 1: its global batch was 32 samples and would be '
        r'16 here.*global_batch_size=32.*relaunch with the same number of '
        r'processes \(2\)',
    ):
        trainer.load_state_dict(state)
    for phase in ('validate', 'done'):
        state = trainer.state_dict(Position(1, 0, phase))
        state['world_size'] = 2
        trainer.load_state_dict(state)
        assert trainer.model.epoch == 0  # the saved model's epoch count


def test_world_size_grows_mid_epoch_without_the_global_batch(
    zygote: Zygote, reference: Callable[[int], Trial], tmp_path: pathlib.Path
) -> None:
    """A batch given per rank would double the global batch: refused.

    1 process preempted mid-epoch; 2 ranks refuse, saying to keep the
    global batch with ``global_batch_size``; 1 process resumes.  (With the
    global batch kept the world may change: ``test_preemption_elastic``.)
    """
    trial = Trial(zygote, tmp_path, 1, options(1, 'csv'))
    assert trial.attempt('--signal-at', '3') == [REQUEUE], trial.logs()
    assert trial.attempt(world_size=2) == [1, 1], trial.logs()
    for rank in (0, 1):
        log = trial.log(2, rank)
        assert 'WorldSizeChangedError' in log
        assert 'written by 1 process(es)' in log
        assert 'global batch was 16 samples and would be 32 here' in log
        assert 'global_batch_size=16 (each of the 2 ranks then takes 8)' in log
    assert trial.registry()['status'] == 'failed'
    assert trial.checkpoints() == [checkpoint_name(0, 3), 'latest']
    assert trial.attempt() == [0], trial.logs()
    assert_bitwise_equal(trial.final(), reference(1).final())


def test_world_size_grows_mid_epoch(
    zygote: Zygote, tmp_path: pathlib.Path
) -> None:
    """With the global batch kept, 2 ranks continue 1 process's epoch.

    Step 3 of epoch 1's 6 done by one process, the other 3 steps by two
    ranks of 8 samples each; one record per metric and epoch.  (Dropout
    draws from new streams on two ranks, so the values are not compared
    here: ``test_preemption_elastic`` compares them without dropout.)
    """
    options_ = [*options(1, 'csv'), '--global-batch-size', '16']
    trial = Trial(zygote, tmp_path, 1, options_)
    assert trial.attempt('--signal-at', '3') == [REQUEUE], trial.logs()
    assert trial.checkpoints() == [checkpoint_name(0, 3), 'latest']
    assert trial.attempt(world_size=2) == [0, 0], trial.logs()
    records = csv_records(trial.run_dir)
    assert sorted(records) == [
        (f'{source}/CE', epoch)
        for source in ('Trainer', 'Validation')
        for epoch in (1, 2, 3)
    ]
    assert all(len(values) == 1 for values in records.values())
    assert trial.final()['epoch'] == 3


def test_world_size_shrinks_at_an_epoch_end(
    zygote: Zygote, tmp_path: pathlib.Path
) -> None:
    """2 ranks preempted after an epoch's training; 1 process continues."""
    trial = Trial(zygote, tmp_path, 2, options(2, 'csv'))
    assert trial.attempt('--signal-at', '6') == [REQUEUE] * 2, trial.logs()
    assert trial.checkpoints() == [checkpoint_name(1), 'latest']
    assert trial.attempt(world_size=1) == [0], trial.logs()
    assert trial.registry()['attempts'] == 2
    records = csv_records(trial.run_dir)
    assert sorted(records) == [
        (f'{source}/CE', epoch)
        for source in ('Trainer', 'Validation')
        for epoch in (1, 2, 3)
    ]
    assert all(len(values) == 1 for values in records.values())
    assert trial.final()['epoch'] == 3


# ---------------------------------------------------------------- loading
def test_an_unreadable_newest_checkpoint_is_skipped(
    tmp_path: pathlib.Path,
) -> None:
    """A file cut short by a copy is never what loads; temp files neither."""
    checkpoint = LocalCheckpoint(tmp_path)
    checkpoint.bind('net')
    checkpoint.save({'position': 1}, 1)
    newest = pathlib.Path(checkpoint.save({'position': 2}, 1, 4))
    newest.write_bytes(newest.read_bytes()[:40])
    (checkpoint.directory / f'.{checkpoint_name(2)}.123.tmp').write_bytes(b'x')
    assert [i.path.name for i in checkpoint.available()] == [
        checkpoint_name(1),
        checkpoint_name(1, 4),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        state, info = checkpoint.load()
    assert state == {'position': 1}
    assert info.path.name == checkpoint_name(1)
    assert any('cannot be read' in str(w.message) for w in caught)
