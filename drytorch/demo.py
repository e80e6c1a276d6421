"""The main job: train a classifier of handwritten digits, end to end.

The data set ships with scikit-learn (nothing is downloaded).  The same
script runs as one process, under ``torchrun``, ``srun`` and ``mpirun``,
and as a submitted SLURM job; a preempted run resumes where it stopped.

    python -m drytorch.demo
    torchrun --standalone --nproc-per-node 2 -m drytorch.demo
    mpirun --allow-run-as-root --oversubscribe -np 2 python -m drytorch.demo
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

import drytorch
from drytorch.distributed import ranks
from drytorch.lib import hooks, objectives, schedulers
from drytorch.trackers.csv import CSVDumper


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Everything that defines the demo's result."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    hidden: int = 128
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2


def load_digits_splits(
    config: DemoConfig,
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Train, validation and test sets of scikit-learn's digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise drytorch.core.exceptions.MissingDependencyError(
            'scikit-learn', 'demo'
        ) from None
    digits = load_digits()
    features = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(labels), generator=generator)
    n_test = int(len(order) * config.test_fraction)
    n_val = int(len(order) * config.val_fraction)
    test, val, train = (
        order[:n_test],
        order[n_test : n_test + n_val],
        order[n_test + n_val :],
    )
    return tuple(  # type: ignore[return-value]
        TensorDataset(features[idx], labels[idx]) for idx in (train, val, test)
    )


def build_network(config: DemoConfig) -> nn.Module:
    """A small MLP: 64 pixels to 10 classes."""
    torch.manual_seed(config.seed)
    return nn.Sequential(
        nn.Linear(64, config.hidden),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(config.hidden, config.hidden),
        nn.ReLU(),
        nn.Linear(config.hidden, 10),
    )


def train_digits(
    config: DemoConfig,
    par_dir: str | pathlib.Path = 'experiments',
    run_id: str | None = None,
    resume: bool = False,
) -> dict[str, float]:
    """Train, validate and test; return the test metrics."""
    train_set, val_set, test_set = load_digits_splits(config)
    experiment = drytorch.Experiment(
        config, name='Digits', par_dir=par_dir, tags=['demo']
    )
    experiment.trackers.subscribe(CSVDumper())
    with experiment.create_run(run_id=run_id, resume=resume) as run:
        model = drytorch.Model(build_network(config), name='mlp')
        loss = drytorch.Loss(objectives.cross_entropy, 'CrossEntropy')
        accuracy = drytorch.Metric(objectives.accuracy, 'Accuracy')
        schema = drytorch.LearningSchema.adam_w(
            base_lr=config.lr,
            scheduler=schedulers.CosineScheduler(
                decay_steps=config.epochs, min_decay=0.05
            ).with_warmup(2),
        )
        trainer = drytorch.Trainer(
            model,
            loader=drytorch.DataLoader(
                train_set, config.batch_size, seed=config.seed
            ),
            loss=loss,
            learning_schema=schema,
        )
        trainer.add_validation(
            drytorch.DataLoader(val_set, 256, seed=config.seed)
        )
        trainer.post_epoch_hooks.register(hooks.SaveEveryEpochs(5))
        trainer.train(config.epochs)
        test = drytorch.Test(
            model,
            loader=drytorch.DataLoader(test_set, 256),
            metric=loss | accuracy,
        )
        test()
        if ranks.is_rank_zero():
            _summary(run, test.computed_metrics, ranks.get_world_size())
        return test.computed_metrics


def _summary(
    run: drytorch.Run, metrics: dict[str, float], world_size: int
) -> None:
    lines = [
        '',
        f'Digits demo finished ({world_size} process(es), '
        f'attempt {run.attempt} of run {run.id}).',
        f'  test accuracy: {metrics["Accuracy"]:.2%}',
        f'  test loss:     {metrics["CrossEntropy"]:.4f}',
        f'  outputs:       {run.dir}',
        f'  metrics (CSV): {run.dir / "csv_metrics"}',
        f'  checkpoints:   {run.dir / "checkpoints"}',
    ]
    print('\n'.join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=DemoConfig.epochs)
    parser.add_argument('--par-dir', default='experiments')
    parser.add_argument('--run-id', default=None)
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--seed', type=int, default=DemoConfig.seed)
    args = parser.parse_args(argv)
    config = DemoConfig(epochs=args.epochs, seed=args.seed)
    if 'OMP_NUM_THREADS' not in os.environ:
        # The network is tiny: splitting its operations over threads costs
        # more than it saves, and on a busy machine (or with several ranks
        # per node) waiting for the other threads slowed the demo 5-fold.
        torch.set_num_threads(1)
    from drytorch.distributed import teardown_distributed

    try:
        train_digits(config, args.par_dir, args.run_id, args.resume)
    finally:
        teardown_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
