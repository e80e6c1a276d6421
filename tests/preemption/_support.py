"""What the preemption tests share: attempts in real processes, read-backs.

:class:`Zygote` starts attempts of ``_worker.py`` as forked processes of a
warm parent (see ``_zygote.py``); :class:`Trial` runs the attempts of one
run in one folder and reads back what they left: final weights, registry,
CSV, SQL, TensorBoard and W&B records.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import json
import os
import pathlib
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from drytorch.core.exceptions import REQUEUE_EXIT_CODE
from tests.helpers.multiprocess import (
    clean_environ,
    free_port,
    torchrun_environ,
)

HERE = pathlib.Path(__file__).resolve().parent
ZYGOTE = HERE / '_zygote.py'
WORKER = HERE / '_worker.py'
EPOCHS = 3
SINGLE_BATCHES = 6  # steps per epoch: 96 samples by 16, or 48 per rank by 8
VALIDATION_BATCHES = 3  # 40 samples by 16, or 20 per rank by 8
REQUEUE = REQUEUE_EXIT_CODE


def base_environ() -> dict[str, str]:
    """No launcher variable, no default tracker, W&B offline."""
    env = clean_environ()
    env['DRYTORCH_INIT_MODE'] = 'none'
    env['WANDB_MODE'] = 'offline'
    env['WANDB_SILENT'] = 'true'
    env.pop('DRYTORCH_PREEMPT_SIGNALS', None)
    return env


class Zygote:
    """Client of the warm parent process that forks the attempts."""

    def __init__(
        self, startup: float = 180.0, script: pathlib.Path = ZYGOTE
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=base_environ(),
            text=True,
        )
        ready = self._read(startup)
        if not ready.get('ready'):
            raise RuntimeError(f'the zygote did not start: {ready}')

    def _read(self, timeout: float) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], timeout)
        if not readable:
            raise TimeoutError(f'no answer from the zygote in {timeout} s')
        line = stdout.readline()
        if not line:
            raise RuntimeError('the zygote exited')
        return json.loads(line)

    def _ask(self, request: dict[str, Any], timeout: float) -> Any:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(request) + '\n')
        stdin.flush()
        return self._read(timeout)

    def start(
        self, argv: Sequence[str], log: pathlib.Path, env: dict[str, str]
    ) -> int:
        """Fork an attempt; its pid."""
        answer = self._ask(
            {'op': 'start', 'argv': list(argv), 'env': env, 'log': str(log)},
            30,
        )
        return int(answer['pid'])

    def wait(self, pid: int, timeout: float = 90.0) -> int:
        """The attempt's exit status; killed after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not _exited(pid):
            if time.monotonic() > deadline:
                _kill_group(pid)
                self._ask({'op': 'wait', 'pid': pid}, 30)
                raise TimeoutError(f'attempt {pid} ran over {timeout} s')
            time.sleep(0.02)
        return int(self._ask({'op': 'wait', 'pid': pid}, 30)['code'])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _exited(pid: int) -> bool:
    """Whether the zygote's child ``pid`` is gone or a zombie."""
    try:
        stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(')', 1)[1].split()[0] in ('Z', 'X')


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@dataclasses.dataclass
class Trial:
    """The attempts of one run in one folder.

    Attributes:
        zygote: what forks the attempts; None to read results only.
        root: the experiments' parent folder; also where ``final.pt`` goes.
        world_size: processes per attempt (gloo when more than one).
        options: worker options common to every attempt.

    """

    zygote: Zygote | None
    root: pathlib.Path
    world_size: int = 1
    options: Sequence[str] = ()
    attempts: int = 0

    @property
    def run_dir(self) -> pathlib.Path:
        return self.root / 'Preempt' / 'runs' / 'run'

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        return self.run_dir / 'checkpoints' / 'net'

    def log(self, attempt: int, rank: int = 0) -> str:
        path = self.root / f'attempt{attempt}-rank{rank}.log'
        return path.read_text() if path.exists() else ''

    def logs(self) -> str:
        """Every log of every attempt, for assertion messages."""
        parts = []
        for attempt in range(1, self.attempts + 1):
            for rank in range(self.world_size):
                parts.append(
                    f'--- attempt {attempt}, rank {rank}:\n'
                    f'{self.log(attempt, rank)}'
                )
        return '\n'.join(parts)

    def start(
        self,
        *options: str,
        world_size: int | None = None,
        resume: bool | None = None,
        env: dict[str, str] | None = None,
    ) -> list[int]:
        """Start the next attempt; the pid of each rank.

        Args:
            options: worker options for this attempt only.
            world_size: processes of this attempt, if not the trial's.
            resume: pass ``--resume``; by default from the second attempt.
            env: variables added to every rank's environment.

        """
        if self.zygote is None:
            raise RuntimeError('this trial only reads what attempts left')
        self.attempts += 1
        self.root.mkdir(parents=True, exist_ok=True)
        world = world_size or self.world_size
        argv = [
            '--root',
            str(self.root),
            '--out',
            str(self.root),
            *self.options,
            *options,
        ]
        if self.attempts > 1 if resume is None else resume:
            argv.append('--resume')
        port = free_port()
        pids = []
        for rank in range(world):
            variables = dict(env or {})
            if world > 1:
                variables.update(torchrun_environ(rank, world, port))
                variables['DRYTORCH_DIST_TIMEOUT'] = '60'
            log = self.root / f'attempt{self.attempts}-rank{rank}.log'
            pids.append(self.zygote.start(argv, log, variables))
        return pids

    def wait(self, pids: Sequence[int], timeout: float = 90.0) -> list[int]:
        assert self.zygote is not None
        return [self.zygote.wait(pid, timeout) for pid in pids]

    def attempt(self, *options: str, **kwargs: Any) -> list[int]:
        """Run the next attempt to its end; each rank's exit status."""
        return self.wait(self.start(*options, **kwargs))

    # ------------------------------------------------------------ results
    def registry(self) -> dict[str, Any]:
        data = json.loads(
            (self.root / 'Preempt' / 'registry.json').read_text()
        )
        (record,) = [r for r in data['runs'] if r['run_id'] == 'run']
        return record

    def final(self) -> dict[str, Any]:
        return torch.load(self.root / 'final.pt', weights_only=False)

    def checkpoints(self) -> list[str]:
        """The checkpoint folder's files, temporary (hidden) ones aside."""
        folder = self.checkpoint_dir
        if not folder.exists():
            return []
        return sorted(
            p.name for p in folder.iterdir() if not p.name.startswith('.')
        )


