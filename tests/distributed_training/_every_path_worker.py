"""Ranks of the every-path tests: one rank decides, fails or differs.

Each function runs in every process that ``run_distributed`` starts and
returns what its rank saw, or the error it raised as ``(type, message,
seconds)``, so that the test can check that every rank stopped in the same
way and in time.
"""

from __future__ import annotations

import pathlib
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import drytorch
from drytorch.distributed import ranks, teardown_distributed
from drytorch.lib import hooks


def _data(n: int = 64, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 4, generator=generator)
    return TensorDataset(inputs, inputs.sum(dim=1, keepdim=True))


class NanAt(nn.Module):
    """Identity, except for a NaN at one training pass of one rank."""

    def __init__(self, rank: int, at: int) -> None:
        super().__init__()
        self.rank, self.at, self.passes = rank, at, 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.passes += 1
            if ranks.get_rank() == self.rank and self.passes == self.at:
                return inputs * float('nan')
        return inputs


def _trainer(
    root: str, *, module: nn.Module | None = None, **kwargs: Any
) -> drytorch.Trainer:
    torch.manual_seed(0)
    model = drytorch.Model(
        module
        or nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1)),
        name='net',
        checkpoint=kwargs.pop('checkpoint', None),
    )
    return drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(_data(), 4, seed=1),
        loss=drytorch.Loss('MSE'),
        learning_schema=drytorch.LearningSchema.sgd(0.01),
        sync_every=2,
        **kwargs,
    )


def _in_run(root: str, body: Callable[[], Any], resume: bool = False) -> Any:
    """``body()`` inside a run; its result, or the error it raised."""
    experiment = drytorch.Experiment({}, name='Paths', par_dir=root)
    start = time.monotonic()
    try:
        with experiment.create_run(run_id='r', resume=resume):
            return body()
    except Exception as err:  # noqa: BLE001 - returned to the test
        return (type(err).__name__, str(err), time.monotonic() - start)
    finally:
        teardown_distributed()


def terminate_on_one_rank(root: str, rank: int, epoch: int) -> Any:
    """Rank ``rank`` alone terminates after ``epoch`` (as a clock would)."""

    def body() -> Any:
        trainer = _trainer(root)

        def decide(t: drytorch.Trainer) -> None:
            if ranks.get_rank() == rank and t.model.epoch == epoch:
                t.terminate_training(f'decided on rank {rank}')

        trainer.post_epoch_hooks.register(decide)
        trainer.train(5)
        return trainer.model.epoch, trainer.terminated

    return _in_run(root, body)


def write_into_a_file(root: str) -> Any:
    """The checkpoint folder is a file: rank zero cannot write."""
    blocker = pathlib.Path(root) / 'blocker'
    if ranks.get_rank() == 0:
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text('not a folder')

    def body() -> Any:
        trainer = _trainer(root, checkpoint=drytorch.LocalCheckpoint(blocker))
        trainer.train(1)
        return 'trained'

    return _in_run(root, body)


def slow_write(root: str, wait: float) -> Any:
    """Rank zero's write hangs; the others give up after ``wait`` s."""

    def body() -> Any:
        trainer = _trainer(root, checkpoint_timeout=wait)
        if ranks.get_rank() == 0:
            checkpoint = trainer.model.checkpoint

            def hang(*args: Any, **kwargs: Any) -> str:
                time.sleep(wait + 8)
                raise OSError('the file system never answered')

            checkpoint.save = hang  # type: ignore[method-assign]
        trainer.train(1)
        return 'trained'

    return _in_run(root, body)


def save_epochs(root: str, epochs: int) -> Any:
    """Train ``epochs`` epochs, saving each one."""

    def body() -> Any:
        trainer = _trainer(root)
        trainer.post_epoch_hooks.register(hooks.SaveEveryEpochs(1))
        trainer.train(epochs)
        return trainer.model.epoch

    return _in_run(root, body)


def resume_with_unreadable(root: str, unreadable_on: int, name: str) -> Any:
    """Resume; on one rank the checkpoint ``name`` cannot be read."""
    if ranks.get_rank() == unreadable_on:
        original = torch.load

        def failing(path: Any, *args: Any, **kwargs: Any) -> Any:
            if pathlib.Path(str(path)).name == name:
                raise RuntimeError('PytorchStreamReader failed: bad file')
            return original(path, *args, **kwargs)

        torch.load = failing  # type: ignore[assignment]

    def body() -> Any:
        trainer = _trainer(root)
        trainer.load_checkpoint()
        return trainer.model.epoch

    return _in_run(root, body, resume=True)


def draws_after_resume(root: str) -> Any:
    """Resume at an epoch boundary; the numbers this rank draws next."""

    def body() -> Any:
        trainer = _trainer(root)
        trainer.load_checkpoint()
        return (
            torch.rand(4).tolist(),
            random.random(),
            float(np.random.rand()),
        )

    return _in_run(root, body, resume=True)


def nan_on_one_rank(root: str, rank: int, at: int) -> Any:
    """A non-finite loss at training pass ``at`` of rank ``rank`` only."""

    def body() -> Any:
        module = nn.Sequential(NanAt(rank, at), nn.Linear(4, 1))
        trainer = _trainer(root, module=module)
        trainer.train(1)
        return 'trained'

    return _in_run(root, body)
