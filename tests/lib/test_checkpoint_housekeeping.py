"""Tests of checkpoint housekeeping: ``latest``, leftovers and retention."""

from __future__ import annotations

import json
import math
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from drytorch.core import exceptions
from drytorch.lib.checkpoints import (
    CheckpointUnreadableError,
    LocalCheckpoint,
    file_name,
)
from tests.helpers.multiprocess import clean_environ

Position = tuple[int, int]

NAN = float('nan')
INF = float('inf')


@pytest.fixture
def make(tmp_path: pathlib.Path) -> Callable[..., LocalCheckpoint]:
    """A factory of checkpoints of model 'net', all in the same folder."""

    def factory(**options: Any) -> LocalCheckpoint:
        store = LocalCheckpoint(tmp_path / 'checkpoints', **options)
        store.bind('net')
        return store

    return factory


@pytest.fixture
def store(make: Callable[..., LocalCheckpoint]) -> LocalCheckpoint:
    return make()


@pytest.fixture
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        yield


def files(store: LocalCheckpoint) -> list[str]:
    """The visible files of the folder: checkpoints, pointer, scores."""
    return sorted(
        p.name for p in store.directory.iterdir() if not p.name.startswith('.')
    )


def epochs(store: LocalCheckpoint) -> list[Position]:
    return [(c.epoch, c.batch) for c in store.available()]


