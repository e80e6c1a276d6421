"""The fault matrix's reference training, stoppable at every kind of place.

One attempt of a small seeded training that uses every stateful piece a
resume has to bring back: an MLP with BatchNorm (running buffers) and
dropout (random state), Adam, validation every epoch, a plateau hook and an
early stop that both hold counters, ``SaveEveryEpochs(1)``, a
``drytorch.Test`` at the end, and the CSV, SQLite, TensorBoard and W&B
(offline) trackers.  Both hooks use a large ``min_delta``, so that what they
do does not hang on the noise of the losses: the learning rate halves at
every epoch from the second on, and the early stop ends the four epochs
asked for after the third.  A resume that loses either counter changes the
learning rate or the number of epochs, and so the weights.

A cue (first attempt only) stops the attempt at one place:

- ``--where``: ``first_batch`` (training pass ``--at``), ``mid_batch``,
  ``last_batch``, ``validation``, ``test`` (forward passes counted per
  phase), ``post_epoch_hook`` (at epoch ``--at``), ``before_test`` (between
  ``train()`` and the test), ``checkpoint_write`` (during the ``--at``-th
  checkpoint write), ``second_signal`` (the signal at training pass
  ``--at``, and once more during the checkpoint write it causes),
  ``between_runs`` (``--sweep`` runs ``sweep-a`` then the run; the cue
  comes at the very end of ``sweep-a``, after its test);
- ``--how``: ``USR2`` or ``TERM`` (a real signal to this process, as SLURM
  sends it), ``KILL`` (SIGKILL to this process) or ``terminate``
  (``trainer.terminate_training``);
- ``--cue-ranks``: the ranks that act; the others run undisturbed.

A "write" is one gathering of the trainer's state (every rank takes part
in each checkpoint).  On rank zero, which writes the file, the cue comes from
between the file's chunks (the checkpoint module's ``torch.save`` writes it
in pieces), with the temporary file half written; on the other ranks once
they gave their state, as rank zero writes it.

At the end of each run every rank writes ``<out>/<run>-rank<r>.json``
(epochs done, termination reason, test metrics), and rank zero
``<out>/final-<run>.pt`` (weights, optimiser state, test metrics).  The
experiment is ``<root>/Faults``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import drytorch
from drytorch.core import log_events
from drytorch.distributed import ranks, teardown_distributed
from drytorch.lib import checkpoints, hooks, objectives, trainer_state

EXPERIMENT = 'Faults'
SWEEP_FIRST = 'sweep-a'
REASON = 'terminated by the fault cue'
CHUNKS = 8
PHASE_OF = {
    'first_batch': 'train',
    'mid_batch': 'train',
    'last_batch': 'train',
    'second_signal': 'train',
    'validation': 'validate',
    'test': 'test',
}


@dataclasses.dataclass
class Cue:
    """Where and how this rank stops its attempt; nothing when idle.

    Attributes:
        where: the place (see the module docstring); '' for none.
        how: USR2, TERM, KILL or terminate.
        at: the forward pass, epoch or write number where it acts.
        active: whether this rank acts.
        evaluating: 'validate' or 'test': what an eval-mode pass is.

    """

    where: str = ''
    how: str = 'USR2'
    at: int = 0
    active: bool = False
    evaluating: str = 'validate'
    trainer: Any = None
    passes: dict[str, int] = dataclasses.field(
        default_factory=lambda: {'train': 0, 'validate': 0, 'test': 0}
    )
    writes: int = 0
    fired: bool = False
    write_hit: bool = False
    due_in_write: bool = False

    def act(self) -> None:
        """Stop as asked: a signal, a SIGKILL or a termination request."""
        self.fired = True
        print(f'CUE {self.where} {self.how} rank={ranks.get_rank()}')
        sys.stdout.flush()
        if self.how == 'terminate':
            self.trainer.terminate_training(REASON)
        elif self.how == 'KILL':
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            os.kill(os.getpid(), signal.Signals[f'SIG{self.how}'])

    def forward_pass(self, training: bool) -> None:
        phase = 'train' if training else self.evaluating
        self.passes[phase] += 1
        if not self.active or self.fired:
            return
        if PHASE_OF.get(self.where) == phase and self.passes[phase] == self.at:
            self.act()

    def post_epoch(self, trainer: drytorch.Trainer) -> None:
        due = self.where == 'post_epoch_hook' and not self.fired
        if due and self.active and trainer.model.epoch == self.at:
            self.act()

    def at_point(self, where: str) -> None:
        """A place that the script itself reaches (before_test, ...)."""
        if self.where == where and self.active and not self.fired:
            self.act()

    def write_starts(self) -> None:
        """A checkpoint is being gathered: maybe act during its write."""
        self.writes += 1
        if not self.active or self.write_hit:
            return
        if self.where == 'checkpoint_write':
            hit = self.writes == self.at
        else:
            hit = self.where == 'second_signal' and self.fired
        if not hit:
            return
        self.write_hit = True
        self.due_in_write = True  # see in_write and after_gathering

    def after_gathering(self) -> None:
        """Another rank, once it gave its state: rank zero now writes."""
        if self.due_in_write and not ranks.is_rank_zero():
            self.due_in_write = False
            self._hit_write()

    def in_write(self) -> None:
        """Rank zero, between two chunks of the checkpoint file."""
        if self.due_in_write and ranks.is_rank_zero():
            self.due_in_write = False
            self._hit_write()

    def _hit_write(self) -> None:
        if self.where != 'second_signal':
            self.act()
            return
        print(f'CUE again {self.how} rank={ranks.get_rank()}', flush=True)
        os.kill(os.getpid(), signal.Signals[f'SIG{self.how}'])


class CueLayer(nn.Module):
    """Identity layer that tells the cue of every forward pass.

    ``pause`` seconds of sleep per training pass stretch the run for the
    kill storm, so that a random moment can fall anywhere in it.
    """

    def __init__(self, cue: Cue, pause: float = 0.0) -> None:
        super().__init__()
        self.cue = cue
        self.pause = pause

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.cue.forward_pass(self.training)
        if self.pause and self.training:
            time.sleep(self.pause)
        return inputs


class Witness(drytorch.Tracker):
    """Prints, in rank zero's log, which checkpoint an attempt loaded."""

    @functools.singledispatchmethod
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.LoadModelEvent) -> None:
        name = pathlib.Path(event.location).name
        print(f'LOADED {name} epoch={event.epoch}', flush=True)


