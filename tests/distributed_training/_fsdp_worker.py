"""One rank of the FSDP tests: the same training under DDP and under FSDP.

The functions here run in the processes that
``tests.helpers.multiprocess.run_distributed`` starts with torchrun's
variables.  One launch trains, in one run, the same seeded MLP of several
blocks three times (plain, with gradient clipping, with mixed precision)
with a learning-rate schedule, a plateau hook and a checkpoint every
epoch, validates it over shards that leave one rank a step without
samples, and tests it with stored outputs.  The launch under DDP and the
launch under FSDP must report the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import drytorch
from drytorch.distributed import ranks, teardown_distributed
from drytorch.lib import gradient_ops, hooks, learning, objectives, schedulers

N_FEATURES = 6
N_CLASSES = 3
WIDTH = 32
N_BLOCKS = 3
N_TRAIN = 96
N_VALIDATION = 101  # 51 and 50 per rank: with batches of 10, rank one's
EVAL_BATCH = 10  # last step has no sample
TRAIN_BATCH = 8
EPOCHS = 3
LR = 0.01
CLIP = 0.05  # below the gradients' norm: clipping acts at every step


class Block(nn.Module):
    """A residual block: the unit that FSDP shards on its own."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.activation = nn.Tanh()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs + self.activation(self.linear(inputs))


def make_network(seed: int = 0) -> nn.Module:
    """The MLP of the tests, the same in every process."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(N_FEATURES, WIDTH),
        nn.Tanh(),
        *(Block(WIDTH) for _ in range(N_BLOCKS)),
        nn.Linear(WIDTH, N_CLASSES),
    )


def make_dataset(size: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(size, N_FEATURES, generator=generator)
    labels = torch.randint(0, N_CLASSES, (size,), generator=generator)
    return TensorDataset(features, labels)


class NormRecorder:
    """Records the total gradient norm of every clipping in this process."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        original = learning.LearningSchema.clip_gradients
        recorder = self

        def recorded(self: Any, parameters: Any) -> torch.Tensor | None:
            norm = original(self, parameters)
            if norm is not None:
                assert type(norm) is torch.Tensor  # plain, also under FSDP
                recorder.norms.append(norm.item())
            return norm

        learning.LearningSchema.clip_gradients = recorded  # type: ignore[method-assign]


def _local_numel(tensors: list[torch.Tensor]) -> tuple[int, int, bool]:
    """(elements on this rank, elements in all, whether all are DTensors)."""
    from torch.distributed.tensor import DTensor

    local = sum(
        t.to_local().numel() if isinstance(t, DTensor) else t.numel()
        for t in tensors
    )
    full = sum(t.numel() for t in tensors)
    return local, full, all(isinstance(t, DTensor) for t in tensors)


