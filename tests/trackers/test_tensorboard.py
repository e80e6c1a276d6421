"""TensorBoard: event files read back with TensorBoard's own reader."""

from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
import shutil
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import pytest

pytest.importorskip('tensorboard', reason='tensorboard is not installed')

import torch
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)
from typing_extensions import override

import drytorch
from drytorch.core import exceptions, log_events
from drytorch.core.tracking import Tracker, TrackerExceptionWarning
from drytorch.trackers.csv import CSVDumper
from drytorch.trackers.tensorboard import TensorBoard
from tests.trackers._support import (
    SOURCES,
    emit_epochs,
    expected,
    make_experiment,
    preempted_and_resumed,
    run_epochs,
    value,
)


def _scalars(log_dir: pathlib.Path, tag: str) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [(s.step, s.value) for s in accumulator.Scalars(tag)]


def test_scalars_and_text_in_the_run_folder(tmp_path: pathlib.Path) -> None:
    exp = make_experiment(tmp_path, TensorBoard(), config={'lr': 0.25})
    run_epochs(exp, range(1, 4))
    log_dir = tmp_path / 't' / 'runs' / 'r' / 'tensorboard'
    for source in SOURCES:
        points = _scalars(log_dir, f'm/{source}/loss')
        assert [step for step, _ in points] == [1, 2, 3]
        assert [v for _, v in points] == pytest.approx(
            [value(e, source) for e in (1, 2, 3)], rel=1e-6
        )
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    [config] = accumulator.Tensors('config/text_summary')
    text = config.tensor_proto.string_val[0].decode()
    assert json.loads(text) == {'lr': 0.25}
    [tags] = accumulator.Tensors('tags/text_summary')
    assert tags.tensor_proto.string_val[0].decode() == 'tag-a, tag-b'


def test_resume_purges_what_the_earlier_attempt_wrote_past_it(
    tmp_path: pathlib.Path,
) -> None:
    preempted_and_resumed(make_experiment(tmp_path, TensorBoard()))
    log_dir = tmp_path / 't' / 'runs' / 'r' / 'tensorboard'
    assert len(list(log_dir.glob('events.out.tfevents.*'))) == 2
    for source in SOURCES:
        points = _scalars(log_dir, f'm/{source}/loss')
        steps = [step for step, _ in points]
        assert steps == [1, 2, 3, 4], 'each epoch exactly once'
        want = expected(source)
        assert [v for _, v in points] == pytest.approx(
            [want[s] for s in steps], rel=1e-6
        )


Log = list[tuple[str, str, int]]  # (model, source, epoch), in order


def _attempts_view(attempts: list[Log]) -> dict[str, dict[int, float]]:
    """What every attempt leaves: a source's values are replaced from the
    epoch at which it logs again."""
    view: dict[str, dict[int, float]] = {}
    for number, log in enumerate(attempts, start=1):
        started: set[str] = set()
        for model, source, epoch in log:
            tag = f'{model}/{source}/loss'
            points = view.setdefault(tag, {})
            if tag not in started:
                started.add(tag)
                for step in [s for s in points if s >= epoch]:
                    del points[step]
            points[epoch] = epoch + number / 10
    return view


def _run_attempts(tmp_path: pathlib.Path, attempts: list[Log]) -> None:
    exp = make_experiment(tmp_path, TensorBoard())
    for number, log in enumerate(attempts, start=1):
        try:
            with exp.create_run('r', resume=number > 1):
                for model, source, epoch in log:
                    log_events.MetricEvent(
                        model_name=model,
                        source_name=source,
                        epoch=epoch,
                        metrics={'loss': epoch + number / 10},
                    )
                raise exceptions.PreemptedExit()
        except exceptions.PreemptedExit:
            pass


