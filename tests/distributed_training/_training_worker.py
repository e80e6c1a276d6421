"""One rank of the distributed training tests, and the data they share.

The functions here run in the processes that
``tests.helpers.multiprocess.run_distributed`` starts with torchrun's
variables, so the process group comes up the way it does under torchrun:
from ``Run.start``.  A world of one runs the same code and gives the
single-process reference.

Each function returns what its rank observed; the tests compare the ranks
with each other and with values computed here by plain torch.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import drytorch
from drytorch.distributed import ranks, teardown_distributed
from drytorch.lib import objectives
from drytorch.trackers.csv import CSVDumper
from drytorch.trackers.yaml import YamlDumper

N_SAMPLES = 101
N_FEATURES = 6
N_CLASSES = 3
TRAIN_BATCH = 4
TRAIN_SYNC = 3
# An SGD step of 1e-30 times a gradient is below half an ulp of every
# float32 weight, so the weights stay exactly as initialised while the
# whole training path (DDP, backward, optimizer step) runs.  The epoch's
# training loss is then a function of the data alone.
FROZEN_LR = 1e-30


def make_dataset(size: int = N_SAMPLES, seed: int = 0) -> TensorDataset:
    """A small classification data set, identical in every process."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(size, N_FEATURES, generator=generator)
    labels = torch.randint(0, N_CLASSES, (size,), generator=generator)
    return TensorDataset(features, labels)


def make_network(seed: int = 0) -> nn.Module:
    """A small MLP, with the same initial weights in every process."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Linear(16, N_CLASSES)
    )


def training_samples(world_size: int, epoch: int = 1) -> torch.Tensor:
    """The samples that one training epoch covers over ``world_size`` ranks.

    Every rank takes every ``world_size``-th sample of the epoch's order and
    the tail that does not divide is dropped, so together they cover the
    first ``world_size * (size // world_size)`` samples of the order.
    """
    loader = drytorch.DataLoader(make_dataset(), TRAIN_BATCH, seed=0)
    per_rank = N_SAMPLES // world_size
    return loader.permutation(epoch)[: per_rank * world_size]


def reference_metrics(indices: torch.Tensor | None = None) -> dict[str, float]:
    """Cross entropy and accuracy of the initial network, by plain torch."""
    features, labels = make_dataset().tensors
    if indices is not None:
        features, labels = features[indices], labels[indices]
    with torch.no_grad():
        logits = make_network()(features)
    losses = objectives.cross_entropy(logits, labels).double()
    hits = objectives.accuracy(logits, labels).double()
    return {
        'CrossEntropy': losses.mean().item(),
        'Accuracy': hits.mean().item(),
    }


def reference_outputs() -> torch.Tensor:
    """The initial network's logits for every sample, in data-set order."""
    with torch.no_grad():
        return make_network()(make_dataset().tensors[0])


class AllReduceCounter:
    """Counts the calls of ``torch.distributed.all_reduce`` in this process.

    DDP reduces gradients through its C++ reducer, which never calls the
    Python function, so what is counted here is drytorch's own traffic.
    """

    def __init__(self) -> None:
        self.calls = 0
        original = dist.all_reduce

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        dist.all_reduce = counted


class WriteWatcher:
    """Records every write-like file operation under a folder.

    An audit hook sees what this process does to the file system, whoever
    does it (drytorch, a tracker, a library), so a rank that writes
    nothing records nothing.
    """

    _EVENTS = frozenset(
        {
            'os.mkdir',
            'os.rename',
            'os.remove',
            'os.rmdir',
            'os.truncate',
            'os.symlink',
            'os.link',
            'shutil.copyfile',
            'shutil.move',
            'shutil.rmtree',
        }
    )
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def __init__(self, folder: pathlib.Path) -> None:
        self.root = str(folder.resolve())
        self.writes: list[tuple[str, str]] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event == 'open':
            path, mode, flags = args
            if mode is not None:
                writing = any(c in str(mode) for c in 'wax+')
            else:
                writing = bool(int(flags or 0) & self._WRITE_FLAGS)
            if writing:
                self._record(event, path)
        elif event in self._EVENTS:
            self._record(event, args[0])

    def _record(self, event: str, path: Any) -> None:
        if isinstance(path, int):
            return
        try:
            text = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return
        if text.startswith(self.root):
            self.writes.append((event, text))


def train_and_evaluate(
    par_dir: str,
    eval_batch: int,
    count_configs: Iterable[tuple[int, int]] = (),
) -> dict[str, Any]:
    """Train an epoch, validate, test; then count collectives.

    Args:
        par_dir: the experiments' parent folder, shared by the ranks.
        eval_batch: the batch size of validation and test.
        count_configs: (number of metrics M, sync interval N) pairs; for
            each, a fresh model trains one epoch and is validated, and the
            all-reduces of each loop are counted.

    """
    counter = AllReduceCounter()
    watcher = WriteWatcher(pathlib.Path(par_dir))
    dataset = make_dataset()
    experiment = drytorch.Experiment(
        {'case': 'distributed training'}, name='DistTraining', par_dir=par_dir
    )
    experiment.trackers.subscribe(CSVDumper(), YamlDumper())
    out: dict[str, Any] = {}
    try:
        with experiment.create_run() as run:
            out['run_id'] = run.id
            out['rank'] = ranks.get_rank()
            out['world_size'] = ranks.get_world_size()
            out['backend'] = (
                dist.get_backend() if dist.is_initialized() else None
            )
            out['live_trackers'] = sorted(experiment.trackers.named_trackers)
            out.update(_frozen_epoch(dataset, eval_batch))
            out['counts'] = [
                _count(counter, dataset, eval_batch, metrics, every)
                for metrics, every in count_configs
            ]
            out['trained_weights'] = _train_for_real(dataset)
    finally:
        teardown_distributed()
    out['writes'] = watcher.writes
    return out


def _frozen_epoch(dataset: TensorDataset, eval_batch: int) -> dict[str, Any]:
    model = drytorch.Model(make_network(), name='frozen')
    initial = [p.detach().clone() for p in model.module.parameters()]
    loss = drytorch.Loss('CrossEntropy')
    trainer = drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(dataset, TRAIN_BATCH, seed=0),
        loss=loss,
        learning_schema=drytorch.LearningSchema.sgd(base_lr=FROZEN_LR),
        sync_every=TRAIN_SYNC,
    )
    trainer.add_validation(drytorch.DataLoader(dataset, eval_batch))
    trainer.train(1)
    test = drytorch.Test(
        model,
        loader=drytorch.DataLoader(dataset, eval_batch),
        metric=loss | drytorch.Metric('Accuracy'),
        store_outputs=True,
    )
    test()
    unchanged = all(
        torch.equal(before, after)
        for before, after in zip(
            initial, model.module.parameters(), strict=True
        )
    )
    assert trainer.validation is not None
    return {
        'train_metrics': trainer.computed_metrics,
        'validation_metrics': trainer.validation.computed_metrics,
        'test_metrics': test.computed_metrics,
        'test_outputs': (
            torch.stack(test.outputs_list)
            if test.outputs_list
            else torch.empty(0)
        ),
        'weights_unchanged': unchanged,
        'ddp': model._ddp is not None,
    }