def cut_short(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def point_at(store: LocalCheckpoint, text: str | bytes) -> None:
    pointer = store.directory / 'latest'
    if isinstance(text, bytes):
        pointer.write_bytes(text)
    else:
        pointer.write_text(text)


def scores_on_disk(store: LocalCheckpoint) -> dict[str, float]:
    path = store.directory / 'scores.json'
    if not path.exists():
        return {}
    return json.loads(path.read_text())['scores']


# ------------------------------------------------------------------ latest
def test_latest_is_what_loads_not_the_highest_epoch(
    store: LocalCheckpoint, no_warnings: None
) -> None:
    """After going back to epoch 1 and training on, epoch 2 is the present."""
    for epoch in (1, 2, 3, 4):
        store.save({'v': f'first {epoch}'}, epoch)
    store.save({'v': 'second 2'}, 2)
    assert store.load(-1)[0] == {'v': 'second 2'}
    assert store.find(-1).path.name == 'epoch_000002.pt'
    assert store.choose(-1).path.name == 'epoch_000002.pt'
    point_at(store, 'epoch_000001.pt\n')  # the authority, even by hand
    assert store.load(-1)[0] == {'v': 'first 1'}
    assert store.load(4)[0] == {'v': 'first 4'}  # an epoch ignores it


def test_the_abandoned_future_is_tried_last(store: LocalCheckpoint) -> None:
    for epoch in (1, 2, 3, 4):
        store.save({'epoch': epoch}, epoch)
    store.save({'epoch': 2, 'again': True}, 2)
    cut_short(store.directory / 'epoch_000002.pt')
    with pytest.warns(exceptions.DryTorchWarning, match=r'epoch_000002\.pt'):
        state, info = store.load(-1)
    assert (state, info.epoch) == ({'epoch': 1}, 1)  # not 4, of before
    for name in ('epoch_000001.pt', 'epoch_000002.pt'):
        cut_short(store.directory / name)
    with pytest.warns(exceptions.DryTorchWarning, match='cannot be read'):
        state, info = store.load(-1)
    assert (state, info.epoch) == ({'epoch': 4}, 4)  # better than nothing


def test_a_missing_pointer_falls_back_to_the_newest_quietly(
    store: LocalCheckpoint, no_warnings: None
) -> None:
    for epoch in (3, 1, 2):
        store.save({'epoch': epoch}, epoch)
    (store.directory / 'latest').unlink()
    assert store.load(-1)[0] == {'epoch': 3}
    assert store.find(-1).epoch == 3
    assert store.choose(-1).epoch == 3


@pytest.mark.parametrize(
    'text',
    [
        pytest.param('nonsense\n', id='garbage'),
        pytest.param('', id='empty'),
        pytest.param('../net/epoch_000001.pt', id='a-path'),
        pytest.param('epoch_000009.pt\n', id='a-missing-file'),
        pytest.param('x' * 500, id='long'),
        pytest.param(b'\xff\xfe\x00', id='not-text'),
    ],
)
def test_a_bad_pointer_warns_and_falls_back_to_the_newest(
    store: LocalCheckpoint, text: str | bytes
) -> None:
    for epoch in (1, 3, 2):
        store.save({'epoch': epoch}, epoch)
    point_at(store, text)
    for method in (store.find, store.choose):
        with pytest.warns(exceptions.DryTorchWarning, match='latest'):
            assert method(-1).epoch == 3
    with pytest.warns(exceptions.DryTorchWarning, match='latest'):
        assert store.load(-1)[0] == {'epoch': 3}


def test_a_pointer_at_an_unreadable_file_falls_back(
    store: LocalCheckpoint,
) -> None:
    for epoch in (1, 2, 3):
        store.save({'epoch': epoch}, epoch)
    point_at(store, 'epoch_000002.pt')
    cut_short(store.directory / 'epoch_000002.pt')
    with pytest.warns(exceptions.DryTorchWarning, match=r'epoch_000002\.pt'):
        assert store.load(-1)[0] == {'epoch': 1}  # at or before the pointer
    with pytest.warns(exceptions.DryTorchWarning, match=r'epoch_000002\.pt'):
        assert store.choose(-1).epoch == 1


def test_without_mid_epoch_a_mid_epoch_pointer_is_passed_over(
    store: LocalCheckpoint, no_warnings: None
) -> None:
    for epoch in (1, 2, 3):
        store.save({'at': f'end of {epoch}'}, epoch)
    store.save({'at': '5 into 2, again'}, 1, batch=5)
    assert store.load(-1)[0] == {'at': '5 into 2, again'}
    assert store.load(-1, mid_epoch=False)[0] == {'at': 'end of 1'}
    assert store.find(-1, mid_epoch=False).epoch == 1
    assert store.choose(-1, mid_epoch=False).epoch == 1


# ----------------------------------------------------------- choose, read
def test_choose_checks_without_unpickling_and_read_reports_the_path(
    store: LocalCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save({'epoch': 1}, 1)
    store.save({'epoch': 2}, 2)
    broken = store.directory / 'epoch_000002.pt'
    cut_short(broken)
    loaded: list[pathlib.Path] = []
    real_load = torch.load

    def counting_load(path: Any, *args: Any, **kwargs: Any) -> Any:
        loaded.append(pathlib.Path(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, 'load', counting_load)
    with pytest.warns(exceptions.DryTorchWarning, match=r'epoch_000002\.pt'):
        info = store.choose(-1)
    assert info.epoch == 1
    assert loaded == [broken]  # not a zip: only a full read can tell
    loaded.clear()
    assert store.read(info) == {'epoch': 1}
    assert store.read(str(info.path), map_location='cpu') == {'epoch': 1}
    with pytest.raises(CheckpointUnreadableError, match=r'epoch_000002\.pt'):
        store.read(broken)


@pytest.mark.parametrize(
    ('content', 'problem'),
    [
        pytest.param(None, 'FileNotFoundError', id='missing'),
        pytest.param(b'', 'EOFError', id='empty'),
        pytest.param(['a', 'list'], 'holds a list', id='not-a-dict'),
    ],
)
def test_read_names_the_file_and_the_problem(
    tmp_path: pathlib.Path,
    store: LocalCheckpoint,
    content: bytes | list[str] | None,
    problem: str,
) -> None:
    path = tmp_path / 'epoch_000007.pt'
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointUnreadableError) as caught:
        store.read(path)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)
    assert isinstance(caught.value, exceptions.DryTorchError)
    assert not isinstance(caught.value, exceptions.CheckpointNotFoundError)


def test_choose_reads_old_format_files_and_rejects_foreign_zips(
    store: LocalCheckpoint,
) -> None:
    store.directory.mkdir(parents=True)
    torch.save(
        {'epoch': 1},
        store.directory / 'epoch_000001.pt',
        _use_new_zipfile_serialization=False,
    )
    with zipfile.ZipFile(store.directory / 'epoch_000002.pt', 'w') as z:
        z.writestr('readme.txt', 'not a checkpoint')
    with pytest.warns(exceptions.DryTorchWarning, match='without a torch'):
        info = store.choose(-1)
    assert info.epoch == 1
    assert store.read(info) == {'epoch': 1}


def test_choose_with_nothing_to_choose(store: LocalCheckpoint) -> None:
    with pytest.raises(exceptions.CheckpointNotFoundError, match='any epoch'):
        store.choose(-1)
    store.save({'epoch': 1}, 1)
    with pytest.raises(exceptions.CheckpointNotFoundError, match='epoch 2'):
        store.choose(2)


# --------------------------------------------------------------- leftovers
@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has finished."""
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The id of a process that runs for the test."""
    child = subprocess.Popen(
        [sys.executable, '-c', 'import time; time.sleep(60)']
    )
    yield child.pid
    child.kill()
    child.wait()


def test_clean_leftovers_removes_only_what_dead_writes_left(
    store: LocalCheckpoint, dead_pid: int, live_pid: int
) -> None:
    folder = store.directory
    store.save({'epoch': 1}, 1)
    hour_ago = time.time() - 3601
    removed = {
        f'.epoch_000002.pt.{dead_pid}.tmp',
        f'.epoch_000002+000004.pt.{dead_pid}.tmp',
        f'.latest.{dead_pid}.tmp',
        f'.scores.json.{dead_pid}.tmp',
        f'.epoch_000003.pt.{os.getpid()}.tmp',  # an earlier process's id
        f'.epoch_000005.pt.{live_pid}.tmp',  # made old below: id reused
    }
    kept = {
        f'.epoch_000004.pt.{live_pid}.tmp',  # being written
        f'.notes.txt.{dead_pid}.tmp',  # not ours
        '.epoch_000006.pt.tmp',
        'epoch_000007.pt.tmp',
    }
    for name in removed | kept:
        (folder / name).write_bytes(b'partial')
    os.utime(folder / f'.epoch_000005.pt.{live_pid}.tmp', (hour_ago,) * 2)
    before = set(os.listdir(folder))
    result = store.clean_leftovers()
    assert result == sorted(folder / name for name in removed)
    assert set(os.listdir(folder)) == before - removed
    assert store.clean_leftovers() == []
    assert len(store.clean_leftovers(older_than=0)) == 1  # the live one
    with pytest.raises(ValueError, match=r'older_than .* got -1'):
        store.clean_leftovers(older_than=-1)


def test_clean_leftovers_of_a_folder_not_made_yet(
    store: LocalCheckpoint,
) -> None:
    assert store.clean_leftovers() == []
    assert not store.directory.exists()


def test_the_first_save_cleans_up(
    make: Callable[..., LocalCheckpoint], dead_pid: int
) -> None:
    store = make()
    store.directory.mkdir(parents=True)
    leftover = store.directory / f'.epoch_000001.pt.{dead_pid}.tmp'
    leftover.write_bytes(b'partial')
    store.save({'epoch': 1}, 1)
    assert not leftover.exists()
    leftover.write_bytes(b'partial')
    store.save({'epoch': 2}, 2)
    assert leftover.exists()  # once per instance and folder, at the start
    make().save({'epoch': 3}, 3)
    assert not leftover.exists()


_KILLED_WRITER = """
import io, os, signal, sys
import torch
from drytorch.lib.checkpoints import LocalCheckpoint

def half_then_die(obj, stream, *args, **kwargs):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    stream.write(buffer.getvalue()[:100])
    stream.flush()
    os.kill(os.getpid(), signal.SIGKILL)

real_save = torch.save
store = LocalCheckpoint(sys.argv[1])
store.bind('net')
store.save({'epoch': 1, 'weights': torch.zeros(1000)}, 1)
torch.save = half_then_die
store.save({'epoch': 2, 'weights': torch.ones(1000)}, 2)
"""


def test_what_a_killed_write_leaves_is_cleaned_at_the_next_start(
    tmp_path: pathlib.Path, no_warnings: None
) -> None:
    process = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(_KILLED_WRITER), str(tmp_path)],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    store = LocalCheckpoint(tmp_path)
    store.bind('net')
    (partial,) = store.directory.glob('.epoch_000002.pt.*.tmp')
    assert store.clean_leftovers() == [partial]
    assert sorted(os.listdir(store.directory)) == ['epoch_000001.pt', 'latest']
    assert store.load(-1)[0]['epoch'] == 1


