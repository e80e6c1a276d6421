"""One rank of the averaged-model test: EMAModel under DDP with BatchNorm."""

from __future__ import annotations

from typing import Any

import drytorch
from drytorch.distributed import ranks, teardown_distributed
from drytorch.lib.models import EMAModel
from tests.distributed_training import _bn_worker as bn


def train_ema(par_dir: str) -> dict[str, Any]:
    """Train an EMAModel for ``bn.EPOCHS`` epochs on every rank."""
    experiment = drytorch.Experiment(None, name='EMA', par_dir=par_dir)
    out: dict[str, Any] = {}
    try:
        with experiment.create_run():
            model = EMAModel(bn.make_network(), 'ema_mlp', decay=0.8)
            trainer = drytorch.Trainer(
                model,
                loader=drytorch.DataLoader(
                    bn.make_dataset(bn.N_TRAIN, seed=0), bn.TRAIN_BATCH, seed=0
                ),
                loss=drytorch.Loss('CrossEntropy'),
                learning_schema=drytorch.LearningSchema.sgd(base_lr=bn.LR),
            )
            trainer.add_validation(
                drytorch.DataLoader(
                    bn.make_dataset(bn.N_VALIDATION, seed=1), bn.EVAL_BATCH
                )
            )
            trainer.train(bn.EPOCHS)
            out['rank'] = ranks.get_rank()
            out['validation'] = dict(trainer.validation.computed_metrics)
            out['averaged'] = {
                k: v.detach().clone()
                for k, v in model.averaged_module.state_dict().items()
            }
            out['n_averaged'] = int(model.exec_averaged_module.n_averaged)
    finally:
        teardown_distributed()
    return out
