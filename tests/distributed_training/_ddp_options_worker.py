"""One rank of the DDP options tests: each option reaches DDP and acts.

Runs in the processes that ``tests.helpers.multiprocess.run_distributed``
starts.  A network with a branch it never takes trains with
``find_unused_parameters=True`` (without it DDP fails at the second
step); a network with tiny buckets (``bucket_cap_mb``) and
``gradient_as_bucket_view`` trains through a comm hook that counts its
real all-reduces; one with ``static_graph`` trains too; a model made with
``compile=`` trains and validates under DDP with plain names.
No ``from __future__ import annotations``: DDP checks the hook's
annotations as objects.
"""

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import TensorDataset

import drytorch
from drytorch.distributed import teardown_distributed
from drytorch.lib import objectives


class Unused(nn.Module):
    """A classifier with a head it never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 3)
        self.unused_head = nn.Linear(5, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.body(inputs)


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 5, generator=generator)
    labels = torch.randint(0, 3, (64,), generator=generator)
    return TensorDataset(features, labels)


def _counting(
    state: dict[str, int], bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    state['all_reduces'] += 1
    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


def _trainer(model: drytorch.Model, steps: int = 1) -> drytorch.Trainer:
    return drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(_data(), 8, seed=1),  # 4 batches a rank
        loss=drytorch.Loss(objectives.cross_entropy, 'CE'),
        learning_schema=drytorch.LearningSchema.sgd(base_lr=0.1),
        accumulation_steps=steps,
    )


def _ddp_facts(wrapped: Any) -> dict[str, Any]:
    return {
        'type': type(wrapped).__name__,
        'find_unused_parameters': wrapped.find_unused_parameters,
        'static_graph': wrapped.static_graph,
        'gradient_as_bucket_view': wrapped.gradient_as_bucket_view,
        'bucket_bytes_cap': wrapped.bucket_bytes_cap,
    }


def train(par_dir: str) -> dict[str, Any]:
    experiment = drytorch.Experiment(None, name='Options', par_dir=par_dir)
    out: dict[str, Any] = {}
    try:
        with experiment.create_run():
            torch.manual_seed(0)
            unused = drytorch.Model(
                Unused(), name='unused', find_unused_parameters=True
            )
            trainer = _trainer(unused)
            trainer.train(2)
            out['unused'] = _ddp_facts(unused.training_module())
            out['unused_loss'] = trainer.computed_metrics['CE']
            torch.manual_seed(0)
            network = nn.Sequential(
                nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 3)
            )
            tiny = drytorch.Model(
                network,
                name='tiny',
                gradient_as_bucket_view=True,
                bucket_cap_mb=0.001,  # 1 KiB
            )
            wrapped = tiny.training_module()
            counts = {'all_reduces': 0}
            wrapped.register_comm_hook(counts, _counting)  # type: ignore[operator]
            trainer = _trainer(tiny)
            trainer.train(1)
            out['tiny'] = _ddp_facts(wrapped)
            out['tiny_all_reduces'] = counts['all_reduces']
            out['tiny_steps'] = trainer.optimizer_steps
            out['tiny_state'] = tiny.module.state_dict()
            torch.manual_seed(0)
            static = drytorch.Model(
                nn.Linear(5, 3), name='static', static_graph=True
            )
            _trainer(static).train(1)
            out['static'] = _ddp_facts(static.training_module())
            torch.manual_seed(0)
            compiled = drytorch.Model(
                nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)),
                name='compiled',
                compile={'backend': 'eager'},  # dynamo, no code generation
            )
            trainer = _trainer(compiled)
            trainer.add_validation(drytorch.DataLoader(_data(), 16))
            trainer.train(1)
            wrapped = compiled.training_module()
            out['compiled'] = {
                'wraps': type(wrapped.module).__name__,  # type: ignore[union-attr]
                'names': list(compiled.state_dict()['module']),
                'validation': dict(trainer.validation.computed_metrics),  # type: ignore[union-attr]
            }
    finally:
        teardown_distributed()
    return out