def _metric(index: int) -> drytorch.Metric:
    def scaled_accuracy(outputs: torch.Tensor, targets: torch.Tensor):
        return objectives.accuracy(outputs, targets) * (index + 1)

    return drytorch.Metric(scaled_accuracy, f'Accuracy{index}')


def _loss_of(n_names: int) -> drytorch.Loss:
    """A loss that reports ``n_names`` values (total and components).

    A formula of k >= 2 losses reports k + 1 values, so 2 is not offered.
    """
    assert n_names != 2, 'a loss reports 1 value, or 3 and more'
    if n_names == 1:
        return drytorch.Loss('CrossEntropy')
    total = drytorch.Loss(objectives.cross_entropy, 'Part0')
    for index in range(1, n_names - 1):
        part = drytorch.Loss(objectives.cross_entropy, f'Part{index}')
        total = total + 0.5 * part
    return total  # type: ignore[return-value]


def _count(
    counter: AllReduceCounter,
    dataset: TensorDataset,
    eval_batch: int,
    n_metrics: int,
    every: int,
) -> dict[str, Any]:
    model = drytorch.Model(make_network(), name=f'count_m{n_metrics}_n{every}')
    loss = _loss_of(n_metrics)
    loader = drytorch.DataLoader(dataset, TRAIN_BATCH, seed=0)
    trainer = drytorch.Trainer(
        model,
        name=f'Trainer_m{n_metrics}_n{every}',
        loader=loader,
        loss=loss,
        learning_schema=drytorch.LearningSchema.sgd(base_lr=0.01),
        sync_every=every,
    )
    before = counter.calls
    trainer.train(1)
    train_calls = counter.calls - before
    metrics = drytorch.MetricCollection(
        *(_metric(i) for i in range(n_metrics))
    )
    val_loader = drytorch.DataLoader(dataset, eval_batch)
    validation = drytorch.Validation(
        model,
        f'Validation_m{n_metrics}_n{every}',
        loader=val_loader,
        metric=metrics,
        sync_every=every,
    )
    before = counter.calls
    validation.run()
    val_calls = counter.calls - before
    return {
        'metrics': n_metrics,
        'every': every,
        'train_names': len(trainer.accumulator.names),
        'val_names': len(validation.accumulator.names),
        'train_steps': len(loader.plan(training=True, epoch=1)),
        'val_steps': len(val_loader.plan(training=False)),
        'train_all_reduce': train_calls,
        'train_reducer_calls': trainer.reducer.calls,
        'val_all_reduce': val_calls,
        'val_reducer_calls': validation.reducer.calls,
    }


