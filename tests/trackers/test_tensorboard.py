"""TensorBoard: event files read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import urllib.error
import urllib.request

import pytest

pytest.importorskip('tensorboard', reason='tensorboard is not installed')

from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)

from drytorch.core import exceptions, log_events
from drytorch.core.tracking import TrackerFailedWarning
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


def test_given_folder_keeps_runs_apart(tmp_path: pathlib.Path) -> None:
    board = TensorBoard(par_dir=tmp_path / 'boards')
    exp = make_experiment(tmp_path, board)
    run_epochs(exp, [1], run_id='a')
    run_epochs(exp, [1, 2], run_id='b')
    root = tmp_path / 'boards' / 'tensorboard' / 't'
    assert len(_scalars(root / 'a', 'm/train/loss')) == 1
    assert len(_scalars(root / 'b', 'm/train/loss')) == 2


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
        url = board.url
        assert url is not None
        assert url.startswith('http://127.0.0.1:')
        with urllib.request.urlopen(url + 'data/logdir', timeout=10) as page:
            shown = json.loads(page.read())
        assert pathlib.Path(shown['logdir']) == exp.run.dir / 'tensorboard'
        server = board._server
    logger.removeHandler(caplog.handler)
    assert url in caplog.text
    assert server is not None
    assert server.poll() is not None, 'the server must stop with the run'
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
        shutil.rmtree(exp.run.dir / 'tensorboard')
        with pytest.warns(TrackerFailedWarning, match='TensorBoard'):
            emit_epochs([3])
        emit_epochs([4])
        assert list(exp.trackers.named_trackers) == ['CSVDumper']
    assert board._writer is None
    for source in SOURCES:
        epochs, metrics = csv.load_metrics('m')[source]
        assert epochs == [1, 2, 3, 4]
        assert metrics['loss'] == [value(e, source) for e in epochs]
