"""The trainer: epochs of optimisation, validation, hooks and checkpoints.

Every rank runs the same code: hooks see global metrics, so they take the
same decisions everywhere.  A decision that one rank may still take alone,
``terminate_training`` called from a hook that reads the wall clock say, is
agreed at the end of the epoch (one small reduction), so that every rank
stops after the same epoch with the same reason.  Checkpoints are gathered
(every rank's random state and partial sums) and written by rank zero
alone; see ``trainer_state``.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from drytorch.core import exceptions, log_events
from drytorch.distributed import peers, ranks
from drytorch.distributed.agreement import (
    checkpoint_timeout as agreement_timeout,
)
from drytorch.distributed.preemption import watcher
from drytorch.distributed.reduce import Flag, PackedReducer
from drytorch.lib import trainer_state
from drytorch.lib.accumulation import Accumulation
from drytorch.lib.evaluations import Validation
from drytorch.lib.hook_registry import HookRegistry
from drytorch.lib.learning import LearningSchema
from drytorch.lib.loading import DataLoader
from drytorch.lib.models import Model
from drytorch.lib.objectives import LossBase
from drytorch.lib.resume import Position
from drytorch.lib.runners import LoopOutcome, Runner
from drytorch.lib.trainer_checkpointing import Checkpointing
from drytorch.lib.trainer_steps import Stepping

__all__ = ['Trainer']


def _epoch_count(name: str, value: Any) -> int:
    """``value`` as a whole number of epochs, or a clear error."""
    if isinstance(value, bool):
        raise exceptions.EpochCountError(name, value)
    try:
        count = operator.index(value)
    except TypeError:
        raise exceptions.EpochCountError(name, value) from None
    if count < 0:
        raise exceptions.EpochCountError(name, value)
    return count


class Trainer(Stepping, Checkpointing, Runner):
    """Trains a model with a loss and a learning schema.

    Args:
        model: the model to train.
        name: the source name in logs; 'Trainer' by default.
        loader: the training data.
        loss: the loss to minimise (its components are logged too).
        learning_schema: optimiser, learning-rate schedule and clipping.
        sync_every: steps between sync points (None: adaptive).
        checkpoint_timeout: seconds the other ranks wait for rank zero to
            write a checkpoint (default ``$DRYTORCH_CHECKPOINT_TIMEOUT`` or
            600); a failed write stops every rank at once with its cause.
        async_checkpoint: write the model's checkpoints in the background
            (``LocalCheckpoint(async_checkpoint=...)``, which this sets on
            the model's store; None leaves the store's choice).
        accumulation_steps: micro-batches (loader batches) per optimizer
            step; the losses are weighted so that a step equals one of a
            batch ``accumulation_steps`` times larger, and under DDP the
            gradients are all-reduced once per step.  An epoch's last
            window may be shorter and steps on its own samples; a
            preemption stops at a window boundary (see
            ``drytorch.lib.accumulation`` for both choices and why).
            Metrics and the progress bar count micro-batches.

    Raises:
        TypeError: for a ``loss`` that is not a drytorch loss, or an
            ``accumulation_steps`` that is not a whole number.
        ValueError: for ``accumulation_steps`` below 1, or above 1 with a
            model made with DDP's ``static_graph=True``.

    """

    def __init__(
        self,
        model: Model,
        name: str = '',
        *,
        loader: DataLoader,
        loss: LossBase,
        learning_schema: LearningSchema,
        sync_every: int | None = None,
        checkpoint_timeout: float | None = None,
        async_checkpoint: bool | None = None,
        accumulation_steps: int = 1,
    ) -> None:
        accumulation = Accumulation(accumulation_steps)  # checked first
        if accumulation.steps > 1 and model.ddp_options.static_graph:
            # DDP's static graph expects every backward pass to reduce:
            # under no_sync torch fails an internal assertion in the first
            # backward.  Refused here, in one process too, before a job
            # waits in the queue.
            raise ValueError(
                f'accumulation_steps={accumulation.steps} skips the '
                'gradient all-reduce (no_sync) on all but the last batch '
                f'of a window, which DDP with static_graph=True does not '
                f'support. Make {model.name!r} with static_graph=False, or '
                'use accumulation_steps=1.'
            )
        if not isinstance(loss, LossBase):
            raise TypeError(
                f'loss must be a drytorch.Loss, got {type(loss).__name__}; '
                'wrap the function: Loss(fn, name).'
            )
        super().__init__(
            model, name, loader=loader, objective=loss, sync_every=sync_every
        )
        self.loss = loss
        self.accumulation = accumulation
        self.sync.stride = accumulation.steps
        # the position of the next micro-batch in the epoch's plan, and
        # the plan's length: which window it falls in
        self._micro = 0
        self._micro_total = 0
        #: optimizer steps taken by this trainer (saved in checkpoints): a
        #: per-step schedule's argument
        self.optimizer_steps = 0
        self.learning_schema = learning_schema
        self.optimizer = learning_schema.build_optimizer(model.module)
        # averaged models (EMAModel, SWAModel) update after steps / epochs
        self._after_step = getattr(model, 'post_batch_update', None)
        self._after_epoch = getattr(model, 'post_epoch_update', None)
        self.scaler = torch.amp.GradScaler(
            model.device.type, enabled=model.uses_grad_scaler
        )
        self.validation: Validation | None = None
        self.validation_interval = 1
        self.pre_epoch_hooks: HookRegistry[Trainer] = HookRegistry()
        self.post_epoch_hooks: HookRegistry[Trainer] = HookRegistry()
        self.computed_metrics: dict[str, float] = {}
        self.base_lr: float | dict[str, float] | None = None
        self.terminated: str | None = None
        self.checkpoint_timeout = agreement_timeout(checkpoint_timeout)
        if async_checkpoint is not None:
            set_async = getattr(model.checkpoint, 'set_async', None)
            if set_async is None:
                raise TypeError(
                    f'async_checkpoint needs a LocalCheckpoint; the model '
                    f'{model.name} has a {type(model.checkpoint).__name__}.'
                )
            set_async(async_checkpoint)
        # calls before a later one that another trainer of the same model
        # checkpointed: finished in an earlier attempt (see _auto_resume)
        self._foreign_after = 0
        self._position: Position | None = None
        # (call, end epoch, whether the call has returned)
        self._active: tuple[int | None, int | None, bool] = (None, None, True)
        self._resume_checked = False
        self._in_hooks = False
        self._save_requested = False
        self._agreement = PackedReducer(model.device)
        # bumped whenever the state changes, so that a save of a state
        # already on disk (save_checkpoint() right after train()) is skipped
        self._revision = 0
        # the script's calls so far, as (method, argument), for the record
        self._calls: list[tuple[str, int]] = []
        # saved hook states not yet given to a hook (see trainer_state)
        self._hook_states: dict[int, Any] = {}
        self._last_save: tuple[tuple[Any, ...], str] | None = None
        self._module: torch.nn.Module = model.module
        self.register()

    # ------------------------------------------------------------ set-up
    def add_validation(self, loader: DataLoader, interval: int = 1) -> None:
        """Validate every ``interval`` epochs with the training loss."""
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval!r}.')
        self.validation = Validation(
            self.model,
            'Validation',
            loader=loader,
            metric=self.loss,
            sync_every=self.sync.fixed,
        )
        self.validation_interval = interval

    def terminate_training(self, reason: str) -> None:
        """Stop after the current epoch (on every rank), for ``reason``.

        May be called on one rank only: the ranks agree at the end of the
        epoch, and all stop after it with this reason.
        """
        self.terminated = reason
        self.terminate_requested = True

    def update_learning_rate(
        self,
        base_lr: float | dict[str, float] | None = None,
        scheduler: Any = None,
    ) -> None:
        """Change the base learning rate and/or the schedule from now on."""
        if scheduler is not None:
            self.learning_schema = dataclasses.replace(
                self.learning_schema, scheduler=scheduler
            )
        if base_lr is not None:
            self.base_lr = base_lr
        self._revision += 1
        self._apply_lr()
        log_events.LearningRateEvent(
            model_name=self.model.name,
            source_name=self.name,
            epoch=self.model.epoch,
            base_lr=self.base_lr,
            scheduler_name=repr(self.learning_schema.scheduler),
        )

    # ------------------------------------------------------------ training
    def train(self, n_epochs: int) -> None:
        """Train for ``n_epochs`` more epochs (a whole number)."""
        count = _epoch_count('n_epochs', n_epochs)
        self._train(lambda: self.model.epoch + count, ('train', count))

    def train_until(self, epoch: int) -> None:
        """Train until the model has completed ``epoch`` epochs."""
        target = _epoch_count('epoch', epoch)
        self._train(lambda: target, ('train_until', target), until=target)

    def _train(
        self,
        target: Callable[[], int],
        request: tuple[str, int],
        until: int | None = None,
    ) -> None:
        """Run one training call of the script, resuming it if it was cut.

        Calls are numbered in the order the script makes them; a resumed
        attempt skips the calls that an earlier attempt finished and
        completes the one it was in, towards the target that call had.
        A run resumed on request (``resume=True``) after its earlier
        attempt completed is continued rather than repeated: targets count
        from the restored epoch, so ``train(3)`` trains three more epochs
        and ``train_until(7)`` trains to epoch 7.  A job the scheduler
        requeued repeats its script, and every finished call is skipped.
        """
        call = trainer_state.script_of_run().next_call()
        self._auto_resume()
        if call < self._foreign_after:
            return  # finished before another trainer's checkpoint
        self._calls.append(request)
        trainer_state.restore_hooks(self)
        position = self._position
        resuming = position is not None and position.call == call
        if (
            position is not None
            and position.call is not None
            and (call < position.call or (resuming and position.finished))
        ):
            # finished by an earlier attempt
            if resuming:
                self._position = None
            return
        end = position.end_epoch if resuming and position else None
        if end is None:
            end = target()
        if not resuming:
            self.terminated = None
        if until is not None and until < self.model.epoch and not resuming:
            warnings.warn(
                exceptions.PastEpochWarning(
                    f'The model is already at epoch {self.model.epoch}, '
                    f'past {until}; nothing to train.'
                ),
                stacklevel=3,
            )
        self.terminate_requested = False
        at_boundary = position is None or position.phase == 'done'
        if at_boundary and (
            self.model.epoch >= end or (resuming and self.terminated)
        ):
            # nothing left of this call: an earlier attempt was stopped
            # after its last epoch, before the call returned
            self._position = None
            if resuming:
                self._finish(call, end)
            return
        self._module = self.model.training_module()
        log_events.StartTrainingEvent(
            source_name=self.name,
            model_name=self.model.name,
            start_epoch=self.model.epoch + 1,
            end_epoch=end,
        )
        self._active = (call, end, False)
        try:
            with peers.named(self._where):
                self._epochs(end, call)
        finally:
            self._active = (call, self.model.epoch, True)
            log_events.EndTrainingEvent(source_name=self.name)
        self._finish(call, end)

    def _where(self) -> str:
        """Where training is, for an error that stops it."""
        return (
            f'training {self.model.name} in epoch {self.model.epoch + 1}'
            f' (of {self._active[1]})'
        )

    def _finish(self, call: int, end: int) -> None:
        """Checkpoint the end of a training call.

        A preemption after it (during the test, or between ``train()`` and
        the test) then resumes with the training done: the resumed script
        skips this call and runs only what remains.  Bookkeeping, not a
        user's save: no event is published.
        """
        position = self._position_at(self.model.epoch, 0, 'done', call, end)
        position.finished = True
        self._last_save = (
            self._save_key(position),
            trainer_state.save(self, position, blocking=True),
        )

    def _epochs(self, end: int, call: int) -> None:
        while self.model.epoch < end or self._position is not None:
            position = self._position or Position(self.model.epoch, 0, 'train')
            self._position = None
            epoch = position.epoch
            if position.phase == 'train':
                epoch += 1
                outcome = self._train_epoch(epoch, position.batch, end, call)
                if outcome.preempted:
                    # the flag came with the epoch's last step
                    self._preempt(epoch, 0, 'validate', call, end)
            if position.phase != 'done':
                self._end_epoch(epoch, call, end)
            if self.terminated is not None:
                log_events.TerminatedTrainingEvent(
                    source_name=self.name,
                    model_name=self.model.name,
                    epoch=self.model.epoch,
                    reason=self.terminated,
                )
                break

    def _end_epoch(self, epoch: int, call: int, end: int) -> None:
        """Validation, hooks, then what every rank must agree on.

        Checkpoints that hooks ask for (``SaveEveryEpochs``) are written
        after every hook has run and the stop is agreed, so that they hold
        the epoch's final state: an early stop decided by a later hook, and
        every hook's counters, come back with them.
        """
        preempted = self._validate(epoch, call, end)
        self._in_hooks, self._save_requested = True, False
        try:
            for hook in self.post_epoch_hooks:
                hook(self)
        except exceptions.PreemptedExit:
            # an evaluation run by a hook was preempted (in step on every
            # rank): validation and hooks run again on resume
            self._in_hooks = False
            self._preempt(epoch, 0, 'validate', call, end)
        finally:
            self._in_hooks = False
        log_events.EndEpochEvent(
            source_name=self.name,
            model_name=self.model.name,
            epoch=epoch,
        )
        preempted = self._agree_on_stop(preempted)
        if preempted:
            self._preempt(epoch, 0, 'done', call, end)
        if self._save_requested:
            self._save_requested = False
            self._save(self._position_at(epoch, 0, 'done', call, end))

    def _agree_on_stop(self, preempted: bool) -> bool:
        """Agree on terminate and preempt; True when preempting.

        Under a process group, one small reduction per epoch: after the
        epoch's last sync a hook, or a tracker on rank zero reading the
        validation metrics, may still ask for a stop on one rank only.
        None in one process.
        """
        stop = self.terminated is not None or self.terminate_requested
        if not ranks.is_distributed():
            if stop and self.terminated is None:
                self.terminated = 'requested'
            return preempted or watcher.requested
        flags: set[Flag] = set()
        if stop:
            flags.add(Flag.terminate)
        if preempted or watcher.requested:
            flags.add(Flag.preempt)
        device = self.model.device
        empty = torch.zeros(0, dtype=torch.float64, device=device)
        reduced = self._agreement.reduce(empty, 0, flags)
        if Flag.terminate in reduced.flags:
            self._agree_on_reason()
        return Flag.preempt in reduced.flags

    def _agree_on_reason(self) -> None:
        """Every rank takes the reason of the rank that asked to stop.

        A collective, called only once every rank knows that a stop was
        asked for (from a reduced flag).
        """
        reasons: list[Any] = [None] * ranks.get_world_size()
        dist.all_gather_object(reasons, self.terminated)
        self.terminated = next(
            (r for r in reasons if r), 'requested on another rank'
        )

    def _train_epoch(
        self, epoch: int, start_batch: int, end: int, call: int
    ) -> LoopOutcome:
        if start_batch == 0:
            for hook in self.pre_epoch_hooks:
                hook(self)
            self.accumulator.reset()
        self.terminate_requested = self.terminated is not None
        log_events.StartEpochEvent(
            source_name=self.name,
            model_name=self.model.name,
            epoch=epoch,
            end_epoch=end,
        )
        self._apply_lr()
        plan = self.loader.plan(training=True, epoch=epoch)
        self.accumulation.check_resume(start_batch)
        self.accumulation.plan(plan)
        self._micro, self._micro_total = start_batch, len(plan)
        self._module.train()
        outcome = self.run_loop(
            plan, self._step, start_batch=start_batch, check_finite=True
        )
        if outcome.preempted and not outcome.finished:
            if outcome.terminate and ranks.is_distributed():
                # a stop asked on one rank in this epoch must come back
                # with the checkpoint, on every rank
                self._agree_on_reason()
            self._preempt(epoch - 1, outcome.steps_done, 'train', call, end)
        self.model.epoch = epoch
        if self._after_epoch is not None:
            self._after_epoch()
        self._revision += 1
        self.computed_metrics = outcome.metrics
        if outcome.terminate:
            self.terminate_requested = True
        logged = dict(outcome.metrics)
        if self.learning_schema.per_step:
            # the rate of the epoch's last step: a per-epoch record of a
            # curve that moves every step
            logged['lr'] = self.learning_rate
        log_events.MetricEvent(
            model_name=self.model.name,
            source_name=self.name,
            epoch=epoch,
            metrics=logged,
        )
        return outcome

    def _validate(self, epoch: int, call: int, end: int) -> bool:
        """Validate if due; True when a preemption was signalled."""
        validation = self.validation
        if validation is None or epoch % self.validation_interval:
            return False
        outcome = validation.run()
        if outcome.preempted and not outcome.finished:
            self._preempt(epoch, 0, 'validate', call, end)
        return outcome.preempted

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info['learning_schema'] = self.learning_schema
        info['accumulation_steps'] = self.accumulation.steps
        return info
