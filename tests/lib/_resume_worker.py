"""Training stopped after epoch K and resumed in a new process.

    python _resume_worker.py FOLDER first    # uninterrupted run, then K
    python _resume_worker.py FOLDER second   # load epoch K, train the rest

``first`` trains run 'full' for all the epochs without a stop, then run
'resumed' for K epochs, saves a checkpoint and exits.  ``second`` resumes
run 'resumed' in a fresh process, loads the checkpoint of epoch K and
trains the remaining epochs.  Each run leaves its final weights in
``FOLDER/<run>.pt`` and its metrics in its CSV files.

The model has dropout (the random state must come back), Adam (its
moments), a warm-up and cosine schedule, and a plateau hook whose patience
counter and lowered rate must survive the stop.
"""

from __future__ import annotations

import json
import pathlib
import random
import sys

import numpy as np
import torch
from torch import nn

import drytorch
from drytorch.lib import hooks, schedulers
from drytorch.trackers.csv import CSVDumper
from tests.lib import _support

EPOCHS = 6
STOP = 4


def build() -> drytorch.Trainer:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Linear(_support.IN_FEATURES, 16),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(16, 1),
    )
    model = drytorch.Model(network, name='net', device='cpu')
    schema = drytorch.LearningSchema.adam(
        base_lr=0.03,
        scheduler=schedulers.CosineScheduler(EPOCHS).with_warmup(1),
    )
    trainer = drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(_support.regression_data(64), 8, seed=7),
        loss=drytorch.Loss('MSE'),
        learning_schema=schema,
    )
    trainer.add_validation(
        drytorch.DataLoader(_support.regression_data(24, seed=1), 8)
    )
    # no epoch improves by 10: the rate halves after epochs 3 and 5, so
    # the patience counter saved after epoch 4 decides the rate of epoch 6
    trainer.post_epoch_hooks.register(
        hooks.ReduceLROnPlateau(
            monitor=trainer, factor=0.5, patience=2, min_delta=10.0
        )
    )
    return trainer


def finish(trainer: drytorch.Trainer, folder: pathlib.Path, run: str) -> None:
    torch.save(trainer.model.module.state_dict(), folder / f'{run}.pt')
    info = {'epoch': trainer.model.epoch, 'base_lr': trainer.base_lr}
    (folder / f'{run}.json').write_text(json.dumps(info))


def main(folder: pathlib.Path, mode: str) -> None:
    drytorch.init_trackers('none')
    experiment = drytorch.Experiment(
        None, name='Resume', par_dir=folder / 'experiments'
    )
    experiment.trackers.subscribe(CSVDumper())
    if mode == 'first':
        with experiment.create_run(run_id='full'):
            trainer = build()
            trainer.train(EPOCHS)
            finish(trainer, folder, 'full')
        with experiment.create_run(run_id='resumed'):
            trainer = build()
            trainer.train(STOP)
            trainer.save_checkpoint()
    else:
        with experiment.create_run(run_id='resumed', resume=True):
            trainer = build()
            trainer.load_checkpoint(STOP)
            trainer.train(EPOCHS - STOP)
            finish(trainer, folder, 'resumed')


if __name__ == '__main__':
    main(pathlib.Path(sys.argv[1]), sys.argv[2])
