"""Preempt, stop or resume a one-process run anywhere: the promise holds.

Each attempt runs in this process as a user's script would after a
requeue: a new experiment object, the run resumed by id, new model and
trainer objects, the same script from its first line.  Preemptions are
real flags of the process watcher, raised where a signal could land; the
2-rank paths are in ``tests/distributed_training/test_dist_every_path.py``
and the generated matrix of both in ``tests/faults``.
"""

from __future__ import annotations

import os
import pathlib
import signal
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import drytorch
from drytorch.core import exceptions, log_events
from drytorch.distributed.preemption import watcher
from drytorch.lib import hooks
from tests.helpers.kernel import RecordingTracker
from tests.lib import _support

Script = Callable[['Attempt'], None]


class Counter(nn.Module):
    """Identity that counts its passes and can raise the flag at one."""

    def __init__(self) -> None:
        super().__init__()
        self.passes = {'train': 0, 'eval': 0}
        self.flag_at: tuple[str, int] | None = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        mode = 'train' if self.training else 'eval'
        self.passes[mode] += 1
        if self.flag_at == (mode, self.passes[mode]):
            watcher.request()
        return inputs


class Attempt:
    """One attempt of a run: experiment, trainer, a test, a recorder."""

    def __init__(
        self, root: pathlib.Path, resume: bool, save_every: int | None = 1
    ) -> None:
        self.save_every = save_every
        self.recorder = RecordingTracker()
        self.experiment = drytorch.Experiment(
            {'lr': 0.05}, name='Paths', par_dir=root
        )
        self.experiment.trackers.subscribe(self.recorder)
        self.resume = resume
        self.counter = Counter()
        self.trainer: drytorch.Trainer
        self.test: drytorch.Test
        self.stopping = hooks.EarlyStoppingCallback(
            patience=1, start_from_epoch=1, min_delta=0.05
        )

    def build(self) -> None:
        torch.manual_seed(0)
        module = nn.Sequential(self.counter, nn.Linear(3, 8), nn.Dropout(0.2))
        module.append(nn.Linear(8, 1))
        self.trainer = _support.make_trainer(module)
        self.trainer.add_validation(
            drytorch.DataLoader(_support.regression_data(16, seed=1), 8)
        )
        self.trainer.post_epoch_hooks.register(self.stopping)
        if self.save_every:
            saving = hooks.SaveEveryEpochs(self.save_every)
            self.trainer.post_epoch_hooks.register(saving)
        self.test = drytorch.Test(
            self.trainer.model,
            loader=drytorch.DataLoader(_support.regression_data(16, 2), 8),
            metric=drytorch.Loss('MSE'),
        )

    def run(self, script: Script) -> str:
        """'completed' or 'preempted'."""
        try:
            with self.experiment.create_run(run_id='r', resume=self.resume):
                self.build()
                script(self)
        except exceptions.PreemptedExit:
            return 'preempted'
        return 'completed'

    def weights(self) -> dict[str, torch.Tensor]:
        return {
            k: v.clone()
            for k, v in self.trainer.model.module.state_dict().items()
        }

    def trained_epochs(self) -> list[int]:
        return [
            e.epoch
            for e in self.recorder.of_type(log_events.MetricEvent)
            if e.source_name == 'Trainer'
        ]


def attempts(
    root: pathlib.Path,
    script: Script,
    first: Script | None = None,
    save_every: int | None = 1,
) -> list[Attempt]:
    """Attempts of one run until one completes (``first`` for attempt 1)."""
    done: list[Attempt] = []
    for number in range(4):
        attempt = Attempt(root, resume=number > 0, save_every=save_every)
        status = attempt.run(first if number == 0 and first else script)
        done.append(attempt)
        if status == 'completed':
            return done
    raise AssertionError('the run never completed')


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_then_test(epochs: int) -> Script:
    def script(attempt: Attempt) -> None:
        attempt.trainer.train(epochs)
        attempt.test()

    return script


# ------------------------------------------------------------ defect 2
WHERE_AFTER_TRAINING = ['between train and test', 'during the test']


@pytest.mark.parametrize('save_every', [None, 2, 1])
@pytest.mark.parametrize('where', WHERE_AFTER_TRAINING)
def test_a_preemption_after_training_resumes_with_only_the_test_left(
    tmp_path: pathlib.Path, where: str, save_every: int | None
) -> None:
    """Whether or not a hook saved the last epoch."""
    reference = attempts(
        tmp_path / 'ref', train_then_test(3), None, save_every
    )
    reference = reference[-1]

    def first(attempt: Attempt) -> None:
        attempt.trainer.train(3)
        if where == 'between train and test':
            os.kill(os.getpid(), signal.SIGUSR2)  # a real signal
        else:
            attempt.counter.flag_at = (
                'eval',
                attempt.counter.passes['eval'] + 1,
            )
        attempt.test()

    runs = attempts(tmp_path / 'cut', train_then_test(3), first, save_every)
    assert len(runs) == 2
    resumed = runs[-1]
    assert resumed.counter.passes['train'] == 0, 'the training ran again'
    assert same(resumed.weights(), reference.weights())
    assert resumed.test.computed_metrics == reference.test.computed_metrics


