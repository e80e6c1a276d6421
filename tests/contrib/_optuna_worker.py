"""One rank of the Optuna test: a 4-trial study, rank zero owns the study."""

from __future__ import annotations

from typing import Any

import optuna

import drytorch
from drytorch.contrib.optuna import TrialCallback, get_final_value
from drytorch.distributed import ranks, teardown_distributed
from drytorch.distributed.agreement import on_rank_zero
from drytorch.lib.learning import LearningSchema
from tests.lib import _support

LRS = [1e-5, 0.05, 1e-5, 0.05]  # the tiny rate never gets below the bar
EPOCHS = 4
STUDY = 'tune'


def _study(storage: str) -> optuna.Study:
    return optuna.load_study(
        study_name=STUDY,
        storage=storage,
        pruner=optuna.pruners.ThresholdPruner(upper=5.0, n_warmup_steps=2),
    )


def _one_trial(
    experiment: drytorch.Experiment[Any],
    storage: str,
    index: int,
    out: dict[str, Any],
) -> dict[str, Any]:
    trial: optuna.Trial | None = None  # rank zero's only
    callback: TrialCallback | None = None
    pruned = False

    def ask() -> tuple[int, float]:
        nonlocal trial
        out['touched_storage'] = True
        study = _study(storage)
        study.enqueue_trial({'lr': LRS[index]})
        trial = study.ask()
        return trial.number, trial.suggest_float('lr', 1e-6, 1.0, log=True)

    try:
        with experiment.create_run(run_id=f'trial{index}'):
            number, lr = on_rank_zero(ask, 'ask the study')
            trainer = _support.make_trainer(schema=LearningSchema.sgd(lr))
            callback = TrialCallback(trial)
            trainer.post_epoch_hooks.register(callback)
            trainer.train(EPOCHS)
    except optuna.TrialPruned:
        pruned = True
    assert callback is not None

    def tell() -> float | None:
        assert trial is not None
        study = _study(storage)
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return None
        value = get_final_value(trial)
        study.tell(trial, value)
        return value

    return {
        'number': number,
        'lr': lr,
        'pruned': pruned,
        'callback_pruned': callback.pruned,
        'reported': dict(callback.reported),
        'final': on_rank_zero(tell, 'tell the study'),
    }


def run_study(par_dir: str, storage: str) -> dict[str, Any]:
    """Each trial a run; returns what this rank saw of each."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment = drytorch.Experiment(None, name='Tune', par_dir=par_dir)
    out: dict[str, Any] = {'trials': [], 'touched_storage': False}
    try:
        for index in range(len(LRS)):
            out['trials'].append(_one_trial(experiment, storage, index, out))
        out['rank'] = ranks.get_rank()
        records = experiment.registry.records() if ranks.is_rank_zero() else []
        out['statuses'] = {r.run_id: r.status for r in records}
    finally:
        teardown_distributed()
    return out
