"""W&B in offline mode: the run files are read back record by record."""

from __future__ import annotations

import json
import pathlib
import time
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
from tests.trackers._threads import notify_on_thread, run_events  # noqa: E402


def _quiet() -> Any:
    return wandb.Settings(console='off', x_disable_stats=True, silent=True)


def _finished_records(path: pathlib.Path, timeout: float = 20) -> list[Any]:
    """The records of a finished run's file, once its exit record is in.

    ``run.finish()`` can return before W&B's writer (another process) has
    put the records on disk, so right after a run the file may hold no
    more than its header.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        kinds = {record.WhichOneof('record_type') for record in records}
        if 'exit' in kinds or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def _attempts(run_dir: pathlib.Path) -> list[dict[str, Any]]:
    """Per offline run folder (one per attempt): what its file holds."""
    out = []
    folders = sorted(
        (run_dir / 'wandb').glob('offline-run-*'), key=lambda p: p.name
    )
    for folder in folders:
        [path] = folder.glob('run-*.wandb')
        found: dict[str, Any] = {'history': {}, 'preempting': False}
        for record in _finished_records(path):
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


# -- the user's settings win; the library fills only what is left unset --

_USER_OPTIONS = {
    'project': 'user-project',
    'run_name': 'user-name',
    'run_group': 'user-group',
    'run_tags': ('user-tag',),
}


def _record(attempt: dict[str, Any]) -> dict[str, Any]:
    """The options a run record holds, by their Settings names."""
    run = attempt['run']
    return {
        'project': run.project,
        'run_id': run.run_id,
        'run_name': run.display_name,
        'run_group': run.run_group,
        'run_tags': tuple(run.tags),
    }


_LIBRARY = {
    'project': 't',
    'run_id': wandb_run_id('t', 'r'),
    'run_name': 'r',
    'run_group': 't',
    'run_tags': ('tag-a', 'tag-b'),
}


@pytest.mark.parametrize('option', sorted(_USER_OPTIONS))
def test_an_option_the_user_sets_reaches_wandb_init(
    tmp_path: pathlib.Path, option: str
) -> None:
    settings = _quiet()
    setattr(settings, option, _USER_OPTIONS[option])
    exp = make_experiment(tmp_path, Wandb(settings=settings))
    run_epochs(exp, [1])
    [attempt] = _attempts(tmp_path / 't' / 'runs' / 'r')
    assert _record(attempt) == {**_LIBRARY, option: _USER_OPTIONS[option]}


def test_root_dir_the_user_sets_holds_the_files(
    tmp_path: pathlib.Path,
) -> None:
    root = tmp_path / 'user-root'
    settings = _quiet()
    settings.root_dir = str(root)
    exp = make_experiment(tmp_path, Wandb(settings=settings))
    run_epochs(exp, [1])
    [attempt] = _attempts(root)
    assert _record(attempt) == _LIBRARY
    assert not (tmp_path / 't' / 'runs' / 'r' / 'wandb').exists()


def test_library_defaults_apply_to_what_is_unset_or_none(
    tmp_path: pathlib.Path,
) -> None:
    # None is no choice, as for wandb.init's own keyword arguments
    settings = wandb.Settings(
        console='off', silent=True, project=None, run_name=None
    )
    exp = make_experiment(tmp_path, Wandb(settings=settings))
    run_epochs(exp, [1])
    [attempt] = _attempts(tmp_path / 't' / 'runs' / 'r')
    assert _record(attempt) == _LIBRARY


def test_environment_variables_count_as_the_users(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('WANDB_PROJECT', 'env-project')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path / 'env-root'))
    exp = make_experiment(tmp_path, Wandb(settings=_quiet()))
    run_epochs(exp, [1])
    [attempt] = _attempts(tmp_path / 'env-root')
    assert _record(attempt) == {**_LIBRARY, 'project': 'env-project'}


def test_settings_as_a_mapping_are_checked_at_construction(
    tmp_path: pathlib.Path,
) -> None:
    with pytest.raises(ValueError, match='bogus'):
        Wandb(settings={'bogus': 1})
    exp = make_experiment(
        tmp_path, Wandb(settings={'console': 'off', 'run_name': 'mapped'})
    )
    run_epochs(exp, [1])
    [attempt] = _attempts(tmp_path / 't' / 'runs' / 'r')
    assert _record(attempt)['run_name'] == 'mapped'


def test_par_dir_and_root_dir_together_are_refused(
    tmp_path: pathlib.Path,
) -> None:
    settings = _quiet()
    settings.root_dir = str(tmp_path / 'a')
    with pytest.raises(ValueError, match='give only one of them'):
        Wandb(par_dir=tmp_path / 'b', settings=settings)


def test_users_settings_object_is_left_as_given(
    tmp_path: pathlib.Path,
) -> None:
    settings = _quiet()
    settings.run_name = 'mine'
    before = set(settings.model_fields_set)
    exp = make_experiment(tmp_path, Wandb(settings=settings))
    run_epochs(exp, [1], run_id='first')
    run_epochs(exp, [1], run_id='second')
    assert settings.model_fields_set == before
    assert settings.run_id is None
    ids = {
        _record(a)['run_id']
        for run in ('first', 'second')
        for a in _attempts(tmp_path / 't' / 'runs' / run)
    }
    assert ids == {wandb_run_id('t', 'first'), wandb_run_id('t', 'second')}


def test_resume_with_user_options_continues_the_same_run(
    tmp_path: pathlib.Path,
) -> None:
    root = tmp_path / 'user-root'
    settings = wandb.Settings(
        console='off',
        silent=True,
        x_disable_stats=True,
        root_dir=str(root),
        **_USER_OPTIONS,
    )
    exp = make_experiment(tmp_path, Wandb(settings=settings))
    run_epochs(exp, range(1, 4), preempt=True)
    run_epochs(exp, range(4, 6), resume=True, attempt=2)
    first, second = _attempts(root)
    expected = {**_USER_OPTIONS, 'run_id': wandb_run_id('t', 'r')}
    assert _record(first) == _record(second) == expected
    assert first['preempting']
    steps = list(first['history']) + list(second['history'])
    assert steps == [1, 2, 3, 4, 5]


# -- the trackers' worker calls wandb.init off the main thread --


def test_init_log_and_finish_from_another_thread(
    tmp_path: pathlib.Path,
) -> None:
    tracker = Wandb(settings=_quiet())
    notify_on_thread(tracker, run_events(tmp_path, range(1, 3)))
    assert tracker.run is None
    [attempt] = _attempts(tmp_path / 't' / 'runs' / 'r')
    assert _record(attempt) == _LIBRARY
    assert sorted(attempt['history']) == [1, 2]
    assert attempt['history'][2]['m/val/loss'] == pytest.approx(
        value(2, 'val')
    )
    assert attempt['exit_code'] == 0


def test_after_a_flush_the_wandb_run_has_the_library_options(
    tmp_path: pathlib.Path,
) -> None:
    tracker = Wandb(settings=_quiet())
    exp = make_experiment(tmp_path, tracker)
    with exp.create_run('r'):
        emit_epochs([1, 2])
        exp.trackers.flush()
        run = tracker.run
        assert run is not None
        assert run.id == wandb_run_id('t', 'r')
        assert run.name == 'r'