# ---------------------------------------------------------------- weights
def assert_bitwise_equal(actual: Any, expected: Any, where: str = '') -> None:
    """Nested states equal bit for bit (tensors included)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype, where
        assert torch.equal(actual, expected), f'{where} differs'
        return
    if isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for key in expected:
            assert_bitwise_equal(actual[key], expected[key], f'{where}.{key}')
        return
    if isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_bitwise_equal(a, e, f'{where}[{index}]')
        return
    assert actual == expected, f'{where}: {actual!r} != {expected!r}'


# ---------------------------------------------------------------- records
Records = dict[tuple[str, int], list[float]]
"""Per (metric key, epoch), every value stored: exactly one when right."""


def csv_records(run_dir: pathlib.Path) -> Records:
    found: Records = collections.defaultdict(list)
    for path in sorted((run_dir / 'csv_metrics' / 'net').glob('*.csv')):
        with path.open(newline='') as stream:
            rows = list(csv.reader(stream))
        names = rows[0][3:]
        for row in rows[1:]:
            for name, value in zip(names, row[3:], strict=True):
                found[(f'{row[1]}/{name}', int(row[2]))].append(float(value))
    return dict(found)


def sql_records(run_dir: pathlib.Path) -> Records:
    import sqlalchemy as sa

    engine = sa.create_engine(f'sqlite:///{run_dir / "metrics.db"}')
    query = sa.text(
        'SELECT s.source_name, v.epoch, v.name, v.value '
        'FROM metric_values v JOIN sources s ON s.id = v.source_id '
        "WHERE s.model_name = 'net' ORDER BY v.id"
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    finally:
        engine.dispose()
    found: Records = collections.defaultdict(list)
    for source, epoch, name, value in rows:
        found[(f'{source}/{name}', int(epoch))].append(float(value))
    return dict(found)


def sql_run(run_dir: pathlib.Path) -> tuple[str, int]:
    """The status and attempt count of the run in the SQL database."""
    import sqlalchemy as sa

    engine = sa.create_engine(f'sqlite:///{run_dir / "metrics.db"}')
    try:
        with engine.connect() as conn:
            status, attempts = conn.execute(
                sa.text("SELECT status, attempts FROM runs WHERE name = 'run'")
            ).one()
    finally:
        engine.dispose()
    return status, attempts


def tensorboard_records(run_dir: pathlib.Path) -> Records:
    """Scalars as TensorBoard shows them (purged steps left out)."""
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    accumulator = EventAccumulator(
        str(run_dir / 'tensorboard'), size_guidance={'scalars': 0}
    )
    accumulator.Reload()
    found: Records = collections.defaultdict(list)
    for tag in accumulator.Tags()['scalars']:
        key = tag.removeprefix('net/')
        for event in accumulator.Scalars(tag):
            found[(key, int(event.step))].append(float(event.value))
    return dict(found)


def wandb_files(run_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted((run_dir / 'wandb').glob('offline-run-*/run-*.wandb'))


def wandb_records(run_dir: pathlib.Path) -> Records:
    """Every logged metric of every offline W&B file of the run.

    The epoch is the ``net/epoch`` field logged with it (the x-axis the
    tracker defines); the step must agree with it.
    """
    found: Records = collections.defaultdict(list)
    for path in wandb_files(run_dir):
        for record in _wandb_log(path):
            if record.WhichOneof('record_type') != 'history':
                continue
            items = {
                _item_key(item): json.loads(item.value_json)
                for item in record.history.item
            }
            epoch = items.get('net/epoch')
            if epoch is None:
                continue
            assert record.history.step.num == epoch, (path, items)
            for key, value in items.items():
                if key.startswith('net/') and key != 'net/epoch':
                    found[(key.removeprefix('net/'), int(epoch))].append(
                        float(value)
                    )
    return dict(found)


def _item_key(item: Any) -> str:
    return item.key or '/'.join(item.nested_key)


def _wandb_log(path: pathlib.Path) -> Iterator[Any]:
    """Records of a ``.wandb`` file: W&B's LevelDB-style log.

    After a 7-byte file header come 32 KiB blocks of chunks; a chunk has a
    7-byte header (CRC, little-endian length, type: 1 full, 2 first,
    3 middle, 4 last) and a block tail shorter than a header is padding.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b':W&B':
        raise ValueError(f'{path} is not a W&B data file')
    block = 32768
    offset = 7
    parts: list[bytes] = []
    while offset + 7 <= len(data):
        room = block - offset % block
        if room < 7:
            offset += room
            continue
        _crc, length, kind = struct.unpack_from('<IHB', data, offset)
        offset += 7
        chunk = data[offset : offset + length]
        offset += length
        if kind == 0:
            break
        parts.append(chunk)
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(b''.join(parts))
            parts = []