def _train(
    parallel: str, name: str, *, clip: float | None, mixed: bool
) -> dict[str, Any]:
    """Train, validate and test one model; what this rank saw."""
    extra: dict[str, Any] = {}
    if parallel == 'fsdp':
        extra['shard'] = (Block,)
    model = drytorch.Model(
        make_network(),
        name=name,
        parallel=parallel,
        mixed_precision=mixed,
        **extra,
    )
    out: dict[str, Any] = {'shard_units': model.shard_units}
    out['params'] = _local_numel(list(model.module.parameters()))
    schema = drytorch.LearningSchema.adam(
        base_lr=LR,
        scheduler=schedulers.CosineScheduler(EPOCHS).with_warmup(1),
        gradient_op=(
            gradient_ops.NoOp()
            if clip is None
            else gradient_ops.GradNormClipper(clip)
        ),
    )
    trainer = drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(
            make_dataset(N_TRAIN, seed=0), TRAIN_BATCH, seed=0
        ),
        loss=drytorch.Loss(objectives.cross_entropy, 'CE'),
        learning_schema=schema,
        sync_every=2,
    )
    trainer.add_validation(
        drytorch.DataLoader(make_dataset(N_VALIDATION, seed=1), EVAL_BATCH)
    )
    validation = trainer.validation
    assert validation is not None
    out['train'], out['validation'], out['lr'] = [], [], []
    forward_dtypes: set[torch.dtype] = set()

    def record(_: drytorch.Trainer) -> None:
        out['train'].append(trainer.computed_metrics['CE'])
        out['validation'].append(validation.computed_metrics['CE'])
        out['lr'].append(trainer.optimizer.param_groups[0]['lr'])

    def spy(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        forward_dtypes.add(output.dtype)

    # a test before any training: the first forward passes of a sharded
    # module are then evaluation ones
    before = drytorch.Test(
        model,
        'Before',
        loader=drytorch.DataLoader(make_dataset(N_VALIDATION, seed=1), 16),
        metric=drytorch.Loss(objectives.cross_entropy, 'CE'),
    )
    before()
    out['before'] = dict(before.computed_metrics)
    model.module[0].register_forward_hook(spy)
    trainer.post_epoch_hooks.register(hooks.ReduceLROnPlateau(patience=1))
    trainer.post_epoch_hooks.register(hooks.SaveEveryEpochs())
    trainer.post_epoch_hooks.register(record)
    trainer.train(EPOCHS)
    out['forward_dtypes'] = sorted(str(d) for d in forward_dtypes)
    out['param_dtypes'] = sorted(
        {str(p.dtype) for p in model.module.parameters()}
    )
    out['grads'] = _local_numel(
        [p.grad for p in model.module.parameters() if p.grad is not None]
    )
    out['moments'] = _local_numel(
        [s['exp_avg'] for s in trainer.optimizer.state.values()]
    )
    # gathered on every rank (a collective under FSDP); rank zero has it
    out['state'] = model.state_dict()['module']
    out['optimizer'] = model.optimizer_state_dict(trainer.optimizer)
    out['checkpoint'] = str(model.checkpoint.available()[-1].path)
    test = drytorch.Test(
        model,
        loader=drytorch.DataLoader(make_dataset(N_VALIDATION, seed=1), 16),
        metric=drytorch.Loss(objectives.cross_entropy, 'CE'),
        store_outputs=True,
    )
    test()
    out['test'] = dict(test.computed_metrics)
    out['outputs'] = (
        torch.stack(test.outputs_list) if test.outputs_list else None
    )
    return out


def _load_plain(path: str) -> dict[str, Any]:
    """Load a checkpoint of a plain module into a sharded one; gather it."""
    model = drytorch.Model(
        make_network(seed=5), name='loaded', parallel='fsdp', shard=(Block,)
    )
    optimizer = torch.optim.Adam(model.module.parameters(), lr=LR)
    state = torch.load(path, map_location='cpu', weights_only=False)
    model.load_state_dict(state['model'])
    model.load_optimizer_state_dict(optimizer, state['optimizer'])
    return {
        'state': model.state_dict()['module'],
        'optimizer': model.optimizer_state_dict(optimizer),
        'epoch': model.epoch,
    }


def train_both_ways(
    par_dir: str, parallel: str, plain_checkpoint: str = ''
) -> dict[str, Any]:
    """Train plain, clipped and mixed-precision models under ``parallel``.

    With ``plain_checkpoint``, also load that checkpoint of a plain module
    (written in one process) into a sharded model.
    """
    norms = NormRecorder()
    experiment = drytorch.Experiment(
        {'parallel': parallel}, name='FSDP', par_dir=par_dir
    )
    out: dict[str, Any] = {}
    try:
        with experiment.create_run():
            out['rank'] = ranks.get_rank()
            out['plain'] = _train(parallel, 'plain', clip=None, mixed=False)
            out['clipped'] = _train(
                parallel, 'clipped', clip=CLIP, mixed=False
            )
            out['norms'] = list(norms.norms)
            out['mixed'] = _train(parallel, 'mixed', clip=None, mixed=True)
            if plain_checkpoint:
                out['loaded'] = _load_plain(plain_checkpoint)
    finally:
        teardown_distributed()
    return out