@pytest.mark.parametrize(
    'attempts',
    [
        # preempted before validating epoch 2: train's epoch 2 stays
        [
            [('m', 'train', 1), ('m', 'val', 1), ('m', 'train', 2)],
            [('m', 'val', 2), ('m', 'train', 3), ('m', 'val', 3)],
        ],
        # a test source that does not log again keeps its value
        [
            [('m', 'train', 1), ('m', 'test', 2), ('m', 'train', 2)],
            [('m', 'train', 2), ('m', 'train', 3)],
        ],
        # a second model restarts earlier than the first: two purges
        [
            [('a', 'train', e) for e in range(1, 7)]
            + [('b', 'train', e) for e in range(1, 5)],
            [('a', 'train', 5), ('b', 'train', 2), ('a', 'train', 6)],
            [('b', 'train', 4), ('a', 'train', 7)],
        ],
    ],
    ids=['mid-epoch', 'silent-source', 'two-models'],
)
def test_every_attempt_seam_keeps_each_epoch_once(
    tmp_path: pathlib.Path, attempts: list[Log]
) -> None:
    _run_attempts(tmp_path, attempts)
    log_dir = tmp_path / 't' / 'runs' / 'r' / 'tensorboard'
    accumulator = EventAccumulator(str(log_dir), size_guidance={'scalars': 0})
    accumulator.Reload()
    for tag, want in _attempts_view(attempts).items():
        points = [(s.step, s.value) for s in accumulator.Scalars(tag)]
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f'{tag}: an epoch twice'
        assert dict(points) == pytest.approx(want), tag
    [config] = accumulator.Tensors('config/text_summary')
    assert config.step == 0


def test_given_folder_keeps_experiments_and_runs_apart(
    tmp_path: pathlib.Path,
) -> None:
    board = TensorBoard(par_dir=tmp_path / 'boards')
    first = make_experiment(tmp_path, board)
    run_epochs(first, [1], run_id='a')
    run_epochs(first, [1, 2], run_id='b')
    second = make_experiment(tmp_path, board, name='u')
    run_epochs(second, [1, 2, 3], run_id='a')
    root = tmp_path / 'boards'
    assert board.root_dir == root  # a server lists every run below it
    for exp_name, run_id, count in (
        ('t', 'a', 1),
        ('t', 'b', 2),
        ('u', 'a', 3),
    ):
        log_dir = root / exp_name / 'runs' / run_id / 'tensorboard'
        assert len(_scalars(log_dir, 'm/train/loss')) == count


def test_server_answers_on_loopback_and_stops(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger('drytorch')
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger='drytorch')
    board = TensorBoard(start_server=True)
    exp = make_experiment(tmp_path, board)
    with exp.create_run('r'):
        emit_epochs([1, 2])
        exp.trackers.flush()
        url = board.url
        assert url is not None
        assert url.startswith('http://127.0.0.1:')
        with urllib.request.urlopen(url + 'data/logdir', timeout=10) as page:
            shown = json.loads(page.read())
        assert pathlib.Path(shown['logdir']) == exp.run.dir / 'tensorboard'
        assert board._server is not None
        process = board._server.process
    logger.removeHandler(caplog.handler)
    assert url in caplog.text
    assert process is not None
    assert process.poll() is not None, 'the server must stop with the run'
    assert board.url is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_removed_log_folder_drops_only_this_tracker(
    tmp_path: pathlib.Path,
) -> None:
    csv = CSVDumper(par_dir=tmp_path / 'csv')
    board = TensorBoard()
    exp = make_experiment(tmp_path, board, csv)
    with exp.create_run('r'):
        emit_epochs([1, 2])
        exp.trackers.flush()
        shutil.rmtree(exp.run.dir / 'tensorboard')
        with pytest.warns(TrackerExceptionWarning, match='TensorBoard'):
            emit_epochs([3])
            exp.trackers.flush()
        emit_epochs([4])
        assert list(exp.trackers.named_trackers) == ['CSVDumper']
    assert board._writer is None
    for source in SOURCES:
        epochs, metrics = csv.load_metrics('m')[source]
        assert epochs == [1, 2, 3, 4]
        assert metrics['loss'] == [value(e, source) for e in epochs]


# ------------------------------------------------------------ batch level
# 40 training samples in batches of 8 and 24 validation samples: 5 and 3
# batches a pass; with a sync every 2 steps a pass pushes at 2, 4, 5 and at
# 2, 3.  Training epoch e covers the steps (e - 1) * 5 + 1 to e * 5, the
# validation after it e * 3 + 1 to (e + 1) * 3.
TRAIN_STEPS = [2, 4, 5, 7, 9, 10, 12, 14, 15]
VAL_STEPS = [5, 6, 8, 9, 11, 12]


