"""What the tracker tests share: runs of epochs, preempted and resumed."""

from __future__ import annotations

import pathlib
import socket
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from drytorch import Experiment
from drytorch.core import exceptions, log_events
from drytorch.core.tracking import Tracker

MODEL = 'm'
SOURCES = ('train', 'val')


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def value(epoch: int, source: str, attempt: int = 1) -> float:
    """A loss that tells epoch, source and attempt apart."""
    base = 1.0 / epoch + (0.5 if source == 'val' else 0.0)
    return base + 0.001 * (attempt - 1)


def make_experiment(
    par_dir: pathlib.Path, *trackers: Tracker, name: str = 't', config=None
) -> Experiment[Any]:
    """An experiment under ``par_dir`` with ``trackers`` subscribed."""
    exp: Experiment[Any] = Experiment(
        config, name=name, par_dir=par_dir, tags=['tag-a', 'tag-b']
    )
    exp.trackers.subscribe(*trackers)
    return exp


def emit_epochs(
    epochs: Iterable[int],
    attempt: int = 1,
    sources: Iterable[str] = SOURCES,
    model: str = MODEL,
) -> None:
    """What a training loop publishes: metrics, then the epoch's end."""
    sources = tuple(sources)
    for epoch in epochs:
        for source in sources:
            log_events.MetricEvent(
                model_name=model,
                source_name=source,
                epoch=epoch,
                metrics={
                    'loss': value(epoch, source, attempt),
                    'acc': epoch / 100,
                },
            )
        log_events.EndEpochEvent(
            model_name=model, source_name='train', epoch=epoch
        )


def run_epochs(
    exp: Experiment[Any],
    epochs: Iterable[int],
    run_id: str = 'r',
    resume: bool = False,
    preempt: bool = False,
    attempt: int = 1,
) -> None:
    """One attempt of a run; ``preempt`` stops it as a preemption does."""
    try:
        with exp.create_run(run_id, resume=resume):
            emit_epochs(epochs, attempt)
            if preempt:
                raise exceptions.PreemptedExit()
    except exceptions.PreemptedExit:
        pass


def preempted_and_resumed(exp: Experiment[Any], run_id: str = 'r') -> None:
    """Epochs 1-3, preempted; then resumed from epoch 2 up to epoch 4.

    Resuming from an epoch the first attempt already logged is what a
    process killed after its last checkpoint leaves: the tracker must
    replace epochs 2 and 3, not add them twice.
    """
    run_epochs(exp, range(1, 4), run_id, preempt=True)
    run_epochs(exp, range(2, 5), run_id, resume=True, attempt=2)


def expected(source: str, last: int = 4) -> dict[int, float]:
    """Per epoch, the loss that :func:`preempted_and_resumed` leaves."""
    return {
        epoch: value(epoch, source, 1 if epoch < 2 else 2)
        for epoch in range(1, last + 1)
    }


def wandb_records(path: pathlib.Path) -> Iterator[Any]:
    """The protobuf records of a ``.wandb`` file (W&B's own format).

    A LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks,
    each with a 7-byte header (checksum, length, type); a record too long
    for a block is split in first/middle/last chunks.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b':W&B', f'{path} is not a W&B data file'
    block, pos, pending = 32768, 7, b''
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block tail too short for a header: padding
            pos += left
            continue
        _checksum, length, kind = struct.unpack('<IHB', data[pos : pos + 7])
        pos += 7
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0:
            break
        if kind == 2:  # first
            pending = chunk
            continue
        if kind == 3:  # middle
            pending += chunk
            continue
        if kind == 4:  # last
            chunk, pending = pending + chunk, b''
        yield wandb_internal_pb2.Record.FromString(chunk)
