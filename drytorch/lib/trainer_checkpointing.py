"""The trainer's checkpoints: save, load, restore on resume, preempt.

A part of :class:`~drytorch.lib.training.Trainer` of its own, because it
holds the rules that make a resumed script repeat or continue exactly:
which position a checkpoint records (the script's training call, its
target, whether it returned), when the same state is not written twice,
and how a resumed run finds its checkpoint (rank zero chooses, every rank
reads it; one of another trainer of the same model only says which calls
are done).  What the checkpoint holds and who writes it is in
``trainer_state``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from drytorch.core import exceptions, log_events
from drytorch.core.experimenting import Experiment
from drytorch.core.tracking import EventDispatcher
from drytorch.lib import trainer_state
from drytorch.lib.resume import Position

if TYPE_CHECKING:
    from drytorch.lib.models import Model

__all__ = ['Checkpointing']


class Checkpointing:
    """Checkpoint methods of the trainer (a mixin of ``Trainer`` only)."""

    if TYPE_CHECKING:
        model: Model
        name: str
        _position: Position | None
        _active: tuple[int | None, int | None, bool]
        _calls: list[tuple[str, int]]
        _revision: int
        _last_save: tuple[tuple[Any, ...], str] | None
        _resume_checked: bool
        _in_hooks: bool
        _save_requested: bool
        _foreign_after: int

        def _apply_lr(self) -> None: ...

    def state_dict(self, position: Position | None = None) -> dict[str, Any]:
        """Everything needed to continue exactly (collective: gathers).

        Every rank must call it: the random states and partial metric sums
        of all ranks are gathered so that each rank gets its own back.
        """
        position = position or Position(self.model.epoch, 0, 'done')
        return trainer_state.collect(self, position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint written by :meth:`state_dict`."""
        self._position = trainer_state.restore(self, state)
        self._revision += 1
        self._apply_lr()

    def save_checkpoint(self) -> None:
        """Save the full training state at the current epoch (all ranks).

        The position records which ``train`` call of the script was running
        and its last epoch, so that a resumed script skips the calls that
        had finished and completes the one that had not.  Called from a
        post-epoch hook, the write waits until every hook has run.
        """
        if self._in_hooks:
            self._save_requested = True
            return
        call, end, finished = self._active
        position = self._position_at(self.model.epoch, 0, 'done', call, end)
        position.finished = finished
        self._save(position)

    def _position_at(
        self, epoch: int, batch: int, phase: str, call: Any, end: Any
    ) -> Position:
        """A position of the current call, with the script's calls so far."""
        return Position(
            epoch, batch, phase, call, end, calls=list(self._calls)
        )

    def _save_key(self, position: Position) -> tuple[Any, ...]:
        return (self._revision, *dataclasses.astuple(position))

    def _save(self, position: Position, *, blocking: bool = False) -> str:
        key = self._save_key(position)
        if self._last_save is not None and self._last_save[0] == key:
            location = self._last_save[1]  # this very state is on disk
        else:
            # what the trackers store must cover what the checkpoint
            # covers: a SIGKILL after the write then loses nothing that a
            # resume from it would not publish again (rank zero's worker
            # only; no-op elsewhere, and no collective)
            dispatcher = EventDispatcher.active()
            if dispatcher is not None:
                dispatcher.flush()
            location = trainer_state.save(self, position, blocking=blocking)
            self._last_save = (key, location)
        if blocking:  # this state may be the one in flight
            trainer_state.wait_for_writes(self)
        log_events.SaveModelEvent(
            model_name=self.model.name,
            definition='checkpoint',
            location=location,
            epoch=self.model.epoch,
        )
        return location

    def load_checkpoint(self, epoch: int = -1) -> None:
        """Load the full training state of ``epoch`` (-1: the newest).

        Rank zero chooses the file; every rank loads that one.
        """
        chosen = trainer_state.choose_and_read(
            self, epoch, mid_epoch=epoch < 0, required=True
        )
        assert chosen is not None
        state, location = chosen
        self.load_state_dict(state)
        # The caller chose this state: the automatic restore of a resumed
        # run must not replace it with the newest checkpoint at the next
        # train() call (which then trained nothing, or from elsewhere).
        # The newest checkpoint of a resumed run, loaded before training,
        # is what that restore would load: the script's calls still match.
        run = Experiment.get_current().run
        as_resume = epoch < 0 and not self._resume_checked and run.resumed
        self._resume_checked = True
        if not as_resume or (
            run.previous_status == 'completed' and not run.requeued
        ):
            self._forget_calls()
        log_events.LoadModelEvent(
            model_name=self.model.name,
            definition='checkpoint',
            location=location,
            epoch=self.model.epoch,
        )

    def _forget_calls(self) -> None:
        """Treat the restored state as a fresh start for the script's calls."""
        if self._position is not None:
            self._position.call = None
            self._position.end_epoch = None
            if self._position.phase == 'done':
                self._position = None

    def _auto_resume(self) -> None:
        """On a resumed run, restore the newest checkpoint once.

        A completed run resumed on request is continued, a requeued one
        repeated (see :meth:`_train`).
        """
        if self._resume_checked:
            return
        self._resume_checked = True
        run = Experiment.get_current().run
        trainer_state.clean_leftovers(self)
        if not run.resumed:
            return
        chosen = trainer_state.choose_and_read(
            self, -1, mid_epoch=True, required=False
        )
        if chosen is None:
            return
        state, location = chosen
        continued = run.previous_status == 'completed' and not run.requeued
        if state.get('trainer', self.name) != self.name:
            # another trainer of this model (pretraining, then fine-tuning)
            # wrote it, later in the script: this trainer's calls before it
            # are done, and its own state is not in there
            if continued:
                trainer_state.load_weights(self.model, state)
            else:
                self._foreign_after = Position(**state['position']).call or 0
            return
        self.load_state_dict(state)
        if continued:
            self._forget_calls()
        log_events.LoadModelEvent(
            model_name=self.model.name,
            definition='checkpoint',
            location=location,
            epoch=self.model.epoch,
        )

    def _preempt(
        self, epoch: int, batch: int, phase: str, call: int, end: int
    ) -> None:
        """Checkpoint the exact position, then leave with 'requeue me'."""
        self._save(
            self._position_at(epoch, batch, phase, call, end), blocking=True
        )
        raise exceptions.PreemptedExit(
            f'Preempted at epoch {epoch}, batch {batch}; the checkpoint is '
            'saved and the run will resume there.'
        )