class _ChunkedTorch:
    """``torch`` as the checkpoint module sees it, with a chunked save."""

    def __init__(self, cue: Cue, pause: float) -> None:
        self.cue = cue
        self.pause = pause

    def save(self, state: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer, *args, **kwargs)
        payload = buffer.getvalue()
        size = -(-len(payload) // CHUNKS)
        own = not hasattr(target, 'write')
        stream = open(target, 'wb') if own else target  # noqa: SIM115
        try:
            for index in range(CHUNKS):
                stream.write(payload[index * size : (index + 1) * size])
                stream.flush()
                if index == 0:
                    self.cue.in_write()
                if self.pause:
                    time.sleep(self.pause)
        finally:
            if own:
                stream.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def watch_writes(cue: Cue, pause: float) -> None:
    """Tell the cue of every checkpoint, on every rank, and of its chunks.

    Every rank gathers the state of each checkpoint
    (``trainer_state.collect``, looked up by the module at each call);
    rank zero then writes it with the checkpoint module's ``torch.save``.
    """
    gather = trainer_state.collect

    def collect(*args: Any, **kwargs: Any) -> Any:
        cue.write_starts()
        state = gather(*args, **kwargs)
        cue.after_gathering()
        return state

    trainer_state.collect = collect
    chunked: Any = _ChunkedTorch(cue, pause)
    checkpoints.torch = chunked


def data(seed: int = 7) -> tuple[TensorDataset, ...]:
    """96 training, 40 validation and 48 test samples of 3 classes."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(184, 10, generator=generator)
    weights = torch.randn(10, 3, generator=generator)
    labels = (features @ weights).argmax(dim=1)
    return (
        TensorDataset(features[:96], labels[:96]),
        TensorDataset(features[96:136], labels[96:136]),
        TensorDataset(features[136:], labels[136:]),
    )


def network(cue: Cue, pause: float) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        CueLayer(cue, pause),
        nn.Linear(10, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(32, 3),
    )


def trackers(names: Sequence[str]) -> list[drytorch.Tracker]:
    chosen: list[drytorch.Tracker] = [Witness()]
    if 'csv' in names:
        from drytorch.trackers.csv import CSVDumper

        chosen.append(CSVDumper())
    if 'sql' in names:
        from drytorch.trackers.sqlalchemy import SQLConnection

        chosen.append(SQLConnection())
    if 'tb' in names:
        from drytorch.trackers.tensorboard import TensorBoard

        chosen.append(TensorBoard())
    if 'wandb' in names:
        from drytorch.trackers.wandb import Wandb

        chosen.append(Wandb())
    return chosen


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument('--root', required=True)
    parser.add_argument('--out', required=True)
    parser.add_argument('--run-id', default='run')
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--sweep', action='store_true')
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--patience', type=int, default=1)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--sync-every', type=int, default=None)
    parser.add_argument('--workers', type=int, default=0)
    parser.add_argument('--trackers', default='csv,sql,tb,wandb')
    parser.add_argument('--where', default='')
    parser.add_argument('--how', default='USR2')
    parser.add_argument('--at', type=int, default=0)
    parser.add_argument('--cue-ranks', default='0')
    parser.add_argument('--step-sleep', type=float, default=0.0)
    parser.add_argument('--slow-save', type=float, default=0.0)
    return parser.parse_args(argv)


def train_one(
    args: argparse.Namespace, run_id: str, cue: Cue, sets: tuple[Any, ...]
) -> None:
    """The reference training and test of one run, then its results."""
    train_set, val_set, test_set = sets
    model = drytorch.Model(network(cue, args.step_sleep), name='net')
    loss = drytorch.Loss(objectives.cross_entropy, 'CE')
    workers = args.workers

    def loader(dataset: TensorDataset, seed: int = 0) -> drytorch.DataLoader:
        return drytorch.DataLoader(
            dataset, args.batch_size, seed=seed, num_workers=workers
        )

    trainer = drytorch.Trainer(
        model,
        loader=loader(train_set, seed=3),
        loss=loss,
        learning_schema=drytorch.LearningSchema.adam(base_lr=0.05),
        sync_every=args.sync_every,
    )
    cue.trainer = trainer
    trainer.add_validation(loader(val_set))
    trainer.post_epoch_hooks.register(cue.post_epoch)
    trainer.post_epoch_hooks.register(
        hooks.ReduceLROnPlateau(patience=1, factor=0.5, min_delta=10.0)
    )
    if args.patience:
        trainer.post_epoch_hooks.register(
            hooks.EarlyStoppingCallback(
                patience=args.patience, start_from_epoch=2, min_delta=10.0
            )
        )
    trainer.post_epoch_hooks.register(hooks.SaveEveryEpochs(1))
    trainer.train(args.epochs)
    cue.at_point('before_test')
    # the test syncs as the training does, so that a stop during it is
    # noticed before its last step with two ranks too
    test = drytorch.Test(
        model,
        loader=loader(test_set),
        metric=loss,
        sync_every=args.sync_every,
    )
    cue.evaluating = 'test'
    test()
    cue.evaluating = 'validate'
    if run_id == SWEEP_FIRST:
        cue.at_point('between_runs')
    out = pathlib.Path(args.out)
    result = {
        'epoch': model.epoch,
        'terminated': trainer.terminated,
        'test': dict(test.computed_metrics),
    }
    rank = ranks.get_rank()
    (out / f'{run_id}-rank{rank}.json').write_text(json.dumps(result))
    if ranks.is_rank_zero():
        final = {
            'model': model.module.state_dict(),
            'optimizer': trainer.optimizer.state_dict(),
            'test': dict(test.computed_metrics),
        }
        torch.save(final, out / f'final-{run_id}.pt')


def main(argv: Sequence[str] | None = None) -> int:
    """One attempt: the run (or the sweep's two runs) with its cue."""
    args = parse(argv)
    cue_ranks = {int(r) for r in args.cue_ranks.split(',') if r}
    cue = Cue(
        where=args.where,
        how=args.how,
        at=args.at,
        active=bool(args.where) and ranks.get_rank() in cue_ranks,
    )
    writes = args.where in ('checkpoint_write', 'second_signal')
    if writes or args.slow_save:
        watch_writes(cue, args.slow_save)
    sets = data()
    experiment = drytorch.Experiment(
        {'epochs': args.epochs}, name=EXPERIMENT, par_dir=args.root
    )
    experiment.trackers.subscribe(*trackers(args.trackers.split(',')))
    runs = [SWEEP_FIRST, args.run_id] if args.sweep else [args.run_id]
    for run_id in runs:
        # a sweep script goes past the runs that are done; every rank reads
        # the same registry before any of them starts the next run
        record = experiment.registry.get(run_id)
        if args.sweep and record and record.status == 'completed':
            continue
        with experiment.create_run(run_id=run_id, resume=args.resume):
            print(f'STARTED {run_id} {time.time()!r}', flush=True)
            train_one(args, run_id, cue, sets)
    print(f'FINISHED {time.time()!r}', flush=True)
    return 0


if __name__ == '__main__':
    try:
        code = main()
    finally:
        teardown_distributed()
    sys.exit(code)
