"""TqdmLogger: an epoch bar and a bar over each loop's batches."""

from __future__ import annotations

import io
import pathlib
import re
import sys
from typing import Any

import pytest
import tqdm

from drytorch import Experiment
from drytorch.core import exceptions, log_events
from drytorch.trackers import tqdm as tqdm_tracker
from drytorch.trackers.logging import BuiltinLogger, InfoLevels
from drytorch.trackers.tqdm import TqdmLogger


def experiment(tmp_path: pathlib.Path, *trackers: Any) -> Experiment[Any]:
    exp: Experiment[Any] = Experiment(
        None, name='BarExp', par_dir=tmp_path / 'experiments'
    )
    exp.trackers.subscribe(*trackers)
    return exp


def train(epochs: int, batches: int) -> list[log_events.IterateBatchEvent]:
    """What a training loop publishes, pushing progress at two points."""
    loops = []
    log_events.StartTrainingEvent(
        source_name='trainer',
        model_name='net',
        start_epoch=1,
        end_epoch=epochs,
    )
    for epoch in range(1, epochs + 1):
        log_events.StartEpochEvent(
            source_name='trainer', model_name='net', epoch=epoch
        )
        loop = log_events.IterateBatchEvent(
            source_name='trainer',
            batch_size=2,
            dataset_size=2 * batches,
            n_iter=batches,
        )
        loop.update({'loss': 0.5}, batches // 2)
        loop.update({'loss': 0.25}, batches - batches // 2)
        loops.append(loop)
        log_events.EndEpochEvent(
            source_name='trainer', model_name='net', epoch=epoch
        )
    log_events.EndTrainingEvent(source_name='trainer')
    return loops


@pytest.fixture
def terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> pytest.CaptureFixture[str]:
    """Captured stderr taken for a terminal: tqdm's live bars."""
    monkeypatch.setattr(tqdm_tracker, '_is_terminal', lambda stream: True)
    return capsys


def final_states(text: str, desc: str) -> list[str]:
    """The last drawn state of each bar called ``desc``."""
    states = re.findall(rf'{re.escape(desc)}:\s+(\d+%\|[^\r\n]*)', text)
    return states


def test_bars_show_progress_and_metrics(
    tmp_path: pathlib.Path, terminal: pytest.CaptureFixture[str]
) -> None:
    capsys = terminal
    exp = experiment(
        tmp_path, TqdmLogger(leave=True, enable_training_bar=True)
    )
    with exp.create_run():
        loops = train(epochs=2, batches=10)
    err = capsys.readouterr().err
    epochs = final_states(err, 'net epochs')
    assert epochs and '2/2' in epochs[-1], err
    batches = final_states(err, 'trainer')
    assert batches and '10/10' in batches[-1], err
    assert 'loss=0.25' in batches[-1]
    assert all(len(loop.push_updates) == 1 for loop in loops)
    assert not tqdm.tqdm._instances  # every bar was closed


def test_resumed_loop_starts_where_it_stopped(
    tmp_path: pathlib.Path, terminal: pytest.CaptureFixture[str]
) -> None:
    capsys = terminal
    exp = experiment(tmp_path, TqdmLogger(leave=True))
    with exp.create_run():
        loop = log_events.IterateBatchEvent(
            source_name='trainer',
            batch_size=2,
            dataset_size=40,
            n_iter=20,
            start_batch=15,
        )
        loop.update({}, 15)
        log_events.EndTestEvent(source_name='trainer', model_name='net')
    states = final_states(capsys.readouterr().err, 'trainer')
    assert states and '15/20' in states[0]


def test_the_epoch_bar_is_drytorchs_training_bar(
    tmp_path: pathlib.Path, terminal: pytest.CaptureFixture[str]
) -> None:
    """DRYTorch's meaning: the epoch bar only with enable_training_bar."""
    capsys = terminal
    exp = experiment(tmp_path, TqdmLogger())  # DRYTorch's defaults
    with exp.create_run():
        loops = train(epochs=1, batches=4)
    err = capsys.readouterr().err
    assert loops[0].push_updates
    assert not final_states(err, 'net epochs')
    assert final_states(err, 'trainer')  # left on screen (leave=True)
    exp = experiment(tmp_path, TqdmLogger(False, True, sys.stderr))
    with exp.create_run():
        train(epochs=1, batches=4)
    err = capsys.readouterr().err
    assert final_states(err, 'net epochs')


def test_clean_up_closes_bars_of_an_interrupted_run(
    tmp_path: pathlib.Path, terminal: pytest.CaptureFixture[str]
) -> None:
    exp = experiment(tmp_path, TqdmLogger(enable_training_bar=True))
    with pytest.raises(RuntimeError), exp.create_run():
        log_events.StartTrainingEvent(
            source_name='trainer', model_name='net', start_epoch=1, end_epoch=5
        )
        log_events.IterateBatchEvent(
            source_name='trainer', batch_size=1, dataset_size=5, n_iter=5
        )
        assert len(tqdm.tqdm._instances) == 2
        raise RuntimeError('crash mid-epoch')
    assert not tqdm.tqdm._instances


def test_log_lines_are_not_mixed_into_a_live_bar(
    tmp_path: pathlib.Path, terminal: pytest.CaptureFixture[str]
) -> None:
    capsys = terminal
    exp = experiment(
        tmp_path,
        TqdmLogger(leave=True, enable_training_bar=True),
        BuiltinLogger(InfoLevels.epoch),
    )
    with exp.create_run():
        train(epochs=2, batches=4)
    err = capsys.readouterr().err
    for line in re.split(r'[\r\n]', err):
        if 'Epoch' in line or 'Training' in line:
            assert re.match(r'^(\x1b\[A)?\[\d{4}-', line), repr(line)


def test_missing_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tqdm_tracker, 'is_available', lambda: False)
    with pytest.raises(exceptions.MissingDependencyError) as info:
        TqdmLogger()
    assert "'tqdm'" in str(info.value)
    assert 'drytorch[recommended]' in str(info.value)


class _Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _loop_updates(clock: _Clock, batches: int, step_s: float) -> None:
    loop = log_events.IterateBatchEvent(
        source_name='trainer',
        batch_size=2,
        dataset_size=2 * batches,
        n_iter=batches,
    )
    for done in range(1, batches + 1):
        clock.now += step_s
        loop.update({'loss': 1.0 / done}, 1)


@pytest.mark.parametrize('interval', [None, 5.0])
def test_a_file_stream_gets_plain_lines_throttled_by_interval(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    interval: float | None,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(tqdm_tracker, '_clock', clock)
    log = tmp_path / 'slurm-123.out'
    with log.open('w') as stream:
        exp = experiment(tmp_path, TqdmLogger(file=stream, interval=interval))
        with exp.create_run():
            log_events.StartTrainingEvent(
                source_name='trainer',
                model_name='net',
                start_epoch=1,
                end_epoch=4,
            )
            for epoch in range(1, 5):
                # 12 updates, 1 s apart
                _loop_updates(clock, batches=12, step_s=1.0)
                log_events.MetricEvent(
                    model_name='net',
                    source_name='trainer',
                    epoch=epoch,
                    metrics={'loss': 1.0 / epoch},
                )
                log_events.EndEpochEvent(
                    source_name='trainer', model_name='net', epoch=epoch
                )
            log_events.EndTrainingEvent(source_name='trainer')
    text = log.read_text()
    assert '\r' not in text and '\x1b' not in text, repr(text)
    lines = text.splitlines()
    epochs = [line for line in lines if line.startswith('net epoch')]
    assert epochs == [
        f'net epoch {e}/4 | trainer: loss={1 / e:.4g}' for e in range(1, 5)
    ]
    progress = [line for line in lines if line.startswith('trainer batch')]
    # default interval 30 s: a 12 s loop writes no progress line;
    # 5 s: lines at batches 5 and 10 of each epoch
    expected = 0 if interval is None else 2 * 4
    assert len(progress) == expected, lines
    if progress:
        assert progress[0].startswith('trainer batch 5/12  1.0 batch/s')
        assert 'loss=0.2' in progress[0]


def test_progress_interval_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(exceptions.DryTorchError, match='interval=-1'):
        TqdmLogger(interval=-1)
    monkeypatch.setenv(tqdm_tracker.INTERVAL_VARIABLE, 'often')
    with pytest.raises(exceptions.DryTorchError, match="'often'"):
        TqdmLogger()
    monkeypatch.setenv(tqdm_tracker.INTERVAL_VARIABLE, '2')
    assert TqdmLogger().interval == 2.0


class _TerminalLike(io.StringIO):
    """A stream in memory that says it is a terminal, as a tty does."""

    def isatty(self) -> bool:
        return True


def _train_small(
    tmp_path: pathlib.Path, tracker: TqdmLogger, epochs: int = 4
) -> None:
    """A real Trainer with validation, on a tiny regression."""
    import torch

    import drytorch

    inputs = torch.randn(64, 3)
    data = torch.utils.data.TensorDataset(inputs, inputs.sum(1, keepdim=True))
    exp = experiment(tmp_path, tracker)
    with exp.create_run():
        model = drytorch.Model(torch.nn.Linear(3, 1), name='lin')
        trainer = drytorch.Trainer(
            model,
            loader=drytorch.DataLoader(data, 8),
            loss=drytorch.Loss('MSE'),
            learning_schema=drytorch.LearningSchema.sgd(0.05),
        )
        trainer.add_validation(drytorch.DataLoader(data, 16))
        trainer.train(epochs)


@pytest.mark.parametrize('kind', ['file', 'memory'])
def test_a_real_training_written_to_a_file_has_no_control_characters(
    tmp_path: pathlib.Path, kind: str
) -> None:
    log = tmp_path / 'job.log'
    if kind == 'file':
        with log.open('w') as stream:
            _train_small(tmp_path, TqdmLogger(file=stream, interval=0))
        text = log.read_text()
    else:
        memory = io.StringIO()
        _train_small(tmp_path, TqdmLogger(file=memory, interval=0))
        text = memory.getvalue()
    assert '\r' not in text and '\x1b' not in text, repr(text)
    lines = text.splitlines()
    epochs = [line for line in lines if line.startswith('lin ep')]
    assert len(epochs) == 4
    for number, line in enumerate(epochs, start=1):
        assert line.startswith(f'lin epoch {number}/4 | ')
        assert re.search(r'Trainer\S*: MSE=[\d.e+-]+', line), line
        assert re.search(r'Validation\S*: MSE=[\d.e+-]+', line), line
    # interval 0: a progress line at every sync point, position and rate
    progress = [line for line in lines if ' batch ' in line]
    assert progress, lines
    assert all(re.search(r' batch \d+/\d+  \S+ batch/s', p) for p in progress)


def test_a_stream_that_is_a_terminal_gets_the_live_bar(
    tmp_path: pathlib.Path,
) -> None:
    terminal = _TerminalLike()
    _train_small(tmp_path, TqdmLogger(True, True, terminal))
    text = terminal.getvalue()
    assert '\r' in text, 'tqdm redraws its bar in place'
    assert 'lin epoch ' not in text, 'no plain lines on a terminal'
    epochs = final_states(text, 'lin epochs')
    assert epochs and '4/4' in epochs[-1], text


def test_a_nested_loop_does_not_double_the_lines(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines of two loops at once come an interval apart, not each."""
    clock = _Clock()
    monkeypatch.setattr(tqdm_tracker, '_clock', clock)
    memory = io.StringIO()
    exp = experiment(tmp_path, TqdmLogger(file=memory, interval=10))
    with exp.create_run():
        outer = log_events.IterateBatchEvent(
            source_name='trainer', batch_size=1, dataset_size=90, n_iter=None
        )
        inner = log_events.IterateBatchEvent(
            source_name='test', batch_size=1, dataset_size=90, n_iter=None
        )
        for _ in range(1, 91):  # 1 s apart, both loops
            clock.now += 1.0
            outer.update({'loss': 1.0}, 1)
            inner.update({'loss': 2.0}, 1)
    lines = memory.getvalue().splitlines()
    # 90 s: one line every 10 s (8 after the first whole interval)
    assert len(lines) == 9, lines
    assert lines[0].startswith('trainer batch 10  1.0 batch/s'), lines[0]
