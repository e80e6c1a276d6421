"""TqdmLogger: an epoch bar and a bar over each loop's batches."""

from __future__ import annotations

import pathlib
import re
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
            num_batches=batches,
        )
        loop.update({'loss': 0.5}, batches // 2)
        loop.update({'loss': 0.25}, batches)
        loops.append(loop)
        log_events.EndEpochEvent(
            source_name='trainer', model_name='net', epoch=epoch
        )
    log_events.EndTrainingEvent(source_name='trainer')
    return loops


def final_states(text: str, desc: str) -> list[str]:
    """The last drawn state of each bar called ``desc``."""
    states = re.findall(rf'{re.escape(desc)}:\s+(\d+%\|[^\r\n]*)', text)
    return states


def test_bars_show_progress_and_metrics(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = experiment(tmp_path, TqdmLogger(leave=True))
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
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = experiment(tmp_path, TqdmLogger(leave=True))
    with exp.create_run():
        loop = log_events.IterateBatchEvent(
            source_name='trainer',
            batch_size=2,
            dataset_size=40,
            num_batches=20,
            start_batch=15,
        )
        loop.update({}, 15)
        log_events.EndTestEvent(source_name='trainer', model_name='net')
    states = final_states(capsys.readouterr().err, 'trainer')
    assert states and '15/20' in states[0]


def test_training_bar_can_be_disabled(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = experiment(tmp_path, TqdmLogger(enable_training_bar=False))
    with exp.create_run():
        loops = train(epochs=1, batches=4)
    err = capsys.readouterr().err
    assert loops[0].push_updates == []
    assert final_states(err, 'net epochs')
    assert not final_states(err, 'trainer')


def test_clean_up_closes_bars_of_an_interrupted_run(
    tmp_path: pathlib.Path,
) -> None:
    exp = experiment(tmp_path, TqdmLogger())
    with pytest.raises(RuntimeError), exp.create_run():
        log_events.StartTrainingEvent(
            source_name='trainer', model_name='net', start_epoch=1, end_epoch=5
        )
        log_events.IterateBatchEvent(
            source_name='trainer', batch_size=1, dataset_size=5, num_batches=5
        )
        assert len(tqdm.tqdm._instances) == 2
        raise RuntimeError('crash mid-epoch')
    assert not tqdm.tqdm._instances


def test_log_lines_are_not_mixed_into_a_live_bar(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = experiment(
        tmp_path, TqdmLogger(leave=True), BuiltinLogger(InfoLevels.epoch)
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
