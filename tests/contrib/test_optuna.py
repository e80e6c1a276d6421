"""drytorch.contrib.optuna: a real SQLite study, pruning under 2 ranks."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

optuna = pytest.importorskip('optuna')

from drytorch.contrib import optuna as dt_optuna  # noqa: E402
from tests.contrib import _optuna_worker as worker  # noqa: E402
from tests.helpers.multiprocess import run_distributed  # noqa: E402


@pytest.fixture(scope='module')
def study_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[dict[str, Any]], optuna.Study]:
    root = tmp_path_factory.mktemp('optuna')
    storage = f'sqlite:///{root / "study.db"}'
    optuna.create_study(study_name=worker.STUDY, storage=storage)
    cwd = root / 'cwd'
    cwd.mkdir()
    result = run_distributed(
        2,
        func=worker.run_study,
        args=(str(root / 'experiments'), storage),
        env={'DRYTORCH_INIT_MODE': 'none'},
        cwd=cwd,
        timeout=300,
    )
    result.check()
    return result.values, optuna.load_study(
        study_name=worker.STUDY, storage=storage
    )


def test_the_study_records_pruned_and_completed_trials(
    study_run: tuple[list[dict[str, Any]], Any],
) -> None:
    study = study_run[1]
    states = [t.state.name for t in study.trials]
    assert states == ['PRUNED', 'COMPLETE', 'PRUNED', 'COMPLETE']
    assert [t.params['lr'] for t in study.trials] == worker.LRS
    for trial in study.trials:
        if trial.state.name == 'PRUNED':  # at the first epoch past warm-up
            assert sorted(trial.intermediate_values) == [1, 2]
        else:
            steps = sorted(trial.intermediate_values)
            assert steps == list(range(1, worker.EPOCHS + 1))
            assert trial.value == min(trial.intermediate_values.values())


def test_every_rank_stopped_in_step(
    study_run: tuple[list[dict[str, Any]], Any],
) -> None:
    values, study = study_run
    zero, one = values
    assert [t['pruned'] for t in zero['trials']] == [True, False, True, False]
    for mine, other in zip(zero['trials'], one['trials'], strict=True):
        assert mine['pruned'] == other['pruned'] == mine['callback_pruned']
        assert mine['reported'] == other['reported']  # global metrics
        assert (mine['number'], mine['lr']) == (other['number'], other['lr'])
    for trial, seen in zip(study.trials, zero['trials'], strict=True):
        assert trial.intermediate_values == seen['reported']


def test_only_rank_zero_talked_to_the_study(
    study_run: tuple[list[dict[str, Any]], Any],
) -> None:
    zero, one = study_run[0]
    assert zero['touched_storage'] and not one['touched_storage']


def test_a_pruned_trial_ends_its_run_as_completed(
    study_run: tuple[list[dict[str, Any]], Any],
) -> None:
    zero = study_run[0][0]
    assert zero['statuses'] == {f'trial{i}': 'completed' for i in range(4)}


def test_get_final_value_and_errors(tmp_path: pathlib.Path) -> None:
    study = optuna.create_study(direction='maximize')
    trial = study.ask()
    with pytest.raises(dt_optuna.OptunaError, match='reported no value'):
        dt_optuna.get_final_value(trial)
    for step, value in enumerate([0.2, 0.9, 0.5], start=1):
        trial.report(value, step)
    assert dt_optuna.get_final_value(trial) == 0.9
    assert dt_optuna.get_final_value(trial, lambda v: v[-1]) == 0.5


def test_suggest_overrides_from_a_config() -> None:
    omegaconf = pytest.importorskip('omegaconf')
    config = omegaconf.OmegaConf.create(
        {
            'overrides': ['epochs=3'],
            'tune': {
                'params': {
                    'optim.base_lr': {
                        'suggest': 'suggest_float',
                        'settings': {'low': 1e-4, 'high': 1e-1, 'log': True},
                    },
                    'model.widths': {
                        'suggest': 'suggest_list',
                        'settings': {
                            'min_length': 2,
                            'max_length': 2,
                            'suggest': 'suggest_int',
                            'settings': {'low': 4, 'high': 4},
                        },
                    },
                }
            },
        }
    )
    trial = optuna.create_study().ask()
    overrides = dt_optuna.suggest_overrides(config, trial)
    assert overrides[0] == 'epochs=3'
    assert overrides[2] == 'model.widths=[4, 4]'
    lr = float(overrides[1].removeprefix('optim.base_lr='))
    assert 1e-4 <= lr <= 1e-1
    assert set(trial.params) == {'Base Lr', 'Widths #', 'Widths 0', 'Widths 1'}
    config.tune.params['optim.base_lr'].suggest = 'suggest_nothing'
    with pytest.raises(dt_optuna.OptunaError, match='suggest_nothing'):
        dt_optuna.suggest_overrides(config, optuna.create_study().ask())