# --------------------------------------------------------------- retention
def test_keep_last_two_of_five(
    make: Callable[..., LocalCheckpoint], no_warnings: None
) -> None:
    store = make(keep_last=2)
    for epoch in range(1, 6):
        store.save({'epoch': epoch}, epoch)
    assert files(store) == ['epoch_000004.pt', 'epoch_000005.pt', 'latest']


@pytest.mark.parametrize(
    ('best_is', 'best'),
    [('lower', 'epoch_000002.pt'), ('higher', 'epoch_000003.pt')],
)
def test_keep_best_keeps_the_best_scored(
    make: Callable[..., LocalCheckpoint], best_is: str, best: str
) -> None:
    store = make(keep_last=1, keep_best=1, best_is=best_is)
    for epoch, score in enumerate([0.5, 0.1, 0.9, 0.4, 0.3], start=1):
        store.save({'epoch': epoch}, epoch, score=score)
    assert files(store) == sorted(
        [best, 'epoch_000005.pt', 'latest', 'scores.json']
    )
    assert scores_on_disk(store) == {
        best: 0.1 if best_is == 'lower' else 0.9,
        'epoch_000005.pt': 0.3,
    }


@pytest.mark.parametrize('best_is', ['lower', 'higher'])
def test_scores_that_are_not_finite_never_count(
    make: Callable[..., LocalCheckpoint], best_is: str
) -> None:
    store = make(keep_last=0, keep_best=1, best_is=best_is)
    for epoch, score in enumerate([NAN, 0.5, INF, None, -INF, NAN], start=1):
        store.save({'epoch': epoch}, epoch, score=score)
    assert epochs(store) == [(2, 0), (6, 0)]
    assert scores_on_disk(store) == {'epoch_000002.pt': 0.5}


