"""The kernel in a real 2-process gloo group: one run id, one writer."""

from __future__ import annotations

import csv
import json
import pathlib
from typing import Any

import pytest
import yaml

from tests.helpers.multiprocess import LaunchResult, run_distributed

WORKER = pathlib.Path(__file__).with_name('_dist_worker.py')


def results(launch: LaunchResult) -> list[dict[str, Any]]:
    out = []
    for process in launch:
        lines = [
            line.removeprefix('RESULT:')
            for line in process.stdout.splitlines()
            if line.startswith('RESULT:')
        ]
        assert len(lines) == 1, process.describe()
        out.append(json.loads(lines[0]))
    return out


@pytest.fixture(scope='module')
def launch(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pathlib.Path, LaunchResult, list[dict[str, Any]]]:
    par_dir = tmp_path_factory.mktemp('dist') / 'experiments'
    cwd = par_dir.parent / 'cwd'
    cwd.mkdir()
    launched = run_distributed(
        2,
        script=WORKER,
        args=[par_dir],
        cwd=cwd,
        env={'DRYTORCH_INIT_MODE': 'standard'},
        timeout=90,
    ).check()
    return par_dir, launched, results(launched)


def test_both_ranks_are_in_one_group(launch: Any) -> None:
    _, _, (zero, one) = launch
    assert (zero['rank'], one['rank']) == (0, 1)
    assert zero['distributed'] and one['distributed']
    assert zero['world_size'] == one['world_size'] == 2


def test_same_run_id_on_both_ranks(launch: Any) -> None:
    _, _, (zero, one) = launch
    assert zero['run_id'] == one['run_id']
    assert zero['resumed_id'] == one['resumed_id'] == zero['run_id']
    assert zero['resumed'] and one['resumed']
    assert zero['attempt'] == one['attempt'] == 2


def test_only_rank_zero_has_live_trackers(launch: Any) -> None:
    _, _, (zero, one) = launch
    assert 'Recorder' in zero['live_trackers']
    assert 'CSVDumper' in zero['live_trackers']
    assert one['live_trackers'] == []
    # rank one still holds them, so get_current() answers there too
    assert one['all_trackers'] == zero['all_trackers']
    assert zero['csv_found'] and one['csv_found']


def test_events_reach_trackers_only_on_rank_zero(launch: Any) -> None:
    _, _, (zero, one) = launch
    assert zero['events_first_run'] == [
        'StartExperimentEvent',
        'ModelRegistrationEvent',
        'ActorRegistrationEvent',
        'IterateBatchEvent',
        'MetricEvent',
        'MetricEvent',
        'StopExperimentEvent',
    ]
    assert 'EndTrainingEvent' not in zero['events']
    assert one['events'] == []
    # on rank zero only: the progress bar's (TqdmLogger, immediate) push
    # callback, and the one forwarding progress to the background worker
    assert zero['tracker_callbacks'] == 2
    assert one['tracker_callbacks'] == 0
    assert zero['pushed'] == one['pushed'] == [4]


def test_only_rank_zero_logs(launch: Any) -> None:
    _, launched, _ = launch
    assert 'Experiment: DistExp - Starting run' in launched[0].stderr
    assert 'Experiment: DistExp - Resuming run' in launched[0].stderr
    assert 'Experiment: DistExp' not in launched[1].stderr
    assert launched[1].stdout.count('\n') == 1  # the RESULT line alone


def test_only_rank_zero_writes(launch: Any) -> None:
    par_dir, _, (zero, _) = launch
    run_dir = pathlib.Path('DistExp', 'runs', zero['run_id'])
    files = {p.relative_to(par_dir) for p in par_dir.rglob('*') if p.is_file()}
    assert files == {
        pathlib.Path('DistExp', 'registry.json'),
        pathlib.Path('DistExp', '.registry.json.lock'),
        run_dir / 'metadata' / 'config.yaml',
        run_dir / 'metadata' / 'attempts.yaml',
        run_dir / 'metadata' / 'linear' / 'architecture.yaml',
        run_dir / 'metadata' / 'linear' / 'trainer.yaml',
        run_dir / 'csv_metrics' / 'linear' / 'trainer.csv',
    }
    # a second writer would have doubled these
    registry = json.loads((par_dir / 'DistExp' / 'registry.json').read_text())
    assert [r['run_id'] for r in registry['runs']] == [zero['run_id']]
    assert registry['runs'][0]['attempts'] == 2
    assert registry['runs'][0]['world_size'] == 2
    assert registry['runs'][0]['status'] == 'completed'
    attempts = yaml.safe_load(
        (par_dir / run_dir / 'metadata' / 'attempts.yaml').read_text()
    )
    assert [a['attempt'] for a in attempts] == [1, 2]
    with (par_dir / run_dir / 'csv_metrics/linear/trainer.csv').open() as f:
        rows = list(csv.reader(f))
    assert rows == [
        ['model', 'source', 'epoch', 'loss'],
        ['linear', 'trainer', '1', '1.0'],
        ['linear', 'trainer', '2', '0.5'],
    ]


def test_a_refused_start_fails_on_every_rank(launch: Any) -> None:
    _, _, (zero, one) = launch
    assert zero['refused'] == 'RunAlreadyRecordedError'
    assert one['refused'] == 'DryTorchError'
    assert 'RunAlreadyRecordedError' in one['refused_message']
    assert "rank zero's log" in one['refused_message']
    assert not zero['active_after_refusal']
    assert not one['active_after_refusal']
