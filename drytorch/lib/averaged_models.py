"""Models that also keep averaged weights: DRYTorch's EMAModel and SWAModel.

The averaged copy (``torch.optim.swa_utils.AveragedModel``) is what
evaluations run (in inference, without gradients); training runs the
trained module as usual.  ``EMAModel`` updates the average after every
optimizer step, ``SWAModel`` after every epoch from ``start_epoch`` on.

Exact resume: the averaged weights, buffers and the count of averaged
steps are part of :meth:`state_dict`, which the trainer's checkpoint holds,
so a preempted run resumes with the average of the uninterrupted one.
Under DDP every rank updates its copy from the same (all-reduced) weights;
their floating buffers (BatchNorm statistics follow each rank's batches)
are taken from rank zero at the start of each evaluation, as the trained
module's are, so the reported metrics are those of the average rank zero
saves.  Sharded training (``parallel='fsdp'``) is refused for now.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist
from torch.optim import swa_utils

from drytorch.distributed import ranks
from drytorch.lib.models import Model

__all__ = ['AveragedModel', 'EMAModel', 'SWAModel']


def _broadcast_floating(module: torch.nn.Module, device: torch.device) -> None:
    """Rank zero's floating buffers on every rank, in one flat broadcast."""
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not ranks.is_distributed() or not buffers:
        return
    dtype = functools.reduce(torch.promote_types, (b.dtype for b in buffers))
    with torch.no_grad():
        flat = torch.cat([b.reshape(-1).to(device, dtype) for b in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for buffer in buffers:
            size = buffer.numel()
            buffer.copy_(flat[offset : offset + size].view_as(buffer))
            offset += size


class AveragedModel(Model):
    """A model with an averaged copy of its module (see the module doc).

    Takes the arguments of :class:`Model`.

    Attributes:
        exec_averaged_module: the ``AveragedModel`` wrapper.

    """

    def __init__(self, module: torch.nn.Module, /, *args: Any, **kwargs: Any):
        super().__init__(module, *args, **kwargs)
        if self.sharded:
            raise NotImplementedError(
                f'{type(self).__name__} does not support parallel="fsdp" '
                'yet: the averaged copy would need sharding too. Use '
                'parallel="ddp" (or None).'
            )
        self.exec_averaged_module = swa_utils.AveragedModel(
            self.module,
            self.device,
            multi_avg_fn=self._multi_avg_fn(),
            use_buffers=True,
        )

    def _multi_avg_fn(self) -> Any:
        return None  # the equal-weight average of swa_utils

    @property
    def averaged_module(self) -> torch.nn.Module:
        """The averaged copy of the module."""
        return self.exec_averaged_module.module

    def uses_average(self) -> bool:
        """Whether evaluations run the average now."""
        return True

    def __call__(self, inputs: Any) -> Any:
        """The averaged copy in inference, the trained module otherwise."""
        no_grad = (
            torch.is_inference_mode_enabled() or not torch.is_grad_enabled()
        )
        if no_grad and self.uses_average():
            averaged = self.exec_averaged_module
            mode = self.forward_module.training  # evaluations set eval()
            if averaged.training != mode:
                averaged.train(mode)
            return averaged(inputs)
        return super().__call__(inputs)

    def update_average(self) -> None:
        """Fold the module's current weights into the average."""
        self.exec_averaged_module.update_parameters(self.module)

    def post_batch_update(self) -> None:
        """Called by the trainer after every optimizer step."""

    def post_epoch_update(self) -> None:
        """Called by the trainer after every training epoch."""

    def broadcast_buffers(self) -> None:
        """Rank zero's buffers, of the module and of the average."""
        super().broadcast_buffers()
        _broadcast_floating(self.exec_averaged_module, self.device)

    def state_dict(self) -> dict[str, Any]:
        """The model's state and the average's (with its step count)."""
        state = super().state_dict()
        state['averaged'] = self.exec_averaged_module.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the model and, when saved, the average."""
        super().load_state_dict(state)
        if 'averaged' in state:
            self.exec_averaged_module.load_state_dict(state['averaged'])

    def describe(self) -> dict[str, Any]:
        """The model's metadata and how it averages."""
        return {**super().describe(), 'averaging': type(self).__name__}


class EMAModel(AveragedModel):
    """An exponential moving average of the weights, after every step.

    Args:
        decay: the weight of the old average at each update.
        (others: see :class:`Model`)

    """

    def __init__(
        self,
        module: torch.nn.Module,
        /,
        *args: Any,
        decay: float = 0.999,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f'decay must be in [0, 1); got {decay!r}.')
        self.decay = decay
        super().__init__(module, *args, **kwargs)

    def _multi_avg_fn(self) -> Any:
        return swa_utils.get_ema_multi_avg_fn(self.decay)

    def post_batch_update(self) -> None:
        """Update the average after the optimizer step."""
        self.update_average()


class SWAModel(AveragedModel):
    """The equal-weight average of the weights at each epoch end (SWA).

    Args:
        start_epoch: the first epoch whose weights join the average;
            before it evaluations run the trained module.
        (others: see :class:`Model`)

    """

    def __init__(
        self,
        module: torch.nn.Module,
        /,
        start_epoch: int,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int):
            raise TypeError(f'start_epoch must be an int; got {start_epoch!r}')
        self.start_epoch = start_epoch
        super().__init__(module, *args, **kwargs)

    def uses_average(self) -> bool:
        """From ``start_epoch`` on."""
        return self.epoch >= self.start_epoch

    def post_epoch_update(self) -> None:
        """Fold the epoch's final weights in, from ``start_epoch`` on."""
        if self.epoch >= self.start_epoch:
            self.update_average()