def test_a_restart_ranks_the_same_files_the_same_way(
    make: Callable[..., LocalCheckpoint],
) -> None:
    options = {'keep_last': 1, 'keep_best': 1}
    make(**options).save({'epoch': 1}, 1, score=0.1)
    make(**options).save({'epoch': 2}, 2, score=0.5)
    store = make(**options)
    store.save({'epoch': 3}, 3, score=0.4)
    store.save({'epoch': 4}, 4, score=0.05)
    make(**options).save({'epoch': 5}, 5, score=0.3)
    assert epochs(store) == [(4, 0), (5, 0)]
    assert scores_on_disk(store) == {
        'epoch_000004.pt': 0.05,
        'epoch_000005.pt': 0.3,
    }


def test_mid_epoch_checkpoints_go_once_a_newer_one_exists(
    store: LocalCheckpoint, no_warnings: None
) -> None:
    store.save({}, 1)
    store.save({}, 1, batch=3)
    assert epochs(store) == [(1, 0), (1, 3)]
    store.save({}, 1, batch=6)
    assert epochs(store) == [(1, 0), (1, 6)]
    store.save({}, 2)
    assert epochs(store) == [(1, 0), (2, 0)]  # all end-of-epoch ones stay


def test_latest_and_the_newest_are_never_removed(
    make: Callable[..., LocalCheckpoint],
) -> None:
    store = make(keep_last=0)
    for epoch in (1, 2, 3):
        store.save({'epoch': epoch}, epoch)
    assert epochs(store) == [(3, 0)]
    store.save({'epoch': 1}, 1)
    assert epochs(store) == [(1, 0), (3, 0)]
    store.save({'epoch': 2}, 2, batch=2)
    assert epochs(store) == [(2, 2), (3, 0)]
    assert store.load(-1)[0] == {'epoch': 2}


def test_a_score_belongs_to_the_file_it_was_saved_with(
    make: Callable[..., LocalCheckpoint],
) -> None:
    store = make(keep_best=1)
    store.save({}, 1, score=0.5)
    store.save({}, 2, score=0.1)
    store.save({}, 2, batch=4, score=0.01)  # part of an epoch: no rank
    assert scores_on_disk(store) == {
        'epoch_000001.pt': 0.5,
        'epoch_000002.pt': 0.1,
    }
    store.save({}, 2)  # rewritten without a score
    assert scores_on_disk(store) == {'epoch_000001.pt': 0.5}


