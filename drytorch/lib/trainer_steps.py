"""The trainer's optimisation step: micro-batches, windows, learning rates.

A part of :class:`~drytorch.lib.training.Trainer` of its own: what one
loader batch does (forward, weighted backward, under ``no_sync`` inside
an accumulation window, see ``accumulation``), the optimizer step that
closes a window (clipping, the gradient scaler), and the learning rate it
steps with (of the epoch, or of the step for a ``per_step()`` schedule,
which counts ``optimizer_steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drytorch.lib.evaluations import _compute
from drytorch.lib.runners import to_device, unpack_batch

if TYPE_CHECKING:
    import torch

    from drytorch.lib.accumulation import Accumulation
    from drytorch.lib.learning import LearningSchema
    from drytorch.lib.models import Model
    from drytorch.lib.objectives import LossBase, MetricAccumulator

__all__ = ['Stepping']


class Stepping:
    """Step methods of the trainer (a mixin of ``Trainer`` only)."""

    if TYPE_CHECKING:
        model: Model
        name: str
        loss: LossBase
        learning_schema: LearningSchema
        optimizer: torch.optim.Optimizer
        scaler: torch.amp.GradScaler
        accumulation: Accumulation
        accumulator: MetricAccumulator
        base_lr: float | dict[str, float] | None
        optimizer_steps: int
        _micro: int
        _micro_total: int
        _module: torch.nn.Module
        _after_step: Callable[[], None] | None

    def _apply_lr(self) -> None:
        """Set the scheduled rate: of the epoch, or of the next step."""
        schema = self.learning_schema
        count = self.optimizer_steps if schema.per_step else self.model.epoch
        schema.apply_learning_rate(self.optimizer, count, base_lr=self.base_lr)

    @property
    def learning_rate(self) -> float:
        """The rate of the first parameter group, as the optimizer has it."""
        return float(self.optimizer.param_groups[0]['lr'])

    def _pushed(self, means: dict[str, float]) -> dict[str, float]:
        """With a per-step schedule, the rate rides with the running means.

        It is no metric (never reduced, never in ``computed_metrics``);
        the progress bar and TensorBoard's batch scalars show it.
        """
        if not self.learning_schema.per_step:
            return means
        return {**means, 'lr': self.learning_rate}

    def _step(self, batch: Any, n: int) -> None:
        """One micro-batch: forward, backward, and the step of its window.

        With ``accumulation_steps=1`` every batch is a window of its own.
        """
        position = self._micro
        self._micro += 1
        accumulation = self.accumulation
        if accumulation.opens(position):
            self.optimizer.zero_grad(set_to_none=True)
        closes = accumulation.closes(position, self._micro_total)
        inputs, targets = unpack_batch(batch, self.name)
        device = self.model.device
        inputs = to_device(inputs, device)
        targets = to_device(targets, device)
        scaler = self.scaler
        with accumulation.gradient_sync(
            self._module, self.model.module, closes
        ):
            with self.model.autocast():
                outputs = self._module(inputs)
                values = _compute(self.loss, outputs, targets, self.name)
            loss = self.loss.criterion(values)
            if accumulation.steps > 1:
                loss = loss * accumulation.weight(position)
            if scaler.is_enabled():
                scaler.scale(loss).backward()
            else:
                loss.backward()
        if closes:
            self._optimizer_step()
        self.accumulator.add(values, n)

    def _optimizer_step(self) -> None:
        """Clip, then step the optimizer (and the gradient scaler).

        A per-step schedule sets the rate of this step first.
        """
        scaler = self.scaler
        schema = self.learning_schema
        if schema.per_step:
            self._apply_lr()
        clip = schema.modifies_gradients
        if scaler.is_enabled():
            if clip:
                scaler.unscale_(self.optimizer)
                schema.clip_gradients(self.model.module.parameters())
            scaler.step(self.optimizer)
            scaler.update()
        else:
            if clip:
                schema.clip_gradients(self.model.module.parameters())
            self.optimizer.step()
        self.optimizer_steps += 1
        if self._after_step is not None:  # an averaged model's update
            self._after_step()