READERS: dict[str, Callable[[pathlib.Path], Records]] = {
    'csv': csv_records,
    'sql': sql_records,
    'tb': tensorboard_records,
    'wandb': wandb_records,
}


def assert_records_once(
    kind: str, actual: Records, expected: Records, epochs: int = EPOCHS
) -> None:
    """Every (metric, epoch) of the reference once, with its value."""
    twice = {key: v for key, v in actual.items() if len(v) != 1}
    assert not twice, f'{kind}: stored more than once: {twice}'
    assert set(actual) == set(expected), (
        f'{kind}: missing {sorted(set(expected) - set(actual))}, '
        f'extra {sorted(set(actual) - set(expected))}'
    )
    differ = {
        key: (actual[key][0], expected[key][0])
        for key in expected
        if actual[key][0] != expected[key][0]
    }
    assert not differ, f'{kind}: values differ (got, expected): {differ}'
    assert {epoch for _, epoch in expected} == set(range(1, epochs + 1))


def assert_same_as(
    trial: Trial, reference: Trial, trackers: Sequence[str]
) -> None:
    """Final weights and every tracker's records equal the reference's."""
    assert_bitwise_equal(trial.final(), reference.final())
    for kind in trackers:
        if kind in READERS:
            read = READERS[kind]
            assert_records_once(
                kind, read(trial.run_dir), read(reference.run_dir)
            )


def attempts_yaml(run_dir: pathlib.Path) -> list[dict[str, Any]]:
    """What the YAML dumper recorded of each attempt."""
    import yaml

    return yaml.safe_load((run_dir / 'metadata' / 'attempts.yaml').read_text())


def wandb_endings(run_dir: pathlib.Path) -> list[tuple[bool, int | None]]:
    """Per offline W&B file: marked as preempting?  Its exit code."""
    endings = []
    for path in wandb_files(run_dir):
        preempting = False
        code = None
        for record in _wandb_log(path):
            kind = record.WhichOneof('record_type')
            if kind == 'preempting':
                preempting = True
            elif kind == 'exit':
                code = record.exit.exit_code
        endings.append((preempting, code))
    return endings


def checkpoint_name(epoch: int, batch: int = 0, suffix: str = '.pt') -> str:
    """The name of the checkpoint at a position (see checkpoints).

    ``suffix='.dcp'``: the folder of a checkpoint in parts.
    """
    from drytorch.lib.checkpoints import file_name

    return file_name(epoch, batch, suffix)
