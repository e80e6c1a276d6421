"""take_from_dataset: DRYTorch's helper, without touching global streams."""

from __future__ import annotations

import pytest
import torch

from drytorch.lib.loading import take_from_dataset
from tests.lib import _support


def test_first_samples_in_order() -> None:
    dataset = _support.regression_data(10)
    inputs, targets = take_from_dataset(dataset, 3)
    torch.testing.assert_close(inputs, dataset.tensors[0][:3])
    torch.testing.assert_close(targets, dataset.tensors[1][:3])


def test_random_draw_is_repeatable_and_leaves_the_global_stream() -> None:
    dataset = _support.regression_data(10)
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    first, _ = take_from_dataset(dataset, 4, preserve_order=False, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    again, _ = take_from_dataset(dataset, 4, False, 'cpu', seed=1)
    torch.testing.assert_close(first, again)
    other, _ = take_from_dataset(dataset, 4, preserve_order=False, seed=2)
    assert not torch.equal(first, other)


def test_bad_counts_are_refused() -> None:
    dataset = _support.regression_data(10)
    with pytest.raises(ValueError, match='between 1 and the data set size 10'):
        take_from_dataset(dataset, 11)
    with pytest.raises(TypeError, match='n_samples must be an int'):
        take_from_dataset(dataset, 1.5)  # type: ignore[arg-type]