# ------------------------------------------------------------ defect 3
def early_stop_script(attempt: Attempt) -> None:
    attempt.trainer.train(12)
    attempt.test()


@pytest.mark.parametrize('when', ['in the stopping epoch', 'in the test'])
def test_early_stopping_survives_a_preemption(
    tmp_path: pathlib.Path, when: str
) -> None:
    reference = attempts(tmp_path / 'ref', early_stop_script)[-1]
    stopped = reference.trainer.model.epoch
    assert stopped < 12, 'the reference must stop early for this test'

    def first(attempt: Attempt) -> None:
        if when == 'in the stopping epoch':

            def late(trainer: drytorch.Trainer) -> None:
                if trainer.model.epoch == stopped:
                    watcher.request()

            attempt.trainer.post_epoch_hooks.hooks.insert(0, late)
            attempt.trainer.train(12)
            attempt.test()
        else:
            attempt.trainer.train(12)
            attempt.counter.flag_at = (
                'eval',
                attempt.counter.passes['eval'] + 1,
            )
            attempt.test()

    runs = attempts(tmp_path / 'cut', early_stop_script, first)
    assert len(runs) == 2
    resumed = runs[-1]
    assert resumed.trainer.model.epoch == stopped
    assert resumed.trained_epochs() == []
    assert same(resumed.weights(), reference.weights())
    assert resumed.test.computed_metrics == reference.test.computed_metrics


def test_hook_state_saved_by_save_every_epochs_is_the_epochs_final_one(
    tmp_path: pathlib.Path,
) -> None:
    """SaveEveryEpochs listed before the early stop still saves its state."""

    saved: dict[str, Any] = {}

    def script(attempt: Attempt) -> None:
        hooks_list = attempt.trainer.post_epoch_hooks.hooks
        hooks_list.reverse()  # SaveEveryEpochs first, early stopping last
        attempt.trainer.train(12)
        epoch = attempt.trainer.model.epoch
        checkpoint = attempt.trainer.model.checkpoint
        saved['state'] = checkpoint.load(epoch, mid_epoch=False)[0]

    reference = attempts(tmp_path, script)[-1]
    assert reference.trainer.model.epoch < 12
    state = saved['state']
    assert state['terminated'] == reference.trainer.terminated
    saved_hook = ('EarlyStoppingCallback', reference.stopping.state_dict())
    assert state['hooks'][1] == saved_hook


# ------------------------------------------------------------ defect 6
def test_a_signal_after_the_last_step_stops_the_next_run_of_a_sweep(
    tmp_path: pathlib.Path,
) -> None:
    first = Attempt(tmp_path, resume=False)

    def late_signal(attempt: Attempt) -> None:
        attempt.trainer.train(1)
        os.kill(os.getpid(), signal.SIGUSR2)  # after the last step boundary

    assert first.run(late_signal) == 'completed'
    # between the runs the handler still holds: the process is alive, and a
    # later SIGTERM (SLURM's, at the end of the grace time) is not a cancel
    assert signal.getsignal(signal.SIGUSR2) == watcher._handle
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.signum == signal.SIGUSR2

    second = drytorch.Experiment({}, name='Sweep', par_dir=tmp_path)
    second_recorder = RecordingTracker()
    second.trackers.subscribe(second_recorder)
    run_b = second.create_run(run_id='b')
    with pytest.raises(exceptions.PreemptedExit), run_b:
        _support.make_trainer().train(2)
    saved = sorted((run_b.dir / 'checkpoints' / 'net').glob('epoch_*.pt'))
    assert [p.name for p in saved] == ['epoch_000000+000001.pt']
    assert not watcher.requested, 'the stop consumed the signal'


