"""BuiltinLogger: the ``drytorch`` logger of the standard library."""

from __future__ import annotations

import datetime
import logging
import pathlib
import re
from typing import Any

import pytest

from drytorch import Experiment
from drytorch.core import log_events
from drytorch.trackers import builtin_logging
from drytorch.trackers.logging import (
    BuiltinLogger,
    InfoLevels,
    get_verbosity,
    set_verbosity,
)

LINE = re.compile(r'^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] - (?P<message>.*)$')


def experiment(tmp_path: pathlib.Path, logger: BuiltinLogger) -> Any:
    exp: Experiment[Any] = Experiment(
        None, name='LogExp', par_dir=tmp_path / 'experiments'
    )
    exp.trackers.subscribe(logger)
    return exp


def messages(text: str) -> list[str]:
    """The messages of the log lines, checking each line's format."""
    out = []
    for line in text.splitlines():
        match = LINE.match(line)
        assert match, line
        out.append(match['message'])
    return out


def every_event() -> None:
    log_events.ModelRegistrationEvent(
        model_name='net',
        model_ts=datetime.datetime.now(),
        architecture_repr='Net()',
    )
    log_events.StartTrainingEvent(
        source_name='trainer', model_name='net', start_epoch=1, end_epoch=3
    )
    log_events.StartEpochEvent(
        source_name='trainer', model_name='net', epoch=1, end_epoch=3
    )
    log_events.MetricEvent(
        model_name='net',
        source_name='validation',
        epoch=1,
        metrics={'loss': 0.123456, 'acc': 0.9},
    )
    log_events.LearningRateEvent(
        model_name='net',
        source_name='trainer',
        epoch=1,
        base_lr=0.01,
        scheduler_name='Cosine',
    )
    log_events.SaveModelEvent(
        model_name='net', definition='checkpoint', location='ckpt/1', epoch=1
    )
    log_events.LoadModelEvent(
        model_name='net', definition='checkpoint', location='ckpt/1', epoch=1
    )
    log_events.TerminatedTrainingEvent(
        source_name='trainer', model_name='net', epoch=2, reason='patience'
    )
    log_events.EndTrainingEvent(source_name='trainer')
    log_events.StartTestEvent(source_name='test', model_name='net')


def test_every_event_at_the_most_verbose_level(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = experiment(tmp_path, BuiltinLogger(InfoLevels.internal))
    with exp.create_run() as run:
        every_event()
    captured = capsys.readouterr()
    assert captured.out == ''
    assert messages(captured.err) == [
        f'Experiment: LogExp - Starting run: {run.id}',
        'Registered model net.',
        'trainer: Training net (epochs 1 to 3).',
        '====> Epoch 1/3:',
        'net: validation (epoch 1) - loss=0.1235  acc=0.9',
        'net: trainer set the learning rate to 0.01 (Cosine) at epoch 1.',
        'net: Saved checkpoint at epoch 1 in ckpt/1',
        'net: Loaded checkpoint of epoch 1 from ckpt/1',
        'trainer: Training net terminated at epoch 2. Reason: patience',
        'trainer: Training ended.',
        'test: Testing net.',
        f'Experiment: LogExp - Stopping run: {run.id}',
    ]


@pytest.mark.parametrize(
    ('level', 'expected'),
    [
        (InfoLevels.epoch, 11),
        (InfoLevels.metrics, 10),
        (InfoLevels.model_state, 9),
        (InfoLevels.experiment, 6),
        (InfoLevels.training, 4),
        (InfoLevels.test, 1),
    ],
)
def test_verbosity_hides_less_important_messages(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    level: InfoLevels,
    expected: int,
) -> None:
    exp = experiment(tmp_path, BuiltinLogger(level))
    assert get_verbosity() == level
    with exp.create_run():
        every_event()
    lines = messages(capsys.readouterr().err)
    assert len(lines) == expected, lines
    if level > InfoLevels.experiment:
        assert not any(line.startswith('Experiment:') for line in lines)


def test_set_verbosity_applies_at_once(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = experiment(tmp_path, BuiltinLogger(InfoLevels.epoch))
    with exp.create_run() as run:
        set_verbosity(InfoLevels.test + 1)
        every_event()
        set_verbosity(InfoLevels.epoch)
    assert messages(capsys.readouterr().err) == [
        f'Experiment: LogExp - Starting run: {run.id}',
        f'Experiment: LogExp - Stopping run: {run.id}',
    ]


def test_to_stdout_and_propagate(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    handler = Collect()
    root.addHandler(handler)
    try:
        exp = experiment(
            tmp_path,
            BuiltinLogger(InfoLevels.epoch, to_stdout=True, propagate=True),
        )
        with exp.create_run() as run:
            pass
    finally:
        root.removeHandler(handler)
    captured = capsys.readouterr()
    assert captured.err == ''
    assert messages(captured.out)[0] == (
        f'Experiment: LogExp - Starting run: {run.id}'
    )
    assert [r.levelname for r in records] == ['EXPERIMENT', 'EXPERIMENT']


def test_no_propagation_by_default(tmp_path: pathlib.Path) -> None:
    BuiltinLogger()
    assert logging.getLogger('drytorch').propagate is False


def test_a_new_logger_replaces_the_handler_instead_of_adding_one(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    BuiltinLogger()
    logger = BuiltinLogger()
    exp = experiment(tmp_path, logger)
    with exp.create_run():
        pass
    assert len(messages(capsys.readouterr().err)) == 2


def test_level_names_are_registered() -> None:
    for level in InfoLevels:
        assert logging.getLevelName(level.value) == level.name.upper()
    assert InfoLevels.epoch < InfoLevels.metrics < InfoLevels.experiment
    assert InfoLevels.experiment < InfoLevels.training < InfoLevels.test
    assert logging.INFO <= InfoLevels.epoch < logging.WARNING


def test_tutorial_module_name_is_an_alias() -> None:
    assert builtin_logging.BuiltinLogger is BuiltinLogger
