"""W&B in offline mode: the run files are read back record by record."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

wandb = pytest.importorskip('wandb', reason='wandb is not installed')

from drytorch.trackers.wandb import Wandb, wandb_run_id  # noqa: E402
from tests.trackers._support import (  # noqa: E402
    SOURCES,
    emit_epochs,
    make_experiment,
    run_epochs,
    value,
    wandb_records,
)


def _quiet() -> Any:
    return wandb.Settings(console='off', x_disable_stats=True, silent=True)


def _attempts(run_dir: pathlib.Path) -> list[dict[str, Any]]:
    """Per offline run folder (one per attempt): what its file holds."""
    out = []
    folders = sorted(
        (run_dir / 'wandb').glob('offline-run-*'), key=lambda p: p.name
    )
    for folder in folders:
        [path] = folder.glob('run-*.wandb')
        found: dict[str, Any] = {'history': {}, 'preempting': False}
        for record in wandb_records(path):
            kind = record.WhichOneof('record_type')
            if kind == 'run':
                found['run'] = record.run
            elif kind == 'history':
                row = {
                    item.key or '/'.join(item.nested_key): json.loads(
                        item.value_json
                    )
                    for item in record.history.item
                }
                found['history'][record.history.step.num] = row
            elif kind == 'preempting':
                found['preempting'] = True
            elif kind == 'exit':
                found['exit_code'] = record.exit.exit_code
        out.append(found)
    return out


def test_offline_files_hold_values_at_their_steps(
    tmp_path: pathlib.Path,
) -> None:
    exp = make_experiment(tmp_path, Wandb(), config={'lr': 0.5, 'depth': 3})
    run_epochs(exp, range(1, 4))
    [attempt] = _attempts(tmp_path / 't' / 'runs' / 'r')
    run = attempt['run']
    assert run.run_id == wandb_run_id('t', 'r')
    assert run.project == 't'
    assert run.display_name == 'r'
    assert list(run.tags) == ['tag-a', 'tag-b']
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config['lr'] == 0.5
    assert config['depth'] == 3
    history = attempt['history']
    assert sorted(history) == [1, 2, 3]
    for step, row in history.items():
        assert row['m/epoch'] == step
        for source in SOURCES:
            assert row[f'm/{source}/loss'] == pytest.approx(
                value(step, source)
            )
    assert attempt['exit_code'] == 0
    assert not attempt['preempting']


def test_resumed_run_continues_the_same_run_and_steps(
    tmp_path: pathlib.Path,
) -> None:
    exp = make_experiment(tmp_path, Wandb(settings=_quiet()))
    run_epochs(exp, range(1, 4), preempt=True)
    run_epochs(exp, range(4, 6), resume=True, attempt=2)
    first, second = _attempts(tmp_path / 't' / 'runs' / 'r')
    assert first['run'].run_id == second['run'].run_id
    assert first['preempting'], 'a preempted run is marked as preempting'
    assert first['exit_code'] == 0
    assert second['exit_code'] == 0
    steps = list(first['history']) + list(second['history'])
    assert steps == [1, 2, 3, 4, 5], 'each epoch once, in order'
    for step, row in {**first['history'], **second['history']}.items():
        attempt = 1 if step < 4 else 2
        assert row['m/train/loss'] == pytest.approx(
            value(step, 'train', attempt)
        )


def test_failed_run_finishes_with_an_error_code(
    tmp_path: pathlib.Path,
) -> None:
    tracker = Wandb(settings=_quiet())
    exp = make_experiment(tmp_path, tracker)
    with pytest.raises(KeyError), exp.create_run('r'):
        emit_epochs([1])
        raise KeyError('boom')
    [attempt] = _attempts(tmp_path / 't' / 'runs' / 'r')
    assert attempt['exit_code'] == 1
    assert tracker.run is None


def test_steps_never_go_back_when_a_second_model_starts(
    tmp_path: pathlib.Path,
) -> None:
    exp = make_experiment(tmp_path, Wandb(settings=_quiet()))
    with exp.create_run('r'):
        emit_epochs(range(1, 4), model='a', sources=['train'])
        emit_epochs(range(1, 3), model='b', sources=['train'])
    [attempt] = _attempts(tmp_path / 't' / 'runs' / 'r')
    history = attempt['history']
    assert sorted(history) == [1, 2, 3, 4, 5]
    assert [history[s]['b/epoch'] for s in (4, 5)] == [1, 2]
    assert history[3]['a/epoch'] == 3