# ------------------------------------------------------------ defect 7
@pytest.mark.parametrize(
    ('call', 'expected'), [('train', 8), ('train_until', 7)]
)
def test_an_explicit_target_after_a_finished_run_trains_to_it(
    tmp_path: pathlib.Path, call: str, expected: int
) -> None:
    def five(attempt: Attempt) -> None:
        attempt.stopping.monitor.patience = 100
        attempt.trainer.train(5)

    assert Attempt(tmp_path, resume=False).run(five) == 'completed'

    def more(attempt: Attempt) -> None:
        attempt.stopping.monitor.patience = 100
        if call == 'train':
            attempt.trainer.train(3)
        else:
            attempt.trainer.train_until(7)

    later = Attempt(tmp_path, resume=True)
    assert later.run(more) == 'completed'
    assert later.trainer.model.epoch == expected
    assert later.trained_epochs() == list(range(6, expected + 1))
    start = later.recorder.of_type(log_events.StartTrainingEvent)
    assert [(e.start_epoch, e.end_epoch) for e in start] == [(6, expected)]


def test_a_repeated_script_after_a_preemption_skips_only_finished_calls(
    tmp_path: pathlib.Path,
) -> None:
    def script(attempt: Attempt) -> None:
        attempt.stopping.monitor.patience = 100
        attempt.trainer.train(2)
        attempt.trainer.train(2)

    def first(attempt: Attempt) -> None:
        attempt.stopping.monitor.patience = 100
        attempt.trainer.train(2)
        attempt.counter.flag_at = (
            'train',
            attempt.counter.passes['train'] + 3,
        )
        attempt.trainer.train(2)

    reference = attempts(tmp_path / 'ref', script)[-1]
    runs = attempts(tmp_path / 'cut', script, first)
    assert len(runs) == 2
    assert runs[-1].trainer.model.epoch == 4
    assert same(runs[-1].weights(), reference.weights())


# ------------------------------------------------------------ defect 13
@pytest.mark.parametrize('value', [1.5, 2.0, '2', True, None, -1])
@pytest.mark.parametrize('method', ['train', 'train_until'])
@pytest.mark.usefixtures('run')
def test_epoch_counts_must_be_whole_numbers(method: str, value: Any) -> None:
    trainer = _support.make_trainer()
    with pytest.raises(exceptions.EpochCountError, match=repr(value)) as err:
        getattr(trainer, method)(value)
    assert isinstance(err.value, TypeError | ValueError)
    assert trainer.model.epoch == 0


# ------------------------------------------------------------ defect 9
@pytest.mark.usefixtures('run')
def test_a_checkpoint_that_cannot_be_written_names_the_folder(
    tmp_path: pathlib.Path,
) -> None:
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('a file where the checkpoint folder should be')
    trainer = _support.make_trainer(
        checkpoint=drytorch.LocalCheckpoint(blocker)
    )
    # the end of a training call checkpoints (so that a preemption in the
    # test does not train again): that write fails here
    with pytest.raises(exceptions.CheckpointWriteError, match='not-a-folder'):
        trainer.train(1)
    assert blocker.read_text().startswith('a file')


def test_a_requeued_job_repeats_its_completed_script_and_trains_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SLURM requeued the job after the run completed (a sweep's run A)."""
    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    monkeypatch.setenv('SLURM_RESTART_COUNT', '0')

    def script(attempt: Attempt) -> None:
        attempt.stopping.monitor.patience = 100
        attempt.trainer.train(2)
        attempt.trainer.train_until(3)

    first = Attempt(tmp_path, resume=False)
    assert first.run(script) == 'completed'
    monkeypatch.setenv('SLURM_RESTART_COUNT', '1')
    for resume in (False, True):  # with or without resume=True
        again = Attempt(tmp_path, resume=resume)
        assert again.run(script) == 'completed'
        assert again.trainer.model.epoch == 3
        assert again.trained_epochs() == []
        assert same(again.weights(), first.weights())


def test_a_hook_added_between_calls_gets_its_state_back(
    tmp_path: pathlib.Path,
) -> None:
    def script(attempt: Attempt) -> None:
        attempt.trainer.post_epoch_hooks.hooks.remove(attempt.stopping)
        attempt.trainer.train(2)
        attempt.trainer.post_epoch_hooks.register(attempt.stopping)
        attempt.trainer.train(10)

    def first(attempt: Attempt) -> None:
        attempt.trainer.post_epoch_hooks.hooks.remove(attempt.stopping)
        attempt.trainer.train(2)
        attempt.trainer.post_epoch_hooks.register(attempt.stopping)
        late = ('train', attempt.counter.passes['train'] + 7)
        attempt.counter.flag_at = late
        attempt.trainer.train(10)

    reference = attempts(tmp_path / 'ref', script)[-1]
    assert reference.trainer.model.epoch < 12
    runs = attempts(tmp_path / 'cut', script, first)
    assert len(runs) == 2
    assert runs[-1].trainer.model.epoch == reference.trainer.model.epoch
    assert same(runs[-1].weights(), reference.weights())


@pytest.mark.parametrize(
    'value', [0, -1, float('inf'), float('nan'), True, '5', 1e-9]
)
@pytest.mark.usefixtures('run')
def test_a_bad_checkpoint_timeout_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match='finite number of seconds'):
        _support.make_trainer(checkpoint_timeout=value)


