"""A trainer's checkpoint: what it holds, who writes it, who chooses it.

Rules kept here, for every rank and every path:

- every rank's random streams and partial sums are gathered into the
  checkpoint, so each rank gets its own back (new ranks derive theirs);
- rank zero alone writes, and every rank learns the outcome: a failed write
  (disk full, permissions, a file where the folder should be) stops every
  rank within seconds with the real cause, and the wait for a slow write has
  its own timeout (``Trainer(checkpoint_timeout=...)``), not the process
  group's;
- rank zero alone chooses the checkpoint to resume from, and every rank
  loads that one: a file unreadable on one rank cannot make the ranks
  resume at different positions.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import warnings
import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from drytorch.core import exceptions
from drytorch.core.experimenting import Experiment
from drytorch.distributed import agreement, ranks
from drytorch.lib import elastic, sharded_checkpoints
from drytorch.lib.resume import Position, rng_state, stream_for_rank

if TYPE_CHECKING:
    from drytorch.lib.models import Model
    from drytorch.lib.training import Trainer

__all__ = [
    'choose_and_read',
    'clean_leftovers',
    'collect',
    'restore',
    'restore_hooks',
    'save',
    'script_of_run',
]

CHECKPOINT_FORMAT = 1


def _hooks(trainer: Trainer) -> list[Any]:
    return [*trainer.pre_epoch_hooks, *trainer.post_epoch_hooks]


def collect(
    trainer: Trainer, position: Position, *, in_parts: bool = False
) -> dict[str, Any]:
    """The full training state at ``position`` (collective: gathers).

    A sharded model's weights and optimizer state are gathered here too,
    on every rank (rank zero gets them, the writer).  ``in_parts`` leaves
    them out (each rank writes its own, see ``sharded_checkpoints``):
    the model's epoch count is then ``model_epoch``, and an optimizer that
    has not stepped yet keeps its parameter groups here.
    """
    mine = {
        'rng': rng_state(trainer.model.device),
        'accumulator': trainer.accumulator.state_dict(),
        # names the folder every rank writes a checkpoint in parts into
        'pid': os.getpid(),
        # an iterable data set's position on this rank (None: map-style)
        'data': trainer.loader.stream_state(),
    }
    per_rank: list[Any] = [mine]
    if ranks.is_distributed():
        per_rank = [None] * ranks.get_world_size()
        dist.all_gather_object(per_rank, mine)
    validation = trainer.validation
    run = Experiment.get_current().run
    model = trainer.model
    weights: dict[str, Any] = {'model_epoch': model.epoch}
    if not in_parts:
        weights = {
            'model': model.state_dict(),
            'optimizer': model.optimizer_state_dict(trainer.optimizer),
        }
    elif not trainer.optimizer.state:  # nothing in the parts
        weights['optimizer'] = model.optimizer_state_dict(trainer.optimizer)
    return {
        'format': CHECKPOINT_FORMAT,
        **weights,
        'scaler': trainer.scaler.state_dict(),
        'base_lr': trainer.base_lr,
        'scheduler': trainer.learning_schema.scheduler,
        'optimizer_steps': trainer.optimizer_steps,
        'loader': {
            **trainer.loader.state_dict(),
            # the global position: samples of the epoch's order done
            'sample_cursor': trainer.loader.sample_cursor(position.batch)
            if position.phase == 'train'
            else None,
        },
        'position': dataclasses.asdict(position),
        'metrics': trainer.computed_metrics,
        'validation_metrics': dict(validation.computed_metrics)
        if validation
        else {},
        'terminated': trainer.terminated,
        'hooks': [
            (type(h).__name__, h.state_dict())
            if hasattr(h, 'state_dict')
            else None
            for h in _hooks(trainer)
        ],
        'ranks': per_rank,
        'world_size': ranks.get_world_size(),
        'run': {'id': run.id, 'attempt': run.attempt},
        'trainer': trainer.name,
    }


def restore(trainer: Trainer, state: dict[str, Any]) -> Position | None:
    """Put ``state`` back; the position to continue from (None: a fresh one).

    At an epoch boundary any number of ranks can continue.  Inside an
    epoch another number of ranks continues when the global batch is kept
    (``drytorch.lib.elastic``): the epoch goes on from its global sample
    cursor, dealt to the ranks there are now, and rank zero carries the
    saved ranks' partial metric sums.  Ranks the checkpoint did not know
    get streams derived from the saved ones (``resume.stream_for_rank``).
    """
    position = Position(**state['position'])
    world = ranks.get_world_size()
    saved_world = int(state['world_size'])
    elastic_resume = position.phase == 'train' and saved_world != world
    if elastic_resume:
        elastic.check_world_change(trainer.loader, state, world)
    load_weights(trainer.model, state, trainer.optimizer)
    trainer.scaler.load_state_dict(state['scaler'])
    trainer.base_lr = state['base_lr']
    # a per-step schedule's argument (0 in checkpoints that predate it)
    trainer.optimizer_steps = int(state.get('optimizer_steps', 0))
    trainer.learning_schema = dataclasses.replace(
        trainer.learning_schema, scheduler=state['scheduler']
    )
    trainer.loader.load_state_dict(state['loader'])
    trainer.computed_metrics = dict(state['metrics'])
    if trainer.validation is not None:
        trainer.validation.computed_metrics = dict(
            state.get('validation_metrics', {})
        )
    trainer.terminated = state.get('terminated')
    trainer._hook_states = dict(enumerate(state['hooks']))
    restore_hooks(trainer)
    per_rank = state['ranks']
    rank = ranks.get_rank()
    if script_of_run().takes_streams_of(position.call):
        stream_for_rank(per_rank, rank, trainer.model.device)
    if elastic_resume:
        trainer.accumulator.load_state_dict(
            elastic.merged_accumulator(per_rank, rank)
        )
    elif position.phase == 'train':
        trainer.accumulator.load_state_dict(per_rank[rank]['accumulator'])
        trainer.loader.load_stream_state(per_rank[rank].get('data'))
    if position.phase == 'done' and position.call is None:
        return None
    return position


def load_weights(
    model: Model,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """The model's (and optimizer's) state from a checkpoint of either kind.

    A checkpoint in parts is read here, each rank its share in its own
    layout (a collective: every rank calls it); a single file's state is
    already in ``state``.
    """
    if 'parts' not in state:
        model.load_state_dict(state['model'])
        if optimizer is not None:
            model.load_optimizer_state_dict(optimizer, state['optimizer'])
        return
    in_file = 'optimizer' in state  # it had not stepped
    sharded_checkpoints.load_parts(
        model,
        optimizer,
        pathlib.Path(state['parts']),
        with_optimizer=not in_file,
    )
    model.epoch = int(state['model_epoch'])
    if optimizer is not None and in_file:
        model.load_optimizer_state_dict(optimizer, state['optimizer'])


class ScriptState:
    """What the trainers of one attempt of a run share: the script's calls.

    Training calls are numbered across every trainer and model of the run,
    so that checkpoints of different models and trainers are ordered in
    the script.  The random streams are the process's, not a model's: of
    the checkpoints restored, the one latest in the script gives them (a
    second model's older checkpoint must not rewind them).
    """

    def __init__(self) -> None:
        self.calls = 0
        self.streams_from = -1

    def next_call(self) -> int:
        self.calls += 1
        return self.calls

    def takes_streams_of(self, call: int | None) -> bool:
        """Whether a checkpoint of ``call`` restores the random streams.

        A checkpoint the user loads by hand (no call) always does.
        """
        if call is None:
            return True
        if call < self.streams_from:
            return False
        self.streams_from = call
        return True


_scripts: weakref.WeakKeyDictionary[Any, ScriptState] = (
    weakref.WeakKeyDictionary()
)


def script_of_run() -> ScriptState:
    """The shared state of the running run's script (made on first use)."""
    run = Experiment.get_current().run
    script = _scripts.get(run)
    if script is None:
        script = _scripts[run] = ScriptState()
    return script


def restore_hooks(trainer: Trainer) -> None:
    """Give the hooks present now their saved states, once each.

    Called at the restore and again at every training call: a hook that the
    script appends between two calls gets its state when it is there.  A
    state goes only to a hook of the class that saved it, at the same place
    in the hook lists.
    """
    pending = trainer._hook_states
    for index, hook in enumerate(_hooks(trainer)):
        saved = pending.get(index)
        if saved is None or not hasattr(hook, 'load_state_dict'):
            continue
        if isinstance(saved, tuple) and len(saved) == 2:
            name, hook_state = saved
            if name != type(hook).__name__:
                continue
        else:  # checkpoints written before hook states carried the class
            hook_state = saved
        hook.load_state_dict(hook_state)
        del pending[index]


def _score(trainer: Trainer) -> float | None:
    """The value that retention ranks checkpoints by (None: no ranking).

    The checkpoint's monitored metric (``LocalCheckpoint(monitor=...)``,
    the loss by default), from the validation when it ran, else training.
    """
    checkpoint = trainer.model.checkpoint
    if not getattr(checkpoint, 'keep_best', 0):
        return None
    name = getattr(checkpoint, 'monitor', None) or trainer.loss.name
    validation = trainer.validation
    sources = (
        validation.computed_metrics if validation else {},
        trainer.computed_metrics,
    )
    for metrics in sources:
        value = metrics.get(name)
        if value is not None and math.isfinite(value):
            return float(value)
    known = sorted({k for metrics in sources for k in metrics})
    if known and all(name not in metrics for metrics in sources):
        warnings.warn(
            exceptions.DryTorchWarning(
                f'keep_best ranks checkpoints by {name!r}, which this '
                f'trainer does not report (it reports {known}); no '
                'checkpoint is kept as a best. Pass one of those as '
                '`LocalCheckpoint(monitor=...)`.'
            ),
            stacklevel=4,
        )
    return None


def save(
    trainer: Trainer, position: Position, *, blocking: bool = False
) -> str:
    """Gather, let rank zero write, and tell every rank how it went.

    A checkpoint in parts is written by every rank, in the background
    when its store says so, unless ``blocking`` (a preemption's, the last
    of a training call): that one is on disk when this returns.
    """
    checkpoint = trainer.model.checkpoint
    if getattr(checkpoint, 'sharded', False):
        return _save_parts(trainer, position, blocking)
    state = collect(trainer, position)
    score = _score(trainer)

    def write() -> str:
        try:
            if score is None:
                return checkpoint.save(state, position.epoch, position.batch)
            return checkpoint.save(
                state, position.epoch, position.batch, score=score
            )
        except OSError as err:
            raise exceptions.CheckpointWriteError(
                checkpoint.directory, f'{err.__class__.__name__}: {err}'
            ) from err

    return agreement.on_rank_zero(
        write,
        'write a checkpoint',
        trainer.checkpoint_timeout,
        failure=lambda cause: exceptions.CheckpointWriteError(
            checkpoint.directory, f'on rank zero, {cause}'
        ),
    )


def _save_parts(trainer: Trainer, position: Position, blocking: bool) -> str:
    """Every rank writes its part of the checkpoint; rank zero the rest."""
    checkpoint = trainer.model.checkpoint
    checkpoint.wait(trainer.checkpoint_timeout)  # before the state moves on
    state = collect(trainer, position, in_parts=True)
    parts = sharded_checkpoints.parts_of(trainer.model, trainer.optimizer)
    background = checkpoint.async_checkpoint and not blocking
    return checkpoint.save_parts(
        parts,
        state,
        position.epoch,
        position.batch,
        writer_pid=int(state['ranks'][0]['pid']),
        score=_score(trainer),
        timeout=trainer.checkpoint_timeout,
        background=background,
    )


def wait_for_writes(trainer: Trainer) -> None:
    """Wait for the model's background checkpoint write (collective)."""
    wait = getattr(trainer.model.checkpoint, 'wait', None)
    if wait is not None:
        wait(trainer.checkpoint_timeout)


def choose_and_read(
    trainer: Trainer, epoch: int, *, mid_epoch: bool, required: bool
) -> tuple[dict[str, Any], str] | None:
    """Rank zero's choice of checkpoint, read on every rank (collective).

    Returns None when there is none and ``required`` is false; raises
    :class:`~drytorch.core.exceptions.CheckpointNotFoundError` on every
    rank when there is none and it is required.
    """
    checkpoint = trainer.model.checkpoint
    device = trainer.model.device
    mine: dict[str, Any] = {}
    wait_for_writes(trainer)  # the checkpoint being written may be the one

    def choose() -> str | None:
        try:
            state, info = checkpoint.load(
                epoch, mid_epoch=mid_epoch, map_location=device
            )
        except exceptions.CheckpointNotFoundError:
            return None
        mine['state'] = state
        return str(info.path)

    path = agreement.on_rank_zero(
        choose, 'choose a checkpoint', trainer.checkpoint_timeout
    )
    if path is None:
        if required:
            raise exceptions.CheckpointNotFoundError(
                checkpoint.directory, epoch
            )
        return None
    problem = None
    if 'state' not in mine:
        try:
            mine['state'] = checkpoint.read(path, map_location=device)
        except exceptions.DryTorchError as err:
            problem = str(err)
    agreement.all_ranks_ok(
        problem,
        'read the checkpoint rank zero chose',
        trainer.checkpoint_timeout,
    )
    return mine['state'], path


def clean_leftovers(trainer: Trainer) -> None:
    """Remove what killed writes left in the checkpoint folder (rank zero)."""
    if not ranks.is_rank_zero():
        return
    clean = getattr(trainer.model.checkpoint, 'clean_leftovers', None)
    if clean is not None:
        clean()
