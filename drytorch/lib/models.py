"""A model: a module with a name, a device, an epoch count and checkpoints."""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from drytorch.core import exceptions, log_events
from drytorch.core.experimenting import Experiment
from drytorch.distributed import agreement, ranks
from drytorch.distributed import parallel as parallelism
from drytorch.lib.checkpoints import LocalCheckpoint
from drytorch.lib.compiled import (
    COMPILED_SEGMENT,
    compile_options,
    plain_name,
    unwrap_compiled,
    without_compiled_prefix,
)

if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy

__all__ = ['Model', 'default_device']

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

    With ``parallel='fsdp'`` the module is sharded when the model is made
    (FSDP2 replaces the parameters, so no optimizer may hold them yet):
    each rank keeps about ``1 / world size`` of the parameters, gradients
    and optimizer state.  Its states are then gathered for a checkpoint,
    which holds the full state under the plain names and loads into a
    plain module too; :meth:`state_dict` and the optimizer's states are
    collectives there, which every rank calls.

    Args:
        module: the network, plain or made by ``torch.compile``.
        name: the name in logs and folders; defaults to the class name.
        device: where to put it; defaults to :func:`default_device`.
        checkpoint: where its checkpoints go; defaults to the run's folder.
        mixed_precision: run forward passes under autocast (float16 with a
            gradient scaler on CUDA, bfloat16 on CPU).  With
            ``parallel='fsdp'``, True means FSDP's own casting instead:
            bfloat16 parameters in the forward and backward passes,
            float32 gradient reduction and float32 shards, no autocast and
            no gradient scaler (bfloat16 does not need one); or pass a
            ``torch.distributed.fsdp.MixedPrecisionPolicy``.
        sync_batchnorm: under a process group, train with BatchNorm layers
            converted to ``torch.nn.SyncBatchNorm``, which normalise with
            the statistics of the global batch.  Needs a GPU (torch's
            SyncBatchNorm does not run on the CPU); in a single process it
            changes nothing.
        parallel: how training spreads over the ranks of a process group:
            None or ``'ddp'`` replicates the module (DDP, built at the
            first training call); ``'fsdp'`` shards it with FSDP2's
            ``fully_shard`` over a mesh of the model's device type (a CPU
            mesh under gloo).  Without a process group both train the
            plain module: there is nothing to share one process with, and
            the script that shards on a cluster runs unchanged on a laptop
            (``mixed_precision`` is then autocast to the policy's dtype).
            A forced group of one (``DRYTORCH_FORCE_PROCESS_GROUP=1``)
            shards for real, over a mesh of one, as it wraps in DDP.
        shard: with ``'fsdp'``, the submodules sharded as units of their
            own, each all-gathered only while it runs: module classes (a
            class or a tuple, e.g. the transformer block) or a function of
            a submodule.  The root is always sharded, last, and holds the
            parameters no unit took; None shards the root alone.
        compile: run ``torch.compile`` on the module (after it is moved
            and, with FSDP, sharded); a dict gives ``torch.compile``'s
            arguments (``{'mode': 'reduce-overhead'}``).  As with a module
            compiled by hand, states, checkpoints, DDP's parameters,
            evaluation and hooks see the plain module and its names, so a
            checkpoint loads into a plain module.
        find_unused_parameters: DDP's option: parameters that get no
            gradient in a step (a branch not taken) are allowed, at the
            cost of a walk of the autograd graph per step.
        static_graph: DDP's option: the used parameters are the same at
            every step, so DDP plans its buckets once.
        gradient_as_bucket_view: DDP's option: gradients are views into
            the all-reduce buckets (one copy and one gradient's memory
            saved).
        bucket_cap_mb: DDP's bucket size in MiB (None: torch's 25).  The
            four DDP options apply under a process group with
            ``parallel='ddp'``; in one process they are checked and
            otherwise unused, so the script runs on a laptop.

    Raises:
        ValueError: if ``sync_batchnorm`` is asked for under a process group
            on a device where SyncBatchNorm does not run; for an unknown
            ``parallel``; for ``shard`` or a ``MixedPrecisionPolicy``
            without ``parallel='fsdp'``; if ``shard`` picks no submodule;
            for FSDP on the CPU under a group that is not gloo; for a DDP
            option with ``parallel='fsdp'``, or a ``bucket_cap_mb`` that is
            not positive.
        TypeError: for a ``shard`` or ``mixed_precision`` of a wrong type;
            for a ``compile`` that is neither a bool nor a dict of
            ``torch.compile`` arguments; for a DDP flag that is not a
            bool.

    """

    def __init__(
        self,
        module: torch.nn.Module,
        name: str = '',
        device: torch.device | str | None = None,
        checkpoint: LocalCheckpoint | None = None,
        mixed_precision: bool | MixedPrecisionPolicy = False,
        sync_batchnorm: bool = False,
        parallel: str | None = None,
        shard: parallelism.Shard = None,
        compile: bool | Mapping[str, Any] = False,
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        gradient_as_bucket_view: bool = False,
        bucket_cap_mb: float | None = None,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f'Model needs a torch.nn.Module, got {type(module).__name__}.'
            )
        run = Experiment.current_run()
        if run is None:
            raise exceptions.NoActiveExperimentError('Creating a Model')
        experiment = run.experiment
        self.device = torch.device(device) if device else default_device()
        self.sync_batchnorm = sync_batchnorm
        self._check_sync_batchnorm()
        choice = parallelism.choose(parallel, shard, mixed_precision)
        self.parallel = choice.kind
        #: passed to DistributedDataParallel when training replicates
        self.ddp_options = parallelism.DDPOptions(
            find_unused_parameters=find_unused_parameters,
            static_graph=static_graph,
            gradient_as_bucket_view=gradient_as_bucket_view,
            bucket_cap_mb=bucket_cap_mb,
        )
        parallelism.check_ddp_options(choice.kind, self.ddp_options)
        #: whether the parameters are sharded (FSDP under a process group)
        self.sharded = choice.kind == 'fsdp' and ranks.is_distributed()
        self._policy: MixedPrecisionPolicy | None = choice.policy
        plain, compiled = unwrap_compiled(module)
        options = compile_options(compile)
        if options is not None and compiled is not None:
            raise ValueError(
                f'compile={compile!r} asks to compile a module that '
                'torch.compile made already. Pass the plain module with '
                'compile=, or the compiled one without it.'
            )
        #: the submodules sharded as units of their own (FSDP)
        self.shard_units: list[str] = []
        if choice.kind == 'fsdp':  # checked before the registration
            self.shard_units = parallelism.shard_units(plain, choice)
            if self.sharded:
                parallelism.check_group(self.device)
        # moving the plain module moves the compiled one: they share it
        self.module: torch.nn.Module = plain.to(self.device)
        self.compiled = compiled
        self.name = experiment.metadata_manager.register_model(
            name or plain.__class__.__name__, plain
        )
        self.epoch = 0
        self.checkpoint = checkpoint or LocalCheckpoint()
        self.checkpoint.bind(self.name)
        suit = getattr(self.checkpoint, 'suit_sharded_model', None)
        if self.sharded and suit is not None:
            suit()  # its checkpoints are in parts: no gather on rank zero
        self.mixed_precision = bool(mixed_precision)
        if choice.policy is not None:  # no dtype to cast to: full precision
            self.mixed_precision = choice.policy.param_dtype is not None
        self._ddp: torch.nn.Module | None = None
        self._class_name = type(plain).__name__  # sharding renames it
        if self.sharded:
            # after the registration: it documents the plain architecture
            if self.sync_batchnorm:
                self._convert_sync_batchnorm()
            parallelism.shard_module(self.module, self.device, choice)
        if options is not None:
            # after sharding: FSDP2 hooks the module, which dynamo traces
            self.compiled = torch.compile(self.module, **options)

    @property
    def collective_forward(self) -> bool:
        """Whether a forward pass is a collective (FSDP all-gathers).

        Then every rank must run every forward pass, also an evaluation
        step without samples.
        """
        return self.sharded

    @property
    def forward_module(self) -> torch.nn.Module:
        """What runs the forward pass: the compiled module, or the plain."""
        return self.compiled if self.compiled is not None else self.module

    def __call__(self, inputs: Any) -> Any:
        return self.forward_module(inputs)

    @property
    def autocast_dtype(self) -> torch.dtype:
        """The reduced precision used under ``mixed_precision``.

        With ``parallel='fsdp'``, the policy's parameter dtype (bfloat16
        by default): the same as sharded training computes in.
        """
        policy = self._policy
        if policy is not None and policy.param_dtype is not None:
            return policy.param_dtype
        return torch.float16 if self.device.type == 'cuda' else torch.bfloat16

    @property
    def uses_grad_scaler(self) -> bool:
        """Whether training scales the loss: float16 autocast on CUDA."""
        return (
            self.mixed_precision
            and not self.sharded
            and self.device.type == 'cuda'
            and self.autocast_dtype == torch.float16
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast when mixed precision is on; nothing otherwise.

        A sharded module casts its parameters itself (FSDP's policy), so
        it runs without autocast.  A plain context object rather than a
        generator: it is entered at every step, and a null context costs
        almost nothing.
        """
        if not self.mixed_precision or self.sharded:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def training_module(self) -> torch.nn.Module:
        """The module to train: wrapped in DDP when a group is up.

        With ``sync_batchnorm``, BatchNorm layers become SyncBatchNorm
        first; the conversion keeps the parameter and buffer objects, so an
        optimizer built on :attr:`module` before goes on working.  A
        compiled module is wrapped as it is: DDP syncs its gradients after
        the compiled backward pass.  A sharded module is its own wrapper.
        """
        if not ranks.is_distributed() or self.sharded:
            return self.forward_module
        if self._ddp is None:
            if self.sync_batchnorm:
                self._convert_sync_batchnorm()
            self._ddp = parallelism.replicate(
                self.forward_module, self.device, self.ddp_options
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
        torch.compile(...)``) lose their ``_orig_mod.`` segment too.  A
        sharded module's full state is gathered on rank zero, on the CPU
        (a collective: every rank calls it); other ranks get no weights.
        """
        if self.sharded:
            state = parallelism.full_state_dict(self.module)
        else:
            state = self.module.state_dict()
        if any(COMPILED_SEGMENT in key.split('.') for key in state):
            state = collections.OrderedDict(
                (plain_name(key), value) for key, value in state.items()
            )
        return {'module': state, 'epoch': self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights and epoch count.

        A module state saved from a compiled module before checkpoints held
        plain names (every key prefixed ``_orig_mod.``) loads too.  A
        sharded module takes rank zero's state, each rank its shard (a
        collective: every rank calls it).
        """
        incoming = without_compiled_prefix(state['module'])
        if self.sharded:
            parallelism.load_full_state_dict(self.module, incoming)
            self.epoch = int(state['epoch'])
            return
        own = {plain_name(k): k for k in self.module.state_dict()}
        if any(plain != key for plain, key in own.items()):
            # compiled submodules: plain names back to this module's own
            incoming = collections.OrderedDict(
                (own.get(plain_name(k), k), v) for k, v in incoming.items()
            )
        self.module.load_state_dict(incoming)
        self.epoch = int(state['epoch'])

    def optimizer_state_dict(
        self, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """``optimizer``'s state, in the plain format whatever the wrapping.

        Sharded: gathered on rank zero (a collective every rank calls);
        other ranks get an empty state.
        """
        if self.sharded:
            return parallelism.full_optimizer_state_dict(
                self.module, optimizer
            )
        return optimizer.state_dict()

    def load_optimizer_state_dict(
        self, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        """Restore a state of :meth:`optimizer_state_dict` (collective)."""
        if self.sharded:
            parallelism.load_full_optimizer_state_dict(
                self.module, optimizer, state
            )
        else:
            optimizer.load_state_dict(state)

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
        if 'parts' in state:  # a checkpoint in parts (a collective)
            from drytorch.lib import trainer_state

            trainer_state.load_weights(self, state)
        else:
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
            'module': self._class_name,
            'parameters': params,
            'device': str(self.device),
            'mixed_precision': self.mixed_precision,
            'compiled': self.compiled is not None,
            'sync_batchnorm': self.sync_batchnorm,
            'parallel': self.parallel,
            'sharded': self.sharded,
            **(
                {}
                if self.ddp_options.is_default
                else {'ddp': self.ddp_options.kwargs()}
            ),
        }

    def __repr__(self) -> str:
        return f'Model({self.name!r}, epoch={self.epoch})'


# DRYTorch has the averaged models here; they live in their own module.
from drytorch.lib.averaged_models import (  # noqa: E402
    AveragedModel,
    EMAModel,
    SWAModel,
)

__all__ += ['AveragedModel', 'EMAModel', 'SWAModel']