@pytest.mark.parametrize('start_from_epoch', [1, 2])
@pytest.mark.usefixtures('run')
def test_monitors_count_only_epochs_that_validated(
    start_from_epoch: int,
) -> None:
    """Validation every 2 epochs: epochs 1, 3, 5 bring no new value."""
    trainer = _support.make_trainer()
    trainer.add_validation(
        drytorch.DataLoader(_support.regression_data(16, seed=1), 8),
        interval=2,
    )
    stopping = hooks.EarlyStoppingCallback(
        patience=1, start_from_epoch=start_from_epoch, min_delta=1e9
    )
    plateau = hooks.ReduceLROnPlateau(patience=1, factor=0.5)
    trainer.post_epoch_hooks.register_all([plateau, stopping])
    trainer.train(6)
    # the first value (epoch 2) is a best; the second (epoch 4) is not
    assert trainer.model.epoch == 4
    assert stopping.monitor.epochs_without_improvement == 1


class Scripted:
    """A script of several trainers and models, preemptable at one pass."""

    def __init__(self, root: pathlib.Path, resume: bool, flag_at: int) -> None:
        self.experiment = drytorch.Experiment({}, name='Many', par_dir=root)
        self.resume = resume
        self.counter = Counter()
        if flag_at:
            self.counter.flag_at = ('train', flag_at)

    def net(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(
            self.counter, nn.Linear(3, 8), nn.Dropout(0.3), nn.Linear(8, 1)
        )

    def run(self, body: Callable[[Scripted], dict[str, Any]]) -> Any:
        try:
            with self.experiment.create_run(run_id='m', resume=self.resume):
                return body(self)
        except exceptions.PreemptedExit:
            return None


def pretrain_then_finetune(script: Scripted) -> dict[str, Any]:
    model = drytorch.Model(script.net(0), name='net', device='cpu')
    data = drytorch.DataLoader(_support.regression_data(), 8, seed=0)
    pretrain = drytorch.Trainer(
        model,
        loader=data,
        loss=drytorch.Loss('MSE'),
        learning_schema=drytorch.LearningSchema.sgd(0.05),
    )
    finetune = drytorch.Trainer(
        model,
        'Finetune',
        loader=drytorch.DataLoader(_support.regression_data(24, 3), 8),
        loss=drytorch.Loss('MAE'),
        learning_schema=drytorch.LearningSchema.adam(0.01),
    )
    pretrain.train(2)
    finetune.train(2)
    return {'net': model.module.state_dict(), 'epoch': model.epoch}


def two_models(script: Scripted) -> dict[str, Any]:
    out = {}
    trainers = {}
    for name, seed in (('a', 0), ('b', 1)):
        model = drytorch.Model(script.net(seed), name=name, device='cpu')
        trainers[name] = drytorch.Trainer(
            model,
            loader=drytorch.DataLoader(_support.regression_data(), 8, seed=0),
            loss=drytorch.Loss('MSE'),
            learning_schema=drytorch.LearningSchema.sgd(0.05),
        )
    trainers['a'].train(2)
    trainers['b'].train(2)
    trainers['a'].train(2)
    for name, trainer in trainers.items():
        out[name] = trainer.model.module.state_dict()
    return out


@pytest.mark.parametrize(
    ('body', 'flag_at'),
    [(pretrain_then_finetune, 13), (two_models, 23), (two_models, 3)],
)
def test_several_trainers_and_models_resume_exactly(
    tmp_path: pathlib.Path,
    body: Callable[[Scripted], dict[str, Any]],
    flag_at: int,
) -> None:
    """The script's calls are numbered across trainers and models."""
    reference = Scripted(tmp_path / 'ref', False, 0).run(body)
    assert Scripted(tmp_path / 'cut', False, flag_at).run(body) is None
    resumed = Scripted(tmp_path / 'cut', True, 0).run(body)
    assert resumed is not None
    for name, weights in reference.items():
        if isinstance(weights, dict):
            assert same(resumed[name], weights), name
        else:
            assert resumed[name] == weights, name


@pytest.mark.usefixtures('run')
def test_keep_best_by_a_metric_the_trainer_lacks_is_a_warning(
    tmp_path: pathlib.Path,
) -> None:
    trainer = _support.make_trainer(
        checkpoint=drytorch.LocalCheckpoint(
            tmp_path / 'ck', keep_best=1, monitor='Accuracy'
        )
    )
    with pytest.warns(exceptions.DryTorchWarning, match="'Accuracy'"):
        trainer.train(1)