def _batch_dir(exp: drytorch.Experiment[Any], source: str) -> pathlib.Path:
    log_dir = exp.par_dir / 't' / 'runs' / 'r' / 'tensorboard'
    return log_dir / 'batches' / 'net' / source


def _batch_points(
    exp: drytorch.Experiment[Any], source: str, metric: str = 'loss'
) -> list[tuple[int, float]]:
    folder = _batch_dir(exp, source)
    accumulator = EventAccumulator(str(folder), size_guidance={'scalars': 0})
    accumulator.Reload()
    tag = f'batch/net/{source}/{metric}'
    assert accumulator.Tags()['scalars'] == [tag]
    return [(s.step, s.value) for s in accumulator.Scalars(tag)]


class Pushes(Tracker):
    """The running metrics each source's loops push, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, list[float]] = {}

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.IterateBatchEvent) -> None:
        values = self.values.setdefault(event.source_name, [])

        def push(metrics: Mapping[str, Any], done: int) -> None:
            values.append(float(metrics['loss']))

        event.push_updates.append(push)
        return super().notify(event)


class Cue(torch.nn.Module):
    """A linear layer that preempts its process at a training pass."""

    def __init__(self, at: int = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 1)
        self.at = at
        self.passes = 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.passes += 1
            if self.passes == self.at:  # a real signal, as SLURM sends
                os.kill(os.getpid(), signal.SIGUSR2)
        return self.linear(inputs)


def _data(n: int, seed: int) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, generator=generator)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5]])
    return torch.utils.data.TensorDataset(inputs, targets)


def _trainer(at: int = 0, scale: float = 1.0) -> drytorch.Trainer:
    """A trainer of a small regression; ``scale`` multiplies its loss."""

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return scale * (outputs - targets).square().flatten(1).mean(1)

    trainer = drytorch.Trainer(
        drytorch.Model(Cue(at), name='net', device='cpu'),
        loader=drytorch.DataLoader(_data(40, 0), 8, seed=0),
        loss=drytorch.Loss(loss, 'loss'),
        learning_schema=drytorch.LearningSchema.sgd(0.05),
        sync_every=2,
    )
    trainer.add_validation(drytorch.DataLoader(_data(24, 1), 8))
    return trainer


class _DiedError(Exception):
    """The process dies (as a SIGKILL would) at a chosen epoch."""


def _die_at(epoch: int) -> Callable[[drytorch.Trainer], None]:
    def hook(trainer: drytorch.Trainer) -> None:
        if trainer.model.epoch == epoch:
            raise _DiedError

    return hook


def _attempt(
    exp: drytorch.Experiment[Any],
    script: Callable[[], None],
    resume: bool = False,
) -> None:
    try:
        with exp.create_run('r', resume=resume):
            script()
    except exceptions.PreemptedExit:
        pass


def test_batch_scalars_of_a_training_against_the_global_step(
    tmp_path: pathlib.Path,
) -> None:
    pushes = Pushes()
    exp = make_experiment(tmp_path, TensorBoard(), pushes)
    _attempt(exp, lambda: _trainer().train(3))
    log_dir = tmp_path / 't' / 'runs' / 'r' / 'tensorboard'
    for source, steps in (('Trainer', TRAIN_STEPS), ('Validation', VAL_STEPS)):
        points = _batch_points(exp, source)
        assert [step for step, _ in points] == steps
        assert [v for _, v in points] == pytest.approx(
            pushes.values[source], rel=1e-6
        )
        # the last running mean of a pass is the epoch's global mean; a
        # pass ends at a multiple of its length, one pass later for the
        # validation of an epoch
        per_pass, later = (5, 0) if source == 'Trainer' else (3, 1)
        ends = {
            step // per_pass - later: v
            for step, v in points
            if step % per_pass == 0
        }
        epochs = dict(_scalars(log_dir, f'net/{source}/loss'))
        assert sorted(epochs) == [1, 2, 3]
        assert ends == pytest.approx(epochs, rel=1e-6)
    # the epoch-level folder holds the epoch-level tags only
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    assert sorted(accumulator.Tags()['scalars']) == [
        'net/Trainer/loss',
        'net/Validation/loss',
    ]


def test_batch_scalars_continue_a_preempted_epoch_seamlessly(
    tmp_path: pathlib.Path,
) -> None:
    reference = Pushes()
    exp = make_experiment(tmp_path / 'reference', TensorBoard(), reference)
    _attempt(exp, lambda: _trainer().train(3))
    pushes = Pushes()
    exp = make_experiment(tmp_path / 'preempted', TensorBoard(), pushes)
    # the 7th training pass is batch 2 of epoch 2: preempted there
    _attempt(exp, lambda: _trainer(at=7).train(3))
    assert pushes.values['Trainer'] == pytest.approx(
        reference.values['Trainer'][:4], rel=1e-6
    )
    _attempt(exp, lambda: _trainer().train(3), resume=True)
    for source, steps in (('Trainer', TRAIN_STEPS), ('Validation', VAL_STEPS)):
        assert len(list(_batch_dir(exp, source).glob('events.*'))) == 2
        points = _batch_points(exp, source)
        assert [step for step, _ in points] == steps, 'each step once'
        assert [v for _, v in points] == pytest.approx(
            reference.values[source], rel=1e-6
        )


def test_batch_scalars_replace_what_a_killed_attempt_wrote_past_it(
    tmp_path: pathlib.Path,
) -> None:
    """The first attempt trains on past its checkpoint, then dies."""

    def script(scale: float, die: bool) -> Callable[[], None]:
        def run() -> None:
            trainer = _trainer(scale=scale)
            trainer.train(1)
            trainer.save_checkpoint()
            if die:
                # dies once epoch 3 is logged, before the checkpoint that
                # the end of the call would write
                trainer.post_epoch_hooks.register(_die_at(3))
            try:
                trainer.train(2)
            except _DiedError:
                raise exceptions.PreemptedExit() from None

        return run

    first, second = Pushes(), Pushes()
    exp = make_experiment(tmp_path, TensorBoard(), first)
    _attempt(exp, script(1.0, die=True))
    exp.trackers.remove('Pushes')
    exp.trackers.subscribe(second)
    # resumed from epoch 1 with a loss ten times larger: the values of
    # epochs 2 and 3 must be the second attempt's, once each
    _attempt(exp, script(10.0, die=False), resume=True)
    replays = {'Trainer': TRAIN_STEPS[3:], 'Validation': VAL_STEPS[2:]}
    for source, steps in (('Trainer', TRAIN_STEPS), ('Validation', VAL_STEPS)):
        earlier = dict(zip(steps, first.values[source], strict=True))
        later = dict(zip(replays[source], second.values[source], strict=True))
        points = _batch_points(exp, source)
        assert [step for step, _ in points] == steps, 'each step once'
        assert dict(points) == pytest.approx(earlier | later, rel=1e-6)
        for step, loss in later.items():  # the attempts differ there
            assert loss != pytest.approx(earlier[step], rel=1e-3)


def test_batch_scalars_of_loops_with_and_without_a_position(
    tmp_path: pathlib.Path,
) -> None:
    """Names become folders one for one; a repeated pass replaces."""
    exp = make_experiment(tmp_path, TensorBoard())
    with exp.create_run('r'):
        for attempt in (1, 2):  # the same evaluation twice at epoch 0
            loop = log_events.IterateBatchEvent(
                source_name='probe',
                batch_size=None,
                dataset_size=None,
                n_iter=4,
                model_name='a/b',
            )
            loop.update({'loss': attempt}, 2)
            loop.update({'loss': attempt + 0.5}, 2)
        for _ in (1, 2):  # neither model nor length: a running count
            loop = log_events.IterateBatchEvent(
                source_name='..',
                batch_size=None,
                dataset_size=None,
                n_iter=None,
            )
            loop.update({'loss': 1.0}, 2)
            loop.update({'loss': 2.0}, 2)
    root = tmp_path / 't' / 'runs' / 'r' / 'tensorboard' / 'batches'
    assert _scalars(root / 'a%2Fb' / 'probe', 'batch/a/b/probe/loss') == [
        (2, 2.0),
        (4, 2.5),
    ]
    assert _scalars(root / '(none)' / '%2E%2E', 'batch/../loss') == [
        (2, 1.0),
        (4, 2.0),
        (6, 1.0),
        (8, 2.0),
    ]


def test_batch_scalars_can_be_left_out(tmp_path: pathlib.Path) -> None:
    exp = make_experiment(tmp_path, TensorBoard(log_batches=False))
    _attempt(exp, lambda: _trainer().train(1))
    log_dir = tmp_path / 't' / 'runs' / 'r' / 'tensorboard'
    assert not (log_dir / 'batches').exists()
    assert len(_scalars(log_dir, 'net/Trainer/loss')) == 1


def test_a_batch_folder_removed_mid_epoch_drops_only_this_tracker(
    tmp_path: pathlib.Path,
) -> None:
    csv = CSVDumper(par_dir=tmp_path / 'csv')
    board = TensorBoard()
    exp = make_experiment(tmp_path, board, csv)

    def script() -> None:
        trainer = _trainer()
        folder = _batch_dir(exp, 'Trainer')

        def remove(module: Any, inputs: Any) -> None:
            # before batch 1 of epoch 2: the loop has started and epoch 1 is
            # flushed (a record still queued would fail the writer's thread)
            if module.passes == 5 and folder.exists():
                # the worker must not be writing there while it goes
                exp.trackers.flush()
                shutil.rmtree(folder)

        trainer.model.module.register_forward_pre_hook(remove)
        with pytest.warns(
            TrackerExceptionWarning, match='TensorBoard.*removed'
        ):
            trainer.train(3)
            exp.trackers.flush()  # the trackers run on a background worker
        assert list(exp.trackers.named_trackers) == ['CSVDumper']
        assert trainer.model.epoch == 3

    _attempt(exp, script)
    assert board._batches is None
    epochs, metrics = csv.load_metrics('net')['Trainer']
    assert epochs == [1, 2, 3]
    assert len(metrics['loss']) == 3


def test_a_per_step_schedule_writes_its_rate_per_step(
    tmp_path: pathlib.Path,
) -> None:
    """``lr`` at each sync point beside the loss, and once per epoch."""
    from drytorch.lib import schedulers

    exp = make_experiment(tmp_path, TensorBoard())

    def train() -> None:
        trainer = _trainer()
        trainer.update_learning_rate(
            scheduler=schedulers.CosineScheduler(8).with_warmup(4).per_step()
        )
        trainer.train(2)

    _attempt(exp, train)
    folder = _batch_dir(exp, 'Trainer')
    accumulator = EventAccumulator(str(folder), size_guidance={'scalars': 0})
    accumulator.Reload()
    rates = [
        (s.step, s.value) for s in accumulator.Scalars('batch/net/Trainer/lr')
    ]
    schedule = schedulers.CosineScheduler(8).with_warmup(4)
    # 5 steps an epoch, a sync point every 2 and at the last: the rate of
    # the optimizer step each follows
    assert rates == [
        (step, pytest.approx(schedule(0.05, step - 1), rel=1e-6))
        for step in (2, 4, 5, 7, 9, 10)
    ]
    log_dir = tmp_path / 't' / 'runs' / 'r' / 'tensorboard'
    epochs = _scalars(log_dir, 'net/Trainer/lr')
    assert epochs == [
        (1, pytest.approx(schedule(0.05, 4), rel=1e-6)),
        (2, pytest.approx(schedule(0.05, 9), rel=1e-6)),
    ]


def test_the_writer_is_drytorchs_and_takes_its_options(
    tmp_path: pathlib.Path,
) -> None:
    board = TensorBoard(None, False, 5, 7)
    assert (board.max_queue_size, board.flush_secs) == (5, 7)
    with pytest.raises(exceptions.AccessOutsideScopeError, match='writer'):
        _ = board.writer
    exp = make_experiment(tmp_path, board)
    with exp.create_run('r'):
        writer = TensorBoard.get_current().writer
        writer.add_scalar('custom/x', 2.5, 3)
        log_events.MetricEvent(
            model_name='m', source_name='s', epoch=1, metrics={'loss': 1.0}
        )
        exp.trackers.flush()
        assert board.writer is writer  # the library writes through it too
        assert writer.max_queue == 5
    log_dir = tmp_path / 't' / 'runs' / 'r' / 'tensorboard'
    assert _scalars(log_dir, 'custom/x') == [(3, 2.5)]
    assert _scalars(log_dir, 'm/s/loss') == [(1, 1.0)]
    with pytest.raises(ValueError, match='flush_secs must be >= 1'):
        TensorBoard(flush_secs=0)
