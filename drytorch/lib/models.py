"""A model: a module with a name, a device, an epoch count and checkpoints."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from drytorch.core import exceptions, log_events
from drytorch.core.experimenting import Experiment
from drytorch.distributed import ranks
from drytorch.lib.checkpoints import LocalCheckpoint

__all__ = ['Model', 'default_device']


def default_device() -> torch.device:
    """The GPU of this process's local rank when there is one, else CPU."""
    if torch.cuda.is_available():
        local = ranks.get_local_rank()
        return torch.device('cuda', local % torch.cuda.device_count())
    return torch.device('cpu')


class Model:
    """Wraps an ``nn.Module`` for the running experiment.

    Creating a model documents its architecture in the run; it must happen
    inside a run, and one module can be wrapped once per run.

    Args:
        module: the network.
        name: the name in logs and folders; defaults to the class name.
        device: where to put it; defaults to :func:`default_device`.
        checkpoint: where its checkpoints go; defaults to the run's folder.
        mixed_precision: run forward passes under autocast (float16 with a
            gradient scaler on CUDA, bfloat16 on CPU).

    """

    def __init__(
        self,
        module: torch.nn.Module,
        name: str = '',
        device: torch.device | str | None = None,
        checkpoint: LocalCheckpoint | None = None,
        mixed_precision: bool = False,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f'Model needs a torch.nn.Module, got {type(module).__name__}.'
            )
        run = Experiment.current_run()
        if run is None:
            raise exceptions.NoActiveRunError('Creating a Model')
        experiment = run.experiment
        self.device = torch.device(device) if device else default_device()
        self.module = module.to(self.device)
        self.name = experiment.metadata_manager.register_model(
            name or module.__class__.__name__, module
        )
        self.epoch = 0
        self.checkpoint = checkpoint or LocalCheckpoint()
        self.checkpoint.bind(self.name)
        self.mixed_precision = mixed_precision
        self._ddp: torch.nn.Module | None = None

    def __call__(self, inputs: Any) -> Any:
        return self.module(inputs)

    @property
    def autocast_dtype(self) -> torch.dtype:
        """The reduced precision used under ``mixed_precision``."""
        return torch.float16 if self.device.type == 'cuda' else torch.bfloat16

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast when mixed precision is on; nothing otherwise.

        A plain context object rather than a generator: it is entered at
        every step, and a null context costs almost nothing.
        """
        if not self.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def training_module(self) -> torch.nn.Module:
        """The module to train: wrapped in DDP when a group is up."""
        if not ranks.is_distributed():
            return self.module
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = (
                [self.device.index] if self.device.type == 'cuda' else None
            )
            self._ddp = DistributedDataParallel(
                self.module, device_ids=device_ids
            )
        return self._ddp

    def state_dict(self) -> dict[str, Any]:
        """Weights and epoch count."""
        return {'module': self.module.state_dict(), 'epoch': self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights and epoch count."""
        self.module.load_state_dict(state['module'])
        self.epoch = int(state['epoch'])

    def _weights(self) -> LocalCheckpoint:
        """Where :meth:`save_state` writes: ``weights/`` in the checkpoints.

        Apart from the trainer's full checkpoints, which share their file
        names: weights alone saved at an epoch would otherwise replace the
        full checkpoint of that epoch, and the trainer could no longer
        resume from it.
        """
        return LocalCheckpoint(self.checkpoint.directory / 'weights')

    def save_state(self) -> None:
        """Save the weights alone (rank zero writes; all ranks call)."""
        location = ''
        if ranks.is_rank_zero():
            location = self._weights().save(
                {'model': self.state_dict()}, self.epoch
            )
        ranks.barrier()
        log_events.SaveModelEvent(
            model_name=self.name,
            definition='state',
            location=location,
            epoch=self.epoch,
        )

    def load_state(self, epoch: int = -1) -> None:
        """Load the weights of ``epoch`` (-1: the newest).

        Weights saved by :meth:`save_state` come first; without any for
        ``epoch``, those of a trainer's full checkpoint are loaded.
        """
        try:
            state, info = self._weights().load(epoch, mid_epoch=False)
        except exceptions.CheckpointNotFoundError:
            state, info = self.checkpoint.load(epoch, mid_epoch=False)
        self.load_state_dict(state['model'])
        log_events.LoadModelEvent(
            model_name=self.name,
            definition='state',
            location=str(info.path),
            epoch=self.epoch,
        )

    def describe(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.module.parameters())
        return {
            'name': self.name,
            'module': type(self.module).__name__,
            'parameters': params,
            'device': str(self.device),
            'mixed_precision': self.mixed_precision,
        }

    def __repr__(self) -> str:
        return f'Model({self.name!r}, epoch={self.epoch})'