def _train_for_real(dataset: TensorDataset) -> list[float]:
    """Two epochs with a real learning rate; a digest of the weights."""
    model = drytorch.Model(make_network(seed=1), name='trained')
    trainer = drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(dataset, TRAIN_BATCH, seed=3),
        loss=drytorch.Loss('CrossEntropy'),
        learning_schema=drytorch.LearningSchema.adam(base_lr=0.01),
    )
    trainer.train(2)
    return [
        p.detach().double().sum().item() for p in model.module.parameters()
    ]


def train_until_killed(
    par_dir: str, victim: int, kill_at_step: int, how: str = 'SIGKILL'
) -> dict[str, Any]:
    """Train for long; rank ``victim`` sends itself a signal mid-epoch.

    ``how`` is the signal's name: SIGKILL (the rank dies and its sockets
    close) or SIGSTOP (the rank hangs with its sockets open, so only the
    timeout can free the others).  Every line this function prints is one
    JSON object with the wall time, so that the test can tell how long the
    other ranks took to fail.
    """
    dataset = make_dataset(size=2048)
    experiment = drytorch.Experiment(
        {'case': 'killed rank'}, name='Killed', par_dir=par_dir
    )
    steps = 0

    def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor):
        nonlocal steps
        steps += 1
        if steps == kill_at_step and ranks.get_rank() == victim:
            _report(event='killing', rank=victim, step=steps, signal=how)
            os.kill(os.getpid(), getattr(signal, how))
        return objectives.cross_entropy(outputs, targets)

    with experiment.create_run():
        _report(event='started', rank=ranks.get_rank())
        model = drytorch.Model(make_network(), name='victim')
        trainer = drytorch.Trainer(
            model,
            loader=drytorch.DataLoader(dataset, 8, seed=0),
            loss=drytorch.Loss(cross_entropy, 'CrossEntropy'),
            learning_schema=drytorch.LearningSchema.sgd(base_lr=0.01),
            sync_every=2,
        )
        try:
            trainer.train(1000)
        except Exception as exc:
            _report(
                event='failed',
                rank=ranks.get_rank(),
                step=steps,
                error=f'{type(exc).__name__}: {exc}'[:400],
            )
            raise
    return {'finished': True}


def _report(**fields: Any) -> None:
    fields['at'] = time.time()
    print('REPORT:' + json.dumps(fields), flush=True)


def reports(stdout: str) -> list[dict[str, Any]]:
    """The JSON lines that :func:`_report` printed."""
    return [
        json.loads(line.removeprefix('REPORT:'))
        for line in stdout.splitlines()
        if line.startswith('REPORT:')
    ]


def expected_syncs(steps: int, every: int) -> int:
    """Sync points of a loop: every ``every`` steps and at the last."""
    return math.ceil(steps / every)


def forced_group_training(par_dir: str) -> dict[str, Any]:
    """One process with DRYTORCH_FORCE_PROCESS_GROUP=1: a group of one.

    What ``benchmarks/gpu_check.sh`` relies on to run NCCL on one GPU,
    checked here with gloo on the CPU.
    """
    counter = AllReduceCounter()
    experiment = drytorch.Experiment(
        {'case': 'forced group'}, name='Forced', par_dir=par_dir
    )
    try:
        with experiment.create_run() as run:
            model = drytorch.Model(make_network(), name='alone')
            trainer = drytorch.Trainer(
                model,
                loader=drytorch.DataLoader(make_dataset(), TRAIN_BATCH),
                loss=drytorch.Loss('CrossEntropy'),
                learning_schema=drytorch.LearningSchema.sgd(base_lr=FROZEN_LR),
                sync_every=TRAIN_SYNC,
            )
            trainer.train(1)
            out = {
                'run_id': run.id,
                'initialized': dist.is_initialized(),
                'world_size': dist.get_world_size(),
                'backend': dist.get_backend(),
                'distributed': ranks.is_distributed(),
                'ddp': model._ddp is not None,
                'reducer_calls': trainer.reducer.calls,
                'all_reduce': counter.calls,
                'train_metrics': trainer.computed_metrics,
            }
    finally:
        teardown_distributed()
    out['initialized_after'] = dist.is_initialized()
    return out
