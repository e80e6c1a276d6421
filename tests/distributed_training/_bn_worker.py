"""One rank of the BatchNorm tests: DDP training, validation, checkpoints.

The functions here run in the processes that
``tests.helpers.multiprocess.run_distributed`` starts with torchrun's
variables.  Under DDP every rank updates its BatchNorm running statistics
with its own batches, so after an epoch the ranks hold different buffers;
the tests check that evaluation nevertheless reports the metrics of rank
zero's module, the one that the checkpoints hold.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import drytorch
from drytorch.distributed import ranks, teardown_distributed
from drytorch.lib import hooks, objectives

N_FEATURES = 6
N_CLASSES = 3
N_TRAIN = 64
N_VALIDATION = 37  # divides by no world size above one: a rank is short
TRAIN_BATCH = 8
EVAL_BATCH = 10
EPOCHS = 2
LR = 0.1


def make_dataset(size: int, seed: int) -> TensorDataset:
    """A classification data set, identical in every process.

    The features are shifted and scaled so that the batch statistics are
    far from BatchNorm's initial running ones and from each other.
    """
    generator = torch.Generator().manual_seed(seed)
    features = 3.0 + 2.0 * torch.randn(size, N_FEATURES, generator=generator)
    labels = torch.randint(0, N_CLASSES, (size,), generator=generator)
    return TensorDataset(features, labels)


def make_network(seed: int = 0) -> nn.Module:
    """An MLP with BatchNorm and dropout, the same in every process."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(N_FEATURES, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(16, N_CLASSES),
    )


def reference_metrics(module_state: dict[str, Any]) -> dict[str, float]:
    """The saved module's validation metrics, computed by plain torch."""
    network = make_network(seed=1)  # other initial values, all replaced
    network.load_state_dict(module_state, strict=True)
    network.eval()
    features, labels = make_dataset(N_VALIDATION, seed=1).tensors
    with torch.inference_mode():
        logits = network(features)
    losses = objectives.cross_entropy(logits, labels).double()
    return {'CrossEntropy': losses.mean().item()}


class BroadcastCounter:
    """Counts the calls of ``torch.distributed.broadcast`` in this process.

    DDP syncs parameters and buffers through its C++ helpers, which never
    call the Python function, so what is counted is drytorch's own traffic.
    """

    def __init__(self) -> None:
        self.calls = 0
        original = dist.broadcast

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        dist.broadcast = counted


def _buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_buffers()}


def train_with_batchnorm(par_dir: str) -> dict[str, Any]:
    """Train and validate for ``EPOCHS`` epochs, saving every epoch.

    Returns what this rank saw: the validation metrics of every epoch, the
    broadcasts of every epoch (training and validation), the checkpoint
    files (rank zero's paths), the buffers of every rank before and after
    the last validation, the broadcasts of a test of a model with and of
    one without buffers, and what ``sync_batchnorm=True`` did on the CPU.
    """
    counter = BroadcastCounter()
    experiment = drytorch.Experiment(
        {'case': 'batchnorm'}, name='BatchNorm', par_dir=par_dir
    )
    out: dict[str, Any] = {'validation': [], 'broadcasts': []}
    try:
        with experiment.create_run():
            out['rank'] = ranks.get_rank()
            out.update(_train(counter, out))
            out.update(_count_tests(counter))
            out['sync_batchnorm_error'] = _try_sync_batchnorm()
    finally:
        teardown_distributed()
    return out


def _train(counter: BroadcastCounter, out: dict[str, Any]) -> dict[str, Any]:
    model = drytorch.Model(make_network(), name='bn_mlp')
    trainer = drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(
            make_dataset(N_TRAIN, seed=0), TRAIN_BATCH, seed=0
        ),
        loss=drytorch.Loss('CrossEntropy'),
        learning_schema=drytorch.LearningSchema.sgd(base_lr=LR),
    )
    trainer.add_validation(
        drytorch.DataLoader(make_dataset(N_VALIDATION, seed=1), EVAL_BATCH)
    )
    validation = trainer.validation
    assert validation is not None
    before_validation: dict[str, torch.Tensor] = {}
    calls_at_start = [0]

    def start(_: drytorch.Trainer) -> None:
        calls_at_start[0] = counter.calls

    original_run = validation.run

    def spied_run() -> Any:
        before_validation.clear()
        before_validation.update(_buffers(model.module))
        return original_run()

    def record(_: drytorch.Trainer) -> None:
        out['validation'].append(dict(validation.computed_metrics))
        out['broadcasts'].append(counter.calls - calls_at_start[0])

    validation.run = spied_run  # type: ignore[method-assign]
    trainer.pre_epoch_hooks.register(start)
    trainer.post_epoch_hooks.register(hooks.SaveEveryEpochs())
    trainer.post_epoch_hooks.register(record)
    trainer.train(EPOCHS)
    # the trainer may write a checkpoint that a hook asks for only once
    # every hook has run, so the files are looked up afterwards
    saved = {
        info.epoch: str(info.path)
        for info in model.checkpoint.available()
        if not info.mid_epoch
    }
    out['checkpoints'] = [saved.get(e, '') for e in range(1, EPOCHS + 1)]
    return {
        'buffers_before_validation': before_validation,
        'buffers_after_validation': _buffers(model.module),
    }


def _count_tests(counter: BroadcastCounter) -> dict[str, int]:
    """Broadcasts of one test with BatchNorm buffers and one without."""
    counts = {}
    data = make_dataset(N_VALIDATION, seed=1)
    plain = nn.Sequential(nn.Linear(N_FEATURES, N_CLASSES))
    for key, network in (
        ('test_broadcasts', make_network()),
        ('test_broadcasts_no_buffers', plain),
    ):
        model = drytorch.Model(network, name=key)
        test = drytorch.Test(
            model,
            loader=drytorch.DataLoader(data, EVAL_BATCH),
            metric=drytorch.Metric('Accuracy'),
        )
        before = counter.calls
        test()
        counts[key] = counter.calls - before
    return counts


def _try_sync_batchnorm() -> str:
    """What asking for SyncBatchNorm on the CPU under a group does."""
    try:
        drytorch.Model(make_network(), name='sync', sync_batchnorm=True)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return f'{type(exc).__name__}: {exc}'
    return ''
