"""The trainer: epochs of optimisation, validation, hooks and checkpoints.

Every rank runs the same code: hooks see global metrics, so they take the
same decisions everywhere; checkpoints are gathered (every rank's random
state and partial sums) and written by rank zero alone.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from drytorch.core import exceptions, log_events
from drytorch.core.experimenting import Experiment
from drytorch.distributed import ranks
from drytorch.distributed.preemption import watcher
from drytorch.lib.evaluations import Validation, _compute
from drytorch.lib.learning import LearningSchema
from drytorch.lib.loading import DataLoader
from drytorch.lib.models import Model
from drytorch.lib.objectives import LossBase
from drytorch.lib.runners import LoopOutcome, Runner, to_device, unpack_batch

__all__ = ['Trainer']

Hook = Callable[['Trainer'], None]
CHECKPOINT_FORMAT = 1


@dataclasses.dataclass
class _Position:
    """Where a restored trainer continues inside the epoch loop.

    ``phase`` is 'train' (``batch`` batches of epoch ``epoch + 1`` done),
    'validate' (epoch ``epoch`` trained, validation and hooks pending) or
    'done' (epoch ``epoch`` complete).
    """

    epoch: int
    batch: int
    phase: str
    call: int | None = None
    end_epoch: int | None = None


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {
        'python': random.getstate(),
        'numpy': np.random.get_state(),
        'torch': torch.get_rng_state(),
    }
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    # generators take their state as a CPU tensor; a checkpoint loaded with
    # map_location on a GPU brings it there
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and device.type == 'cuda':
        torch.cuda.set_rng_state(state['cuda'].cpu(), device)


class Trainer(Runner):
    """Trains a model with a loss and a learning schema.

    Args:
        model: the model to train.
        name: the source name in logs; 'Trainer' by default.
        loader: the training data.
        loss: the loss to minimise (its components are logged too).
        learning_schema: optimiser, learning-rate schedule and clipping.
        sync_every: steps between sync points (None: adaptive).

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
    ) -> None:
        if not isinstance(loss, LossBase):
            raise TypeError(
                f'loss must be a drytorch.Loss, got {type(loss).__name__}; '
                'wrap the function: Loss(fn, name).'
            )
        super().__init__(
            model, name, loader=loader, objective=loss, sync_every=sync_every
        )
        self.loss = loss
        self.learning_schema = learning_schema
        self.optimizer = learning_schema.build_optimizer(model.module)
        use_scaler = model.mixed_precision and model.device.type == 'cuda'
        self.scaler = torch.amp.GradScaler(
            model.device.type, enabled=use_scaler
        )
        self.validation: Validation | None = None
        self.validation_interval = 1
        self.pre_epoch_hooks: list[Hook] = []
        self.post_epoch_hooks: list[Hook] = []
        self.metrics: dict[str, float] = {}
        self.base_lr: float | dict[str, float] | None = None
        self.terminated: str | None = None
        self._train_calls = 0
        self._position: _Position | None = None
        self._active: tuple[int | None, int | None] = (None, None)
        self._resume_checked = False
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
        """Stop after the current epoch (on every rank), for ``reason``."""
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
        self._apply_lr()
        log_events.LearningRateEvent(
            model_name=self.model.name,
            source_name=self.name,
            epoch=self.model.epoch,
            base_lr=self.base_lr,
            scheduler_name=repr(self.learning_schema.scheduler),
        )

    def _apply_lr(self) -> None:
        self.learning_schema.apply_learning_rate(
            self.optimizer, self.model.epoch, base_lr=self.base_lr
        )

    # ------------------------------------------------------------ training
    def train(self, n_epochs: int) -> None:
        """Train for ``n_epochs`` more epochs."""
        if n_epochs < 0:
            raise ValueError(f'n_epochs must be >= 0, got {n_epochs!r}.')
        self._train(lambda: self.model.epoch + n_epochs)

    def train_until(self, epoch: int) -> None:
        """Train until the model has completed ``epoch`` epochs."""
        if epoch < self.model.epoch:
            warnings.warn(
                exceptions.DryTorchWarning(
                    f'The model is already at epoch {self.model.epoch}, '
                    f'past {epoch}; nothing to train.'
                ),
                stacklevel=2,
            )
        self._train(lambda: epoch)

    def _train(self, target: Callable[[], int]) -> None:
        self._train_calls += 1
        call = self._train_calls
        self._auto_resume()
        position = self._position
        if position is not None and position.call is not None:
            if call < position.call:
                return
            end = position.end_epoch or target()
        else:
            end = target()
        self.terminated = None
        self.terminate_requested = False
        if end <= self.model.epoch and position is None:
            return
        self._module = self.model.training_module()
        log_events.StartTrainingEvent(
            source_name=self.name,
            model_name=self.model.name,
            start_epoch=self.model.epoch + 1,
            end_epoch=end,
        )
        self._active = (call, end)
        try:
            self._epochs(end, call)
        finally:
            self._active = (call, self.model.epoch)
            log_events.EndTrainingEvent(source_name=self.name)

    def _epochs(self, end: int, call: int) -> None:
        while self.model.epoch < end or self._position is not None:
            position = self._position or _Position(
                self.model.epoch, 0, 'train'
            )
            self._position = None
            epoch = position.epoch + 1
            if position.phase == 'train':
                outcome = self._train_epoch(epoch, position.batch, end, call)
                pending = outcome.preempted
            else:
                pending, epoch = False, position.epoch
                self.terminate_requested = False
            if position.phase in ('train', 'validate'):
                if pending:
                    self._preempt(epoch, 0, 'validate', call, end)
                pending = self._validate(epoch, call, end) or pending
                for hook in self.post_epoch_hooks:
                    hook(self)
                log_events.EndEpochEvent(
                    source_name=self.name,
                    model_name=self.model.name,
                    epoch=epoch,
                )
            if pending or (not ranks.is_distributed() and watcher.requested):
                self._preempt(epoch, 0, 'done', call, end)
            if self.terminated is not None or self.terminate_requested:
                reason = self.terminated or 'requested on another rank'
                log_events.TerminatedTrainingEvent(
                    source_name=self.name,
                    model_name=self.model.name,
                    epoch=self.model.epoch,
                    reason=reason,
                )
                break

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
        self._module.train()
        outcome = self.run_loop(
            plan, self._step, start_batch=start_batch, check_finite=True
        )
        if outcome.preempted and not outcome.finished:
            self._preempt(epoch - 1, outcome.steps_done, 'train', call, end)
        self.model.epoch = epoch
        self.metrics = outcome.metrics
        if outcome.terminate and self.terminated is None:
            self.terminate_requested = True
        log_events.MetricEvent(
            model_name=self.model.name,
            source_name=self.name,
            epoch=epoch,
            metrics=dict(outcome.metrics),
        )
        return outcome

    def _step(self, batch: Any, n: int) -> None:
        inputs, targets = unpack_batch(batch, self.name)
        device = self.model.device
        inputs = to_device(inputs, device)
        targets = to_device(targets, device)
        with self.model.autocast():
            outputs = self._module(inputs)
            values = _compute(self.loss, outputs, targets, self.name)
        loss = self.loss.criterion(values)
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.scaler
        schema = self.learning_schema
        clip = (
            schema.clip_grad_norm is not None
            or schema.clip_grad_value is not None
        )
        if scaler.is_enabled():
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(self.optimizer)
                schema.clip_gradients(self.model.module.parameters())
            scaler.step(self.optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip:
                schema.clip_gradients(self.model.module.parameters())
            self.optimizer.step()
        self.accumulator.add(values, n)

    def _validate(self, epoch: int, call: int, end: int) -> bool:
        """Validate if due; True when a preemption was signalled."""
        validation = self.validation
        if validation is None or epoch % self.validation_interval:
            return False
        outcome = validation.run()
        if outcome.preempted and not outcome.finished:
            self._preempt(epoch, 0, 'validate', call, end)
        return outcome.preempted

    # ------------------------------------------------------------ state
    def state_dict(self, position: _Position | None = None) -> dict[str, Any]:
        """Everything needed to continue exactly (collective: gathers).

        Every rank must call it: the random states and partial metric sums
        of all ranks are gathered so that each rank gets its own back.
        """
        position = position or _Position(self.model.epoch, 0, 'done')
        mine = {
            'rng': _rng_state(self.model.device),
            'accumulator': self.accumulator.state_dict(),
        }
        per_rank: list[Any] = [mine]
        if ranks.is_distributed():
            per_rank = [None] * ranks.get_world_size()
            dist.all_gather_object(per_rank, mine)
        hooks = self.pre_epoch_hooks + self.post_epoch_hooks
        run = Experiment.get_current().run
        return {
            'format': CHECKPOINT_FORMAT,
            'model': self.model.state_dict(),
            'optimizer': self.optimizer.state_dict(),
            'scaler': self.scaler.state_dict(),
            'base_lr': self.base_lr,
            'scheduler': self.learning_schema.scheduler,
            'loader': self.loader.state_dict(),
            'position': dataclasses.asdict(position),
            'metrics': self.metrics,
            'terminated': self.terminated,
            'hooks': [
                h.state_dict() if hasattr(h, 'state_dict') else None
                for h in hooks
            ],
            'ranks': per_rank,
            'world_size': ranks.get_world_size(),
            'run': {'id': run.id, 'attempt': run.attempt},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint written by :meth:`state_dict`."""
        position = _Position(**state['position'])
        world = ranks.get_world_size()
        saved_world = int(state['world_size'])
        if position.phase == 'train' and saved_world != world:
            raise exceptions.WorldSizeChangedError(saved_world, world)
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scaler.load_state_dict(state['scaler'])
        self.base_lr = state['base_lr']
        self.learning_schema = dataclasses.replace(
            self.learning_schema, scheduler=state['scheduler']
        )
        self.loader.load_state_dict(state['loader'])
        self.metrics = dict(state['metrics'])
        hooks = self.pre_epoch_hooks + self.post_epoch_hooks
        for hook, hook_state in zip(hooks, state['hooks'], strict=False):
            if hook_state is not None and hasattr(hook, 'load_state_dict'):
                hook.load_state_dict(hook_state)
        per_rank = state['ranks']
        mine = per_rank[ranks.get_rank() % len(per_rank)]
        _set_rng_state(mine['rng'], self.model.device)
        if position.phase == 'train':
            self.accumulator.load_state_dict(mine['accumulator'])
        self._position = None if position.phase == 'done' else position
        if position.phase == 'done' and position.call is not None:
            self._position = position
        self._apply_lr()

    def save_checkpoint(self) -> None:
        """Save the full training state at the current epoch (all ranks).

        The position records which ``train`` call of the script was running
        and its last epoch, so that a resumed script skips the calls that
        had finished and completes the one that had not.
        """
        call, end = self._active
        self._save(_Position(self.model.epoch, 0, 'done', call, end))

    def _save(self, position: _Position) -> str:
        state = self.state_dict(position)
        location = ''
        if ranks.is_rank_zero():
            location = self.model.checkpoint.save(
                state, position.epoch, position.batch
            )
        ranks.barrier()
        log_events.SaveModelEvent(
            model_name=self.model.name,
            definition='checkpoint',
            location=location,
            epoch=self.model.epoch,
        )
        return location

    def load_checkpoint(self, epoch: int = -1) -> None:
        """Load the full training state of ``epoch`` (-1: the newest)."""
        state, info = self.model.checkpoint.load(
            epoch, mid_epoch=epoch < 0, map_location=self.model.device
        )
        self.load_state_dict(state)
        # The caller chose this state: the automatic restore of a resumed
        # run must not replace it with the newest checkpoint at the next
        # train() call (which then trained nothing, or from elsewhere).
        self._resume_checked = True
        if self._position is not None:
            self._position.call = None
            self._position.end_epoch = None
            if self._position.phase == 'done':
                self._position = None
        log_events.LoadModelEvent(
            model_name=self.model.name,
            definition='checkpoint',
            location=str(info.path),
            epoch=self.model.epoch,
        )

    def _auto_resume(self) -> None:
        """On a resumed run, restore the newest checkpoint once."""
        if self._resume_checked:
            return
        self._resume_checked = True
        run = Experiment.get_current().run
        if not run.resumed:
            return
        try:
            state, info = self.model.checkpoint.load(
                -1, map_location=self.model.device
            )
        except exceptions.CheckpointNotFoundError:
            return
        self.load_state_dict(state)
        log_events.LoadModelEvent(
            model_name=self.model.name,
            definition='checkpoint',
            location=str(info.path),
            epoch=self.model.epoch,
        )

    def _preempt(
        self, epoch: int, batch: int, phase: str, call: int, end: int
    ) -> None:
        """Checkpoint the exact position, then leave with 'requeue me'."""
        self._save(_Position(epoch, batch, phase, call, end))
        raise exceptions.PreemptedExit(
            f'Preempted at epoch {epoch}, batch {batch}; the checkpoint is '
            'saved and the run will resume there.'
        )

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info['learning_schema'] = self.learning_schema
        return info
