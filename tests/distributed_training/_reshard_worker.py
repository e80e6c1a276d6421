"""One rank of the resharding tests: save in parts with N ranks, load with M.

Run by ``tests.helpers.multiprocess.run_distributed`` (torchrun's
variables) or in the test process itself for one rank.  ``save`` trains
the FSDP tests' MLP for two epochs under DDP or FSDP, with checkpoints in
parts in a folder that every run shares; ``resume`` builds the same model
with another seed (so that nothing but the checkpoint can make it equal),
loads the newest checkpoint, reports the full weights and optimizer state
it holds then, and trains one more epoch.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import torch

import drytorch
from drytorch.distributed import ranks, teardown_distributed
from drytorch.lib import checkpoints, objectives
from tests.distributed_training._fsdp_worker import (
    LR,
    N_TRAIN,
    Block,
    make_dataset,
    make_network,
)

BATCH = 24  # the global batch: 24 per step in one process, 8 on 3 ranks


def _trainer(folder: str, parallel: str, seed: int) -> drytorch.Trainer:
    extra: dict[str, Any] = {}
    if parallel == 'fsdp':
        extra['shard'] = (Block,)
    store = checkpoints.LocalCheckpoint(
        folder, run_folders=False, sharded=True
    )
    model = drytorch.Model(
        make_network(seed), name='net', parallel=parallel, checkpoint=store
    )
    return drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(
            make_dataset(N_TRAIN, seed=0),
            BATCH // ranks.get_world_size(),
            seed=0,
        ),
        loss=drytorch.Loss(objectives.cross_entropy, 'CE'),
        learning_schema=drytorch.LearningSchema.adam(base_lr=LR),
    )


def _gathered(trainer: drytorch.Trainer) -> dict[str, Any]:
    """The full state, gathered on every rank's call (rank zero has it).

    Copied: in one process and under DDP the states hold the live tensors,
    which training goes on changing.
    """
    model = trainer.model
    return copy.deepcopy(
        {
            'module': model.state_dict()['module'],
            'optimizer': model.optimizer_state_dict(trainer.optimizer),
            'epoch': model.epoch,
        }
    )


def _folder_contents(trainer: drytorch.Trainer) -> dict[str, list[str]]:
    directory = trainer.model.checkpoint.directory
    return {
        p.name: sorted(q.name for q in p.iterdir())
        for p in sorted(directory.iterdir())
        if p.is_dir()
    }


def save(root: str, folder: str, parallel: str) -> dict[str, Any]:
    """Train two epochs, checkpointing in parts; the state at the end."""
    experiment = drytorch.Experiment(None, name='Reshard', par_dir=root)
    try:
        with experiment.create_run(run_id=f'save-{parallel}'):
            trainer = _trainer(folder, parallel, seed=0)
            trainer.train(2)
            out = _gathered(trainer)
            out['files'] = _folder_contents(trainer)
            out['latest'] = str(
                trainer.model.checkpoint.choose().path.relative_to(folder)
            )
    finally:
        teardown_distributed()
    return out


def resume(root: str, folder: str, parallel: str) -> dict[str, Any]:
    """Load the newest checkpoint in parts, report it, train one epoch."""
    experiment = drytorch.Experiment(None, name='Reshard', par_dir=root)
    try:
        with experiment.create_run(run_id=f'resume-{parallel}'):
            world = ranks.get_world_size()
            trainer = _trainer(folder, parallel, seed=7)
            trainer.load_checkpoint()
            out = {'loaded': _gathered(trainer)}
            trainer.train(1)
            out['after'] = _gathered(trainer)
            out['loss'] = trainer.computed_metrics['CE']
            out['world'] = world
    finally:
        teardown_distributed()
    return out


def export(folder: str, target: str) -> pathlib.Path:
    """The newest checkpoint of ``folder`` as one file (one process)."""
    store = checkpoints.LocalCheckpoint(folder, run_folders=False)
    store.bind('net')
    return store.export(target)


def load_plain(path: pathlib.Path) -> torch.nn.Module:
    """A plain module with the exported weights."""
    state = torch.load(path, weights_only=False)
    network = make_network(seed=11)
    network.load_state_dict(state['model']['module'])
    return network
