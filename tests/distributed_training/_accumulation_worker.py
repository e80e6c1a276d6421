"""One rank of the accumulation tests: k=1 with batches of 32, k=4 of 8.

Runs in the processes that ``tests.helpers.multiprocess.run_distributed``
starts with torchrun's variables.  Each model's DDP wrapper gets a comm
hook that counts the bucket all-reduces it launches (and launches them:
torch's own ``allreduce_hook`` does the real all-reduce over the group),
so that the test sees how many gradient all-reduces each optimizer step
really cost.  No ``from __future__ import annotations`` here: DDP checks
the hook's annotations as objects.
"""

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import TensorDataset

import drytorch
from drytorch.distributed import ranks, teardown_distributed
from drytorch.lib import objectives

# 200 samples, 100 per rank: 4 batches of 32 (the last of 4) or 13 of 8
# (the last of 4), so the epoch's last window holds one micro-batch
N_SAMPLES = 200
EPOCHS = 2


def make_dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(N_SAMPLES, 5, generator=generator)
    labels = torch.randint(0, 3, (N_SAMPLES,), generator=generator)
    return TensorDataset(features, labels)


def make_network() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def _counting(
    state: dict[str, int], bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    state['all_reduces'] += 1
    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


def _train(
    name: str, batch_size: int, steps: int, parallel: str = 'ddp'
) -> dict[str, Any]:
    model = drytorch.Model(make_network(), name=name, parallel=parallel)
    trainer = drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(make_dataset(), batch_size, seed=2),
        loss=drytorch.Loss(objectives.cross_entropy, 'CE'),
        learning_schema=drytorch.LearningSchema.adam(base_lr=0.01),
        accumulation_steps=steps,
    )
    wrapped = model.training_module()  # DDP, built here on every rank
    counts = {'all_reduces': 0}
    if parallel == 'ddp':
        wrapped.register_comm_hook(counts, _counting)  # type: ignore[operator]
    trainer.train(EPOCHS)
    (optimizer_steps,) = {
        int(s['step'].item()) for s in trainer.optimizer.state.values()
    }
    return {
        # gathered on every rank (a collective under FSDP); rank zero has it
        'state': model.state_dict()['module'],
        'metrics': dict(trainer.computed_metrics),
        'all_reduces': counts['all_reduces'],
        'optimizer_steps': optimizer_steps,
        'batches': len(trainer.loader.plan(training=True, epoch=1)),
        'ddp': type(wrapped).__name__,
    }


def train_both(par_dir: str) -> dict[str, Any]:
    """Train k=1 with batches of 32 and k=4 with batches of 8 (DDP, FSDP)."""
    experiment = drytorch.Experiment(None, name='Accumulate', par_dir=par_dir)
    out: dict[str, Any] = {}
    try:
        with experiment.create_run():
            out['rank'] = ranks.get_rank()
            out['big'] = _train('big', 32, 1)
            out['small'] = _train('small', 8, 4)
            out['fsdp_big'] = _train('fsdp_big', 32, 1, 'fsdp')
            out['fsdp_small'] = _train('fsdp_small', 8, 4, 'fsdp')
    finally:
        teardown_distributed()
    return out
