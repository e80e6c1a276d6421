"""Small real data sets, networks and trainers for the library's tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import drytorch
from drytorch.lib.learning import LearningSchema

IN_FEATURES = 3


def regression_data(n: int = 40, seed: int = 0) -> TensorDataset:
    """Inputs (n, 3) and targets (n, 1) of a noisy linear function."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, IN_FEATURES, generator=generator)
    weights = torch.tensor([[1.0], [-2.0], [0.5]])
    noise = 0.1 * torch.randn(n, 1, generator=generator)
    return TensorDataset(inputs, inputs @ weights + noise)


def linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(IN_FEATURES, 1)


def make_trainer(
    module: nn.Module | None = None,
    *,
    data: TensorDataset | None = None,
    batch_size: int = 8,
    loss: drytorch.Loss | None = None,
    schema: LearningSchema | None = None,
    name: str = 'net',
    checkpoint: drytorch.LocalCheckpoint | None = None,
    **kwargs: Any,
) -> drytorch.Trainer:
    """A trainer of a small regression inside the running run."""
    model = drytorch.Model(
        module or linear(), name=name, device='cpu', checkpoint=checkpoint
    )
    return drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(
            data or regression_data(), batch_size, seed=0
        ),
        loss=loss or drytorch.Loss('MSE'),
        learning_schema=schema or LearningSchema.sgd(0.05),
        **kwargs,
    )


class CallCounter:
    """A loss function that turns non-finite at its ``bad_call``-th call."""

    def __init__(self, bad_call: int) -> None:
        self.bad_call = bad_call
        self.calls = 0

    def __call__(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        self.calls += 1
        value = (outputs - targets).square().flatten(1).mean(1)
        if self.calls == self.bad_call:
            return value * float('nan')
        return value
