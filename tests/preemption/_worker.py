"""One attempt of a small seeded training, preemptable on cue.

Run by the preemption tests as a real process: forked by ``_zygote.py``
(one per rank, with torchrun's variables, for a gloo job) or started as
a script.  The network has dropout and the schedule a plateau hook, so
that the random state, the optimiser and the hooks all have to come back
exactly for the weights to match an uninterrupted run.

Cues, which a test gives to the first attempt only:

- ``--signal-at K --signal-phase train`` sends ``--signal`` to this very
  process (on ``--signal-rank`` only) from inside the K-th training forward
  pass of the attempt; ``--signal-phase validate`` counts validation
  forward passes instead.  A real signal through ``os.kill``: the handler
  runs as it would for one sent by SLURM.
- ``--storm N`` sends N signals (USR2, USR1 and TERM in turn) while every
  checkpoint is being written, between the chunks of the file.
- ``--slow-save S`` writes checkpoints in chunks with S seconds between
  them, so that a test can kill the process while the temporary file is
  there; ``--step-sleep S`` makes each training step last S seconds more.

``--checkpoint sharded`` writes checkpoints in parts, one per rank
(``LocalCheckpoint(sharded=True)``), ``--checkpoint async`` in parts and in
the background; ``--slow-parts S`` makes each rank pause S seconds after
its part is written (printing ``PART <rank> <folder>`` first), so that a
test can kill a rank while the parts are incomplete.
``--accumulation-steps K`` accumulates gradients over K batches per
optimizer step; ``--per-step-schedule`` warms up and decays the rate per
optimizer step, and rank zero appends each step's rate to ``rates.txt``
in ``--out``.  ``--compile`` compiles the model with inductor
(``Model(compile=...)``).  ``--num-workers N`` loads with N workers,
kept for every pass with ``--persistent-workers``.  ``--iterable
stateful`` (or ``stateless``) trains on an IterableDataset of the same
samples, with (or without) ``state_dict()`` / ``load_state_dict()``.

``--global-batch-size G`` gives the training loader a batch over all
ranks together instead of ``--batch-size`` per rank; ``--dropout P``
changes the dropout (0 for runs compared across world sizes, whose random
streams differ); ``--record-ids`` makes each rank append, at every training
forward pass, the epoch and the ids of the samples it trained to
``ids-<rank>-<pid>.txt`` in ``--out`` (the training samples carry their
index as an eleventh feature, which a first layer takes off).

``--mixed-precision`` trains under autocast (with a gradient scaler on a
GPU); the model goes to the GPU when there is one.  ``--parallel fsdp``
shards the model with FSDP2 (each linear layer a unit of its own).

At the end rank zero writes ``final.pt`` (model and optimiser state, in
the plain format, gathered from every rank under FSDP) in ``--out``.
The run directory is ``<root>/Preempt/runs/<run id>``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import pathlib
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset
from typing_extensions import override

import drytorch
from drytorch.core import log_events
from drytorch.distributed import ranks, teardown_distributed
from drytorch.lib import checkpoints, hooks, objectives, schedulers
from drytorch.trackers.csv import CSVDumper

STORM = (signal.SIGUSR2, signal.SIGUSR1, signal.SIGTERM)
# --per-step-schedule: linear warmup over 6 optimizer steps (the first
# epoch of 6 batches), then a cosine decay over 12
WARMUP_DECAY = (6, 12)


class Stream(torch.utils.data.IterableDataset[Any]):
    """The training samples as a stream: this rank's share, shuffled by epoch.

    Without a state: it cannot say where it stopped.
    """

    def __init__(self, data: TensorDataset) -> None:
        self.data = data
        self.epoch = 0
        self.position = 0  # samples yielded in this pass
        self._resume = 0

    def __len__(self) -> int:
        return len(self.data) // ranks.get_world_size()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.epoch)
        order = torch.randperm(len(self.data), generator=generator)
        world = ranks.get_world_size()
        mine = order[ranks.get_rank() :: world][: len(self)].tolist()
        start, self._resume = self._resume, 0
        self.position = start
        for index in mine[start:]:
            self.position += 1  # before the yield: counted once consumed
            yield self.data[index]


class StatefulStream(Stream):
    """A stream that saves and restores its position (torchdata's protocol)."""

    def state_dict(self) -> dict[str, int]:
        return {'epoch': self.epoch, 'position': self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state['epoch']
        self._resume = state['position']


def trace_rates(trainer: drytorch.Trainer, path: pathlib.Path) -> None:
    """Append the rate of every optimizer step to ``path`` (rank zero).

    Written at each step, so that a preempted attempt leaves its part.
    """
    if not ranks.is_rank_zero():
        return

    def record(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        with path.open('a') as file:
            file.write(f'{optimizer.param_groups[0]["lr"]!r}\n')

    trainer.optimizer.register_step_pre_hook(record)


class Cue(nn.Module):
    """Identity layer that signals its own process at a chosen pass.

    It also sleeps ``pause`` seconds in each training pass, to give a test
    that kills the process at a random moment a longer run to hit.
    """

    def __init__(
        self, at: int, phase: str, signum: int, pause: float = 0.0
    ) -> None:
        super().__init__()
        self.at = at
        self.phase = phase
        self.signum = signum
        self.pause = pause
        self.passes = {'train': 0, 'validate': 0}

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        phase = 'train' if self.training else 'validate'
        self.passes[phase] += 1
        if phase == self.phase and self.passes[phase] == self.at:
            os.kill(os.getpid(), self.signum)
        if self.pause and self.training:
            time.sleep(self.pause)
        return inputs


class SampleIds(nn.Module):
    """Takes off the samples' ids (their last feature), recording them.

    Records only training passes, one line per pass: the epoch, then the
    ids; ``epoch`` is set once the model exists.  Each rank writes a file
    of its own, so no file is shared.
    """

    def __init__(self, path: pathlib.Path | None) -> None:
        super().__init__()
        self.path = path
        self.epoch: Any = lambda: 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.path is not None and self.training:
            ids = inputs[:, -1].round().long().tolist()
            with self.path.open('a') as file:
                file.write(f'{self.epoch()} {" ".join(map(str, ids))}\n')
        return inputs[:, :-1]


def with_ids(data: TensorDataset) -> TensorDataset:
    """The same samples, each carrying its index as a last feature."""
    features, labels = data.tensors
    ids = torch.arange(len(features), dtype=features.dtype)[:, None]
    return TensorDataset(torch.cat([features, ids], dim=1), labels)


def data(seed: int = 7) -> tuple[TensorDataset, TensorDataset]:
    """96 training and 40 validation samples of a 3-class problem."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(136, 10, generator=generator)
    weights = torch.randn(10, 3, generator=generator)
    labels = (features @ weights).argmax(dim=1)
    return (
        TensorDataset(features[:96], labels[:96]),
        TensorDataset(features[96:], labels[96:]),
    )


def network(
    cue: nn.Module, dropout: float = 0.3, first: nn.Module | None = None
) -> nn.Module:
    """The worker's network; ``first`` (the ids' remover) goes before all."""
    torch.manual_seed(0)
    layers = [] if first is None else [first]
    return nn.Sequential(
        *layers,
        cue,
        nn.Linear(10, 32),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(32, 3),
    )


class _CheckpointTorch:
    """``torch`` as the checkpoint module sees it, but with another save."""

    def __init__(self, save: Any) -> None:
        self.save = save

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def slow_or_stormy_save(pause: float, storm: int) -> None:
    """Make checkpoint writes slow, or hit by signals, in this process.

    Only the checkpoint module's ``torch.save`` changes: the file is
    serialised in memory, then written in chunks with a pause and a signal
    between them.
    """

    def save(state: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer, *args, **kwargs)
        payload = buffer.getvalue()
        pieces = max(storm, 8)
        size = -(-len(payload) // pieces)
        for index in range(pieces):
            stream.write(payload[index * size : (index + 1) * size])
            stream.flush()
            if index < storm:
                os.kill(os.getpid(), STORM[index % len(STORM)])
            if pause:
                time.sleep(pause)

    checkpoints.torch = _CheckpointTorch(save)  # type: ignore[assignment]


def slow_parts(pause: float) -> None:
    """Pause after each part of a checkpoint in parts is on disk.

    From the second checkpoint on: the first is then complete, the one to
    resume from when a test kills a rank in the pause of another.
    """
    from torch.distributed.checkpoint import FileSystemWriter

    original = FileSystemWriter.write_data
    writes = [0]

    def write_data(self: Any, plan: Any, planner: Any) -> Any:
        written = original(self, plan, planner)
        written.wait()
        writes[0] += 1
        if writes[0] > 1:
            print(f'PART {ranks.get_rank()} {self.path}', flush=True)
            time.sleep(pause)
        return written

    FileSystemWriter.write_data = write_data  # type: ignore[method-assign]


class SlowTracker(drytorch.Tracker):
    """A backend that takes ``delay`` seconds over every event."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        time.sleep(self.delay)
        return super().notify(event)


@contextlib.contextmanager
def drain_report(experiment: drytorch.Experiment[Any]) -> Iterator[None]:
    """After the run, print how long its stop waited for the trackers."""
    try:
        yield
    finally:
        report = experiment.trackers.last_report
        print(
            f'DRAINED {report.drain_s!r} {report.events} '
            f'{report.undelivered!r}',
            flush=True,
        )


def trackers(names: Sequence[str]) -> list[drytorch.Tracker]:
    chosen: list[drytorch.Tracker] = [CSVDumper()]
    if 'sql' in names:
        from drytorch.trackers.sqlalchemy import SQLConnection

        chosen.append(SQLConnection())
    if 'tb' in names:
        from drytorch.trackers.tensorboard import TensorBoard

        chosen.append(TensorBoard())
    if 'wandb' in names:
        from drytorch.trackers.wandb import Wandb

        chosen.append(Wandb())
    if 'mlflow' in names:
        from drytorch.trackers.mlflow import MLflow

        chosen.append(
            MLflow(
                os.environ['DRYTORCH_TEST_MLFLOW_URL'],
                experiment=os.environ['DRYTORCH_TEST_MLFLOW_EXPERIMENT'],
            )
        )
    if 'yaml' in names:
        from drytorch.trackers.yaml import YamlDumper

        chosen.append(YamlDumper())
    return chosen


def main(
    argv: Sequence[str] | None = None, extra: Sequence[drytorch.Tracker] = ()
) -> int:
    """One attempt; ``extra`` trackers join those named by --trackers."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--root', required=True)
    parser.add_argument('--run-id', default='run')
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--global-batch-size', type=int, default=None)
    parser.add_argument('--dropout', type=float, default=0.3)
    parser.add_argument('--record-ids', action='store_true')
    parser.add_argument('--val-batch-size', type=int, default=16)
    parser.add_argument('--step-sleep', type=float, default=0.0)
    parser.add_argument('--mixed-precision', action='store_true')
    parser.add_argument('--parallel', choices=('ddp', 'fsdp'), default=None)
    parser.add_argument('--sync-every', type=int, default=None)
    parser.add_argument('--accumulation-steps', type=int, default=1)
    parser.add_argument('--per-step-schedule', action='store_true')
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--num-workers', type=int, default=0)
    parser.add_argument('--persistent-workers', action='store_true')
    parser.add_argument(
        '--iterable', choices=('stateful', 'stateless'), default=None
    )
    parser.add_argument('--signal-at', type=int, default=0)
    parser.add_argument('--signal-phase', default='train')
    parser.add_argument('--signal-rank', type=int, default=0)
    parser.add_argument('--signal', default='USR2')
    parser.add_argument('--storm', type=int, default=0)
    parser.add_argument('--slow-save', type=float, default=0.0)
    parser.add_argument('--save-every', type=int, default=0)
    parser.add_argument('--trackers', default='csv')
    parser.add_argument('--slow-tracker', type=float, default=0.0)
    parser.add_argument('--out', default='')
    parser.add_argument(
        '--checkpoint', choices=('file', 'sharded', 'async'), default='file'
    )
    parser.add_argument('--slow-parts', type=float, default=0.0)
    args = parser.parse_args(argv)

    if args.storm or args.slow_save:
        slow_or_stormy_save(args.slow_save, args.storm)
    if args.slow_parts:
        slow_parts(args.slow_parts)
    signum = signal.Signals[f'SIG{args.signal}']
    at = args.signal_at if ranks.get_rank() == args.signal_rank else 0
    train_set, val_set = data()
    experiment = drytorch.Experiment(
        {'epochs': args.epochs}, name='Preempt', par_dir=args.root
    )
    experiment.trackers.subscribe(*trackers(args.trackers.split(',')), *extra)
    if args.slow_tracker:
        experiment.trackers.subscribe(SlowTracker(args.slow_tracker))
    with (
        drain_report(experiment),
        experiment.create_run(run_id=args.run_id, resume=args.resume),
    ):
        print(f'STARTED {time.time()!r}', flush=True)
        sharding: dict[str, Any] = {}
        if args.parallel == 'fsdp':
            sharding['shard'] = (nn.Linear,)
        cue = Cue(at, args.signal_phase, signum, args.step_sleep)
        if args.compile:
            # the cue counts passes in Python: compiled, every count would
            # recompile, past torch's recompile limit, after which dynamo
            # runs the module eagerly; it runs eagerly, the layers compiled
            cue.forward = torch.compiler.disable(cue.forward)  # type: ignore[method-assign]
        ids = None
        if args.record_ids:
            name = f'ids-{ranks.get_rank()}-{os.getpid()}.txt'
            ids = SampleIds(pathlib.Path(args.out) / name)
            train_set, val_set = with_ids(train_set), with_ids(val_set)
        model = drytorch.Model(
            network(cue, args.dropout, ids),
            name='net',
            mixed_precision=args.mixed_precision,
            parallel=args.parallel,
            checkpoint=checkpoints.LocalCheckpoint(
                sharded=args.checkpoint != 'file',
                async_checkpoint=args.checkpoint == 'async',
            ),
            compile=args.compile,
            **sharding,
        )
        if ids is not None:
            ids.epoch = lambda: model.epoch + 1
        loss = drytorch.Loss(objectives.cross_entropy, 'CE')
        if args.iterable:
            stream = StatefulStream if args.iterable == 'stateful' else Stream
            train_set = stream(train_set)  # type: ignore[assignment]
        workers: dict[str, Any] = {}
        if args.num_workers:
            workers['num_workers'] = args.num_workers
            workers['persistent_workers'] = args.persistent_workers
        scheduler: schedulers.AbstractScheduler = (
            schedulers.ConstantScheduler()
        )
        if args.per_step_schedule:
            scheduler = (
                schedulers.CosineScheduler(WARMUP_DECAY[1])
                .with_warmup(WARMUP_DECAY[0])
                .per_step()
            )
        trainer = drytorch.Trainer(
            model,
            loader=drytorch.DataLoader(
                train_set,
                None if args.global_batch_size else args.batch_size,
                global_batch_size=args.global_batch_size,
                seed=3,
                **workers,
            ),
            loss=loss,
            learning_schema=drytorch.LearningSchema.adam(
                base_lr=0.05, scheduler=scheduler
            ),
            sync_every=args.sync_every,
            accumulation_steps=args.accumulation_steps,
        )
        trainer.add_validation(
            drytorch.DataLoader(val_set, args.val_batch_size, **workers)
        )
        trainer.post_epoch_hooks.register(
            hooks.ReduceLROnPlateau(patience=1, factor=0.5)
        )
        if args.per_step_schedule and args.out:
            trace_rates(trainer, pathlib.Path(args.out) / 'rates.txt')
        if args.save_every:
            trainer.post_epoch_hooks.register(
                hooks.SaveEveryEpochs(args.save_every)
            )
        trainer.train(args.epochs)
        # gathered on every rank: collectives when the model is sharded
        weights = model.state_dict()['module']
        optimizer = model.optimizer_state_dict(trainer.optimizer)
        if ranks.is_rank_zero() and args.out:
            final = {
                'model': weights,
                'optimizer': optimizer,
                'epoch': model.epoch,
            }
            torch.save(final, pathlib.Path(args.out) / 'final.pt')
    print(f'FINISHED {time.time()!r}', flush=True)
    return 0


if __name__ == '__main__':
    try:
        code = main()
    finally:
        teardown_distributed()
    sys.exit(code)
