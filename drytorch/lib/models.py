"""A model: a module with a name, a device, an epoch count and checkpoints."""

from __future__ import annotations

import collections
import contextlib
import functools
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from drytorch.core import exceptions, log_events
from drytorch.core.experimenting import Experiment
from drytorch.distributed import agreement, ranks
from drytorch.lib.checkpoints import LocalCheckpoint

__all__ = ['Model', 'default_device']

# The prefix that ``torch.compile``'s wrapper puts before every state key.
COMPILED_PREFIX = '_orig_mod.'
# The devices on which torch's SyncBatchNorm synchronises in training; on
# any other (the CPU) its forward raises under a process group.
SYNC_BATCHNORM_DEVICES = frozenset({'cuda', 'hpu', 'xpu'})


def default_device() -> torch.device:
    """This rank's GPU when there is one, else the CPU.

    The same rule that binds NCCL (``process_group.local_device``): under
    ``srun --gpus-per-task`` each task's own first GPU, ``cuda:0``.
    """
    if not torch.cuda.is_available():
        return torch.device('cpu')
    from drytorch.distributed.process_group import local_device

    return local_device()


def _unwrap_compiled(
    module: torch.nn.Module,
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The plain module and, if ``module`` was compiled, the compiled one.

    ``torch.compile`` returns a wrapper whose state keys all start with
    ``_orig_mod.``; a checkpoint of it would not load into the plain module
    (nor the other way round).  Only a module that ``torch.compile`` made
    is unwrapped: torch's compiler is then already imported, so looking it
    up in ``sys.modules`` costs nothing and never imports it.
    """
    eval_frame = sys.modules.get('torch._dynamo.eval_frame')
    optimized = getattr(eval_frame, 'OptimizedModule', None)
    if optimized is None or not isinstance(module, optimized):
        return module, None
    plain = module
    while isinstance(plain, optimized):  # compiled more than once
        plain = plain._orig_mod
    return plain, module


_COMPILED_SEGMENT = '_orig_mod'


def _plain_name(key: str) -> str:
    """``key`` without the segments that compiled submodules add."""
    return '.'.join(p for p in key.split('.') if p != _COMPILED_SEGMENT)


def _without_compiled_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """A module state with the ``_orig_mod.`` prefix removed, if all have it.

    Checkpoints written before models stored the plain module's state hold
    the compiled wrapper's names; they load again this way.  The caller's
    dictionary is left as it is.
    """
    if not state or not all(k.startswith(COMPILED_PREFIX) for k in state):
        return state
    plain = collections.OrderedDict(state)
    metadata = getattr(state, '_metadata', None)
    if metadata is not None:
        plain._metadata = collections.OrderedDict(metadata)  # type: ignore[attr-defined]
    while plain and all(k.startswith(COMPILED_PREFIX) for k in plain):
        consume_prefix_in_state_dict_if_present(plain, COMPILED_PREFIX)
    return plain


class Model:
    """Wraps an ``nn.Module`` for the running experiment.

    Creating a model documents its architecture in the run; it must happen
    inside a run, and one module can be wrapped once per run.

    A module made by ``torch.compile`` runs compiled, while everything else
    sees the plain module inside it (``module``): its state, parameters and
    registration.  Checkpoints then hold the same names whether the module
    was compiled or not, and load into either.

    Under a process group, each rank's BatchNorm layers update their running
    statistics with that rank's batches, so the ranks' buffers differ after
    a training step.  Every evaluation therefore starts by giving all ranks
    rank zero's buffers (:meth:`broadcast_buffers`): the metrics reported
    are those of the module that rank zero saves.

    Args:
        module: the network, plain or made by ``torch.compile``.
        name: the name in logs and folders; defaults to the class name.
        device: where to put it; defaults to :func:`default_device`.
        checkpoint: where its checkpoints go; defaults to the run's folder.
        mixed_precision: run forward passes under autocast (float16 with a
            gradient scaler on CUDA, bfloat16 on CPU).
        sync_batchnorm: under a process group, train with BatchNorm layers
            converted to ``torch.nn.SyncBatchNorm``, which normalise with
            the statistics of the global batch.  Needs a GPU (torch's
            SyncBatchNorm does not run on the CPU); in a single process it
            changes nothing.

    Raises:
        ValueError: if ``sync_batchnorm`` is asked for under a process group
            on a device where SyncBatchNorm does not run.

    """

    def __init__(
        self,
        module: torch.nn.Module,
        name: str = '',
        device: torch.device | str | None = None,
        checkpoint: LocalCheckpoint | None = None,
        mixed_precision: bool = False,
        sync_batchnorm: bool = False,
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
        self.sync_batchnorm = sync_batchnorm
        self._check_sync_batchnorm()
        plain, compiled = _unwrap_compiled(module)
        # moving the plain module moves the compiled one: they share it
        self.module: torch.nn.Module = plain.to(self.device)
        self.compiled = compiled
        self.name = experiment.metadata_manager.register_model(
            name or plain.__class__.__name__, plain
        )
        self.epoch = 0
        self.checkpoint = checkpoint or LocalCheckpoint()
        self.checkpoint.bind(self.name)
        self.mixed_precision = mixed_precision
        self._ddp: torch.nn.Module | None = None

    @property
    def forward_module(self) -> torch.nn.Module:
        """What runs the forward pass: the compiled module, or the plain."""
        return self.compiled if self.compiled is not None else self.module

    def __call__(self, inputs: Any) -> Any:
        return self.forward_module(inputs)

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
        """The module to train: wrapped in DDP when a group is up.

        With ``sync_batchnorm``, BatchNorm layers become SyncBatchNorm
        first; the conversion keeps the parameter and buffer objects, so an
        optimizer built on :attr:`module` before goes on working.  A
        compiled module is wrapped as it is: DDP syncs its gradients after
        the compiled backward pass.
        """
        if not ranks.is_distributed():
            return self.forward_module
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            if self.sync_batchnorm:
                self._convert_sync_batchnorm()
            device_ids = (
                [self.device.index] if self.device.type == 'cuda' else None
            )
            self._ddp = DistributedDataParallel(
                self.forward_module, device_ids=device_ids
            )
        return self._ddp

    def _check_sync_batchnorm(self) -> None:
        """Refuse SyncBatchNorm where its training forward would raise.

        Checked at construction, where the process group is already up
        (it starts with the run), rather than at the first training step;
        and again before converting, for a group that came up later.
        """
        if not self.sync_batchnorm or not ranks.is_distributed():
            return
        supported = SYNC_BATCHNORM_DEVICES | {
            torch._C._get_privateuse1_backend_name()
        }
        if self.device.type not in supported:
            raise ValueError(
                f'sync_batchnorm=True needs a GPU, but this model is on '
                f'{self.device}: torch {torch.__version__} SyncBatchNorm '
                f'only synchronises on {", ".join(sorted(supported))} '
                'devices. Pass sync_batchnorm=False on the CPU; evaluation '
                "uses rank zero's BatchNorm statistics on every rank "
                'either way.'
            )

    def _convert_sync_batchnorm(self) -> None:
        self._check_sync_batchnorm()
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
        if converted is self.module:
            return  # layers inside were replaced in place
        # the module itself is a BatchNorm layer: a new object replaces it
        if self.compiled is not None:
            raise ValueError(
                f'{self.name}: sync_batchnorm=True cannot convert a compiled '
                f'{type(self.module).__name__} that is itself a BatchNorm '
                'layer. Put it in an nn.Sequential before torch.compile, or '
                'pass sync_batchnorm=False.'
            )
        self.module = converted

    def broadcast_buffers(self) -> None:
        """Give every rank rank zero's floating-point buffers (collective).

        Every rank must call it at the same point (evaluations do, at their
        start).  All floating buffers travel in one flat tensor with one
        broadcast, in a dtype that holds each of them exactly.  Integer
        buffers (BatchNorm's ``num_batches_tracked``) stay: every rank
        counts the same steps.  Without a process group, or without
        floating buffers (the same answer on every rank: the ranks share
        the architecture), there is no collective at all.
        """
        if not ranks.is_distributed():
            return
        buffers = [b for b in self.module.buffers() if b.is_floating_point()]
        if not buffers:
            return
        dtype = functools.reduce(
            torch.promote_types, (b.dtype for b in buffers)
        )
        with torch.no_grad():
            flat = torch.cat(
                [
                    b.detach().reshape(-1).to(self.device, dtype)
                    for b in buffers
                ]
            )
            dist.broadcast(flat, src=0)
            if ranks.is_rank_zero():
                return
            offset = 0
            for buffer in buffers:
                size = buffer.numel()
                buffer.copy_(flat[offset : offset + size].view_as(buffer))
                offset += size

    def state_dict(self) -> dict[str, Any]:
        """Weights and epoch count, under the plain module's names.

        Submodules compiled on their own (``net.encoder =
        torch.compile(...)``) lose their ``_orig_mod.`` segment too.
        """
        state = self.module.state_dict()
        if any(_COMPILED_SEGMENT in key.split('.') for key in state):
            state = collections.OrderedDict(
                (_plain_name(key), value) for key, value in state.items()
            )
        return {'module': state, 'epoch': self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights and epoch count.

        A module state saved from a compiled module before checkpoints held
        plain names (every key prefixed ``_orig_mod.``) loads too.
        """
        incoming = _without_compiled_prefix(state['module'])
        own = {_plain_name(k): k for k in self.module.state_dict()}
        if any(plain != key for plain, key in own.items()):
            # compiled submodules: plain names back to this module's own
            incoming = collections.OrderedDict(
                (own.get(_plain_name(k), k), v) for k, v in incoming.items()
            )
        self.module.load_state_dict(incoming)
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
        """Save the weights alone (rank zero writes; all ranks call).

        A failed write stops every rank at once with its cause.
        """
        weights = self._weights()
        state = {'model': self.state_dict()}

        def write() -> str:
            try:
                return weights.save(state, self.epoch)
            except OSError as err:
                raise exceptions.CheckpointWriteError(
                    weights.directory, f'{err.__class__.__name__}: {err}'
                ) from err

        location = agreement.on_rank_zero(
            write,
            'write the model state',
            failure=lambda cause: exceptions.CheckpointWriteError(
                weights.directory, f'on rank zero, {cause}'
            ),
        )
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
            'compiled': self.compiled is not None,
            'sync_batchnorm': self.sync_batchnorm,
        }

    def __repr__(self) -> str:
        return f'Model({self.name!r}, epoch={self.epoch})'
