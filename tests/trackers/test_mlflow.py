"""MLflow against a real tracking server, read back through MlflowClient.

The server is the ``mlflow_url`` fixture of ``tests/conftest.py``:
``$DRYTORCH_TEST_MLFLOW_URL`` when set (``.ci/run`` starts one with
``slurm/mlflow/up.sh``), else one started on 127.0.0.1 with a SQLite
backend.  Without mlflow the tests are skipped, or fail under
``CI_REQUIRE_SERVICES=1``.  Each test uses an MLflow experiment of its own,
so that they share one server without reading each other's runs.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import subprocess
import sys
import uuid
import warnings
from typing import Any, NoReturn

import pytest

from drytorch.core import exceptions, log_events
from drytorch.trackers import mlflow as tracker_module
from drytorch.trackers.mlflow import (
    RUN_KEY_TAG,
    MLflow,
    MLflowNotRunningError,
    MLflowURIError,
    mlflow_run_key,
)
from tests.helpers.mlflow_server import full_mlflow
from tests.trackers._support import (
    SOURCES,
    emit_epochs,
    free_port,
    make_experiment,
    preempted_and_resumed,
    run_epochs,
    value,
)
from tests.trackers._threads import notify_on_thread, run_events

_REPO = pathlib.Path(__file__).resolve().parents[2]


def _absent(reason: str) -> NoReturn:
    """Skip, or fail when CI_REQUIRE_SERVICES=1 (as tests/conftest.py)."""
    if os.environ.get('CI_REQUIRE_SERVICES') == '1':
        pytest.fail(f'{reason} (CI_REQUIRE_SERVICES=1)', pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def experiment() -> str:
    """A name of an MLflow experiment that no other test uses."""
    return f'drytorch-test-{uuid.uuid4().hex[:12]}'


@pytest.fixture
def sqlite_uri(tmp_path: pathlib.Path) -> str:
    """A local SQLite store, no server."""
    if not tracker_module.is_available() or not full_mlflow():
        _absent('a sqlite: store needs the full mlflow (pip install mlflow)')
    return f'sqlite:///{tmp_path / "store" / "mlflow.db"}'


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str, experiment: str) -> list[Any]:
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f'no MLflow experiment {experiment!r}'
    return client.search_runs([found.experiment_id])


def _only_run(uri: str, experiment: str) -> Any:
    runs = _runs(uri, experiment)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _history(uri: str, run_id: str, key: str) -> dict[int, float]:
    """Step to value; every step must appear once."""
    points = _client(uri).get_metric_history(run_id, key)
    steps = [point.step for point in points]
    assert len(steps) == len(set(steps)), f'{key}: steps twice: {steps}'
    return {point.step: point.value for point in points}


def _architecture(uri: str, run_id: str, model: str, dst: pathlib.Path) -> str:
    path = _client(uri).download_artifacts(
        run_id, f'architecture/{model}.txt', str(dst)
    )
    return pathlib.Path(path).read_text()


def _register_model(name: str = 'm') -> None:
    log_events.ModelRegistrationEvent(
        model_name=name,
        model_ts=datetime.datetime.now(),
        architecture_repr='Sequential(\n  (0): Linear(2, 1)\n)',
    )


def test_a_run_holds_params_tags_metrics_and_architecture(
    mlflow_url: str, experiment: str, tmp_path: pathlib.Path
) -> None:
    config = {'lr': 0.5, 'optim': {'name': 'adam', 'betas': [0.9, 0.99]}}
    tracker = MLflow(mlflow_url, experiment=experiment)
    exp = make_experiment(tmp_path, tracker, config=config)
    with exp.create_run('r'):
        _register_model()
        emit_epochs(range(1, 4))
    run = _only_run(mlflow_url, experiment)
    assert run.info.status == 'FINISHED'
    assert run.info.run_name == 'r'
    assert run.data.params == {
        'lr': '0.5',
        'optim.name': 'adam',
        'optim.betas': '[0.9, 0.99]',
    }
    tags = run.data.tags
    assert tags['tag-a'] == tags['tag-b'] == ''
    assert tags['drytorch.experiment'] == 't'
    assert tags['drytorch.run_id'] == 'r'
    assert tags[RUN_KEY_TAG] == mlflow_run_key('t', 'r')
    for source in SOURCES:
        loss = _history(mlflow_url, run.info.run_id, f'm/{source}/loss')
        assert loss == pytest.approx({e: value(e, source) for e in (1, 2, 3)})
        acc = _history(mlflow_url, run.info.run_id, f'm/{source}/acc')
        assert acc == pytest.approx({e: e / 100 for e in (1, 2, 3)})
    text = _architecture(mlflow_url, run.info.run_id, 'm', tmp_path)
    assert text.startswith('Sequential(')
    assert tracker.run_id is None


def test_preempted_run_is_killed_then_resumed_with_each_step_once(
    mlflow_url: str, experiment: str, tmp_path: pathlib.Path
) -> None:
    exp = make_experiment(tmp_path, MLflow(mlflow_url, experiment=experiment))
    run_epochs(exp, range(1, 4), preempt=True)
    first = _only_run(mlflow_url, experiment)
    assert first.info.status == 'KILLED'
    # resumed from the checkpoint of epoch 1: epochs 2 and 3 come again
    with warnings.catch_warnings():
        warnings.simplefilter('error', exceptions.DryTorchWarning)
        run_epochs(exp, range(2, 5), resume=True, attempt=2)
    run = _only_run(mlflow_url, experiment)
    assert run.info.run_id == first.info.run_id
    assert run.info.status == 'FINISHED'
    assert run.data.tags['drytorch.attempt'] == '2'
    for source in SOURCES:
        loss = _history(mlflow_url, run.info.run_id, f'm/{source}/loss')
        # the replayed epochs keep the first attempt's values
        assert loss == pytest.approx(
            {e: value(e, source, 1 if e <= 3 else 2) for e in (1, 2, 3, 4)}
        )


def test_failed_run_is_marked_failed(
    mlflow_url: str, experiment: str, tmp_path: pathlib.Path
) -> None:
    tracker = MLflow(mlflow_url, experiment=experiment)
    exp = make_experiment(tmp_path, tracker)
    with pytest.raises(KeyError), exp.create_run('r'):
        emit_epochs([1])
        raise KeyError('boom')
    run = _only_run(mlflow_url, experiment)
    assert run.info.status == 'FAILED'
    assert _history(mlflow_url, run.info.run_id, 'm/train/loss') == {1: 1.0}
    assert tracker.run_id is None


def test_a_running_run_is_readable_after_a_flush(
    mlflow_url: str, experiment: str, tmp_path: pathlib.Path
) -> None:
    exp = make_experiment(tmp_path, MLflow(mlflow_url, experiment=experiment))
    with exp.create_run('r'):
        emit_epochs(range(1, 3))
        assert exp.trackers.flush()
        run = _only_run(mlflow_url, experiment)
        assert run.info.status == 'RUNNING'
        assert sorted(_history(mlflow_url, run.info.run_id, 'm/val/loss')) == [
            1,
            2,
        ]


def test_an_epoch_logged_twice_in_one_attempt_is_kept_once_and_warned(
    mlflow_url: str, experiment: str, tmp_path: pathlib.Path
) -> None:
    exp = make_experiment(tmp_path, MLflow(mlflow_url, experiment=experiment))
    with (
        pytest.warns(exceptions.DryTorchWarning, match='logged epoch 2 again'),
        exp.create_run('r'),
    ):
        emit_epochs(range(1, 4))
        emit_epochs(range(2, 5), attempt=2)  # trained again from epoch 1
    run = _only_run(mlflow_url, experiment)
    loss = _history(mlflow_url, run.info.run_id, 'm/train/loss')
    assert loss == pytest.approx(
        {e: value(e, 'train', 1 if e <= 3 else 2) for e in (1, 2, 3, 4)}
    )


def test_a_changed_configuration_on_resume_keeps_the_first_params(
    mlflow_url: str, experiment: str, tmp_path: pathlib.Path
) -> None:
    tracker = MLflow(mlflow_url, experiment=experiment)
    run_epochs(
        make_experiment(tmp_path, tracker, config={'lr': 0.5}),
        [1],
        preempt=True,
    )
    resumed = make_experiment(tmp_path, tracker, config={'lr': 0.1, 'wd': 0})
    with pytest.warns(exceptions.DryTorchWarning, match=r'changed.*\blr\b'):
        run_epochs(resumed, [2], resume=True, attempt=2)
    run = _only_run(mlflow_url, experiment)
    assert run.data.params == {'lr': '0.5', 'wd': '0'}
    assert run.info.status == 'FINISHED'


def test_notified_from_a_thread_that_did_not_build_it(
    mlflow_url: str, tmp_path: pathlib.Path
) -> None:
    name = f'drytorch-test-{uuid.uuid4().hex[:12]}'
    tracker = MLflow(mlflow_url)  # the experiment's own name
    notify_on_thread(tracker, run_events(tmp_path, range(1, 3), name))
    run = _only_run(mlflow_url, name)
    assert run.info.status == 'FINISHED'
    assert run.data.params == {'lr': '0.5'}
    loss = _history(mlflow_url, run.info.run_id, 'm/train/loss')
    assert loss == pytest.approx({1: value(1, 'train'), 2: value(2, 'train')})


def test_a_local_sqlite_store_needs_no_server(
    sqlite_uri: str, tmp_path: pathlib.Path
) -> None:
    exp = make_experiment(tmp_path, MLflow(sqlite_uri), name='local')
    with exp.create_run('r'):
        _register_model()
        emit_epochs([1])
    preempted_and_resumed(exp, run_id='q')
    by_name = {r.info.run_name: r for r in _runs(sqlite_uri, 'local')}
    assert sorted(by_name) == ['q', 'r'], 'one MLflow run per drytorch run'
    assert by_name['r'].info.status == 'FINISHED'
    assert by_name['q'].info.status == 'FINISHED'
    history = _history(sqlite_uri, by_name['q'].info.run_id, 'm/val/loss')
    assert history == pytest.approx(
        {e: value(e, 'val', 1 if e <= 3 else 2) for e in (1, 2, 3, 4)}
    )
    # artifacts beside the database, not in the working folder's ./mlruns
    store = tmp_path / 'store'
    assert list(store.glob('mlartifacts/*/artifacts/architecture/m.txt'))
    assert not pathlib.Path('mlruns').exists()


def test_a_bad_scheme_fails_at_construction() -> None:
    if not tracker_module.is_available():
        _absent('mlflow is not installed')
    with pytest.raises(MLflowURIError, match=r"no store for the scheme 'htp'"):
        MLflow('htp://127.0.0.1:5000')
    with pytest.raises(ValueError, match=r'http\(s\)://host:port'):
        MLflow('ftp://example.invalid/runs')


def test_no_server_fails_at_construction() -> None:
    if not tracker_module.is_available():
        _absent('mlflow is not installed')
    url = f'http://127.0.0.1:{free_port()}'
    with pytest.raises(
        MLflowNotRunningError, match=f'No MLflow server .*{url}'
    ):
        MLflow(url)


def test_a_file_store_that_mlflow_refuses_says_how_to_proceed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    if not tracker_module.is_available():
        _absent('mlflow is not installed')
    import mlflow.environment_variables as variables

    if not hasattr(variables, 'MLFLOW_ALLOW_FILE_STORE'):
        pytest.skip('this mlflow still accepts file: stores')
    monkeypatch.delenv('MLFLOW_ALLOW_FILE_STORE', raising=False)
    with pytest.raises(MLflowURIError, match='MLFLOW_ALLOW_FILE_STORE'):
        MLflow((tmp_path / 'mlruns').as_uri())


def test_a_database_store_without_full_mlflow_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    if not tracker_module.is_available():
        _absent('mlflow is not installed')
    # what mlflow-skinny lacks; a new URI, so that no cached store answers
    monkeypatch.setitem(
        sys.modules, 'mlflow.store.tracking.sqlalchemy_store', None
    )
    with pytest.raises(MLflowURIError, match=r'`pip install mlflow`'):
        MLflow(f'sqlite:///{tmp_path / "skinny.db"}')


@pytest.mark.parametrize('name', ['', '   ', 'x' * 501])
def test_a_bad_experiment_name_fails_at_construction(name: str) -> None:
    if not tracker_module.is_available():
        _absent('mlflow is not installed')
    with pytest.raises(ValueError, match='experiment'):
        MLflow('http://127.0.0.1:1', experiment=name)


def test_a_deleted_experiment_fails_at_construction(
    mlflow_url: str, experiment: str
) -> None:
    client = _client(mlflow_url)
    client.delete_experiment(client.create_experiment(experiment))
    with pytest.raises(ValueError, match=rf"{experiment}' is deleted"):
        MLflow(mlflow_url, experiment=experiment)


def test_missing_mlflow_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, 'mlflow', None)  # import fails
    assert tracker_module.is_available() is False
    with pytest.raises(
        exceptions.MissingDependencyError,
        match=r"pip install 'drytorch\[mlflow\]'",
    ):
        MLflow()


def test_importing_the_tracker_imports_no_mlflow() -> None:
    code = (
        'import sys, drytorch.trackers.mlflow\n'
        "assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(_REPO)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_names_that_clean_to_one_stay_apart(
    mlflow_url: str, experiment: str, tmp_path: pathlib.Path
) -> None:
    config = {'a:b': 1, 'a_b': 2}
    tracker = MLflow(mlflow_url, experiment=experiment)
    exp = make_experiment(tmp_path, tracker, config=config)
    with (
        pytest.warns(exceptions.DryTorchWarning, match="'a_b'") as record,
        exp.create_run('r'),
    ):
        for epoch in (1, 2):
            log_events.MetricEvent(
                model_name='m',
                source_name='val',
                epoch=epoch,
                metrics={'acc:top1': 0.5 + epoch, 'acc_top1': 0.1 * epoch},
            )
    assert any('acc_top1' in str(w.message) for w in record)
    run = _only_run(mlflow_url, experiment)
    params = run.data.params
    assert sorted(params.values()) == ['1', '2']
    assert params['a_b'] == '1'  # the first comer keeps the plain name
    metrics = sorted(run.data.metrics)
    assert len(metrics) == 2, metrics
    assert _history(mlflow_url, run.info.run_id, 'm/val/acc_top1') == {
        1: 1.5,
        2: 2.5,
    }
    (other,) = [key for key in metrics if key != 'm/val/acc_top1']
    assert other.startswith('m/val/acc_top1_')
    assert _history(mlflow_url, run.info.run_id, other) == pytest.approx(
        {1: 0.1, 2: 0.2}
    )