def test_no_scores_no_index(make: Callable[..., LocalCheckpoint]) -> None:
    store = make(keep_last=1, keep_best=2)
    for epoch in (1, 2, 3):
        store.save({}, epoch)
    assert files(store) == ['epoch_000003.pt', 'latest']


@pytest.mark.parametrize('keep_best', [0, 1])
def test_an_unreadable_index_warns_and_never_costs_a_best(
    make: Callable[..., LocalCheckpoint], keep_best: int
) -> None:
    store = make(keep_last=1, keep_best=keep_best)
    store.save({}, 1, score=0.1)
    store.save({}, 2, score=0.2)
    index = store.directory / 'scores.json'
    index.write_text('{"scores": {"epoch_000001.pt": 0.1,')
    expected = 'no checkpoint is removed' if keep_best else 'no score is'
    with pytest.warns(exceptions.DryTorchWarning, match=expected):
        store.save({}, 3, score=0.3)
    assert index.read_text() == '{"scores": {"epoch_000001.pt": 0.1,'
    if keep_best:
        assert epochs(store) == [(1, 0), (2, 0), (3, 0)]
    else:
        assert epochs(store) == [(3, 0)]


def test_a_file_that_cannot_be_removed_is_reported_and_kept_ranked(
    make: Callable[..., LocalCheckpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make(keep_last=1)
    store.save({}, 1, score=0.1)
    real_unlink = pathlib.Path.unlink

    def stubborn(self: pathlib.Path, missing_ok: bool = False) -> None:
        if self.name == 'epoch_000001.pt':
            raise PermissionError(13, 'Permission denied', str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(pathlib.Path, 'unlink', stubborn)
    with pytest.warns(exceptions.DryTorchWarning, match='Permission denied'):
        location = store.save({}, 2, score=0.2)
    assert location == str(store.directory / 'epoch_000002.pt')
    assert epochs(store) == [(1, 0), (2, 0)]
    assert set(scores_on_disk(store)) == {'epoch_000001.pt', 'epoch_000002.pt'}


def test_retention_touches_only_checkpoints(
    make: Callable[..., LocalCheckpoint],
) -> None:
    store = make(keep_last=1)
    store.save({}, 1)
    (store.directory / 'notes.txt').write_text('mine')
    (store.directory / 'weights').mkdir()
    (store.directory / 'weights' / 'epoch_000001.pt').write_bytes(b'w')
    (store.directory / 'epoch_1.pt').write_bytes(b'not our name')
    store.save({}, 2)
    assert files(store) == [
        'epoch_000002.pt',
        'epoch_1.pt',
        'latest',
        'notes.txt',
        'weights',
    ]
    assert (store.directory / 'weights' / 'epoch_000001.pt').exists()


def test_a_bad_score_fails_before_anything_is_written(
    store: LocalCheckpoint,
) -> None:
    with pytest.raises(TypeError, match=r"score must be a number.*'low'"):
        store.save({}, 1, score='low')  # type: ignore[arg-type]
    assert not store.directory.exists() or not os.listdir(store.directory)
    store.save({}, 1, score=torch.tensor(0.5))  # type: ignore[arg-type]
    assert scores_on_disk(store) == {'epoch_000001.pt': 0.5}


@pytest.mark.parametrize(
    ('options', 'message'),
    [
        (
            {'keep_last': -1},
            r'keep_last must be None \(keep every .* got -1\.',
        ),
        ({'keep_last': 1.5}, r'keep_last must be .* got 1\.5\.'),
        ({'keep_last': True}, r'keep_last must be .* got True\.'),
        ({'keep_last': '2'}, r"keep_last must be .* got '2'\."),
        ({'keep_best': -2}, r'keep_best must be a whole number .* got -2\.'),
        ({'keep_best': None}, r'keep_best must be a whole number .* got None'),
        ({'best_is': 'min'}, r"best_is must be 'lower' .* got 'min'\."),
        ({'monitor': ''}, r"monitor must be the name .* got ''\."),
    ],
)
def test_bad_options_fail_at_construction(
    tmp_path: pathlib.Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LocalCheckpoint(tmp_path, **options)


def test_options_are_kept_for_the_trainer(tmp_path: pathlib.Path) -> None:
    store = LocalCheckpoint(
        tmp_path, keep_last=3, keep_best=1, best_is='higher', monitor='Acc'
    )
    assert (store.keep_last, store.keep_best) == (3, 1)
    assert (store.best_is, store.monitor) == ('higher', 'Acc')
    default = LocalCheckpoint(tmp_path)
    assert (default.keep_last, default.keep_best) == (None, 0)
    assert (default.best_is, default.monitor) == ('lower', None)


# ------------------------------------------ retention against an oracle
def history(
    seed: str, length: int = 14
) -> list[tuple[Position, float | None]]:
    """Saves as a trainer makes them: mostly on, some mid-epoch, rewinds."""
    rng = random.Random(seed)
    saves: list[tuple[Position, float | None]] = []
    epoch = 0
    for _ in range(length):
        roll = rng.random()
        if roll < 0.2:
            saves.append(((epoch, rng.randint(1, 9)), rng.choice([None, 0.3])))
            continue
        if roll < 0.3 and epoch > 1:
            epoch = rng.randint(0, epoch - 1)  # load_checkpoint(earlier)
        epoch += 1
        score = rng.choice([0.1, 0.2, 0.3, 0.4, 0.2, None, NAN, INF])
        saves.append(((epoch, 0), score))
    return saves


def expected_after(
    present: dict[Position, float | None],
    latest: Position,
    keep_last: int | None,
    keep_best: int,
    best_is: str,
) -> dict[Position, float | None]:
    """The retention rule, by counting what beats each checkpoint."""

    def beats(a: Position, b: Position) -> bool:  # a ranks above b
        sa, sb = present[a], present[b]
        assert sa is not None and sb is not None
        if sa == sb:
            return a > b
        return sa < sb if best_is == 'lower' else sa > sb

    ends = [p for p in present if p[1] == 0]
    scored = [p for p in ends if present[p] is not None]
    kept = {latest, max(present)}
    for p in ends:
        newer = sum(1 for q in ends if q > p)
        if keep_last is None or newer < keep_last:
            kept.add(p)
    for p in scored:
        if sum(1 for q in scored if beats(q, p)) < keep_best:
            kept.add(p)
    return {p: s for p, s in present.items() if p in kept}


@pytest.mark.parametrize('restart', [False, True], ids=['one', 'restarts'])
@pytest.mark.parametrize('best_is', ['lower', 'higher'])
@pytest.mark.parametrize('keep_best', [0, 1, 2])
@pytest.mark.parametrize('keep_last', [None, 0, 1, 3])
def test_the_kept_set_is_what_the_rule_says(
    make: Callable[..., LocalCheckpoint],
    keep_last: int | None,
    keep_best: int,
    best_is: str,
    restart: bool,
) -> None:
    options = {
        'keep_last': keep_last,
        'keep_best': keep_best,
        'best_is': best_is,
    }
    seed = repr((keep_last, keep_best, best_is))  # str: same every run
    store = make(**options)
    present: dict[Position, float | None] = {}
    for step, (position, score) in enumerate(history(seed)):
        if restart:
            store = make(**options)
        store.save({'step': step}, *position, score=score)
        finite = score is not None and math.isfinite(score)
        present[position] = score if finite and not position[1] else None
        present = expected_after(
            present, position, keep_last, keep_best, best_is
        )
        assert epochs(store) == sorted(present), f'after save {step}'
        assert scores_on_disk(store) == {
            file_name(*p): s for p, s in present.items() if s is not None
        }
        assert store.load(-1)[0] == {'step': step}


def test_a_kill_between_the_rename_and_the_pointer_loads_the_new_file(
    tmp_path: pathlib.Path,
) -> None:
    """The newest complete file wins over a pointer that did not move yet."""
    store = LocalCheckpoint(tmp_path)
    store.bind('net')
    store.save({'epoch': 1}, 1)
    store.save({'epoch': 2}, 2)
    latest = store.directory / 'latest'
    before = latest.read_text()
    time.sleep(0.01)
    store.save({'epoch': 3}, 3)
    latest.write_text(before)  # as if killed before the pointer moved
    os.utime(latest, (0, 0))
    assert store.load(-1)[0] == {'epoch': 3}
