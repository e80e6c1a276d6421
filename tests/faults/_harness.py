"""Runs a scenario of the fault matrix and lists how it differs.

A :class:`Job` is the attempts of one run folder, each a set of forked
processes (one per rank, with torchrun's variables for gloo) that a
launcher watches as torchrun's agent would: when a rank dies, the others
are killed and the attempt is over.  :func:`run_scenario` runs the
interrupted attempt and the resumed one, then :func:`differences` compares
what they left with the uninterrupted run: every difference is one line of
the result, so that a scenario reports all its symptoms at once.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from drytorch.lib.checkpoints import LocalCheckpoint
from tests.faults import _reference
from tests.faults._matrix import Scenario
from tests.helpers.multiprocess import free_port, torchrun_environ
from tests.preemption._support import (
    READERS,
    REQUEUE,
    Zygote,
    _exited,
    _kill_group,
    assert_bitwise_equal,
    assert_records_once,
    checkpoint_name,
    sql_run,
)

HERE = pathlib.Path(__file__).resolve().parent
FORKER = HERE / '_zygote.py'
ATTEMPT_TIMEOUT = 45.0  # an attempt takes seconds; a hang is a failure
DIST_TIMEOUT = '15'  # a rank left alone in a collective fails this soon
GRACE = 5.0  # a rank that failed: the others may still stop by themselves
TRACKERS = ('csv', 'sql', 'tb', 'wandb')
KILLED = -signal.SIGKILL
# one process: 6 batches of 16; two ranks: 6 batches of 8 each, a sync
# point every 2 steps (and at the last one)
WORLD_OPTIONS = {1: (), 2: ('--batch-size', '8', '--sync-every', '2')}


class FaultZygote(Zygote):
    """The preemption tests' zygote client, talking to ``_zygote.py`` here."""

    def __init__(self, startup: float = 180.0) -> None:
        super().__init__(startup, script=FORKER)


@dataclasses.dataclass
class Attempt:
    """How an attempt ended: per rank, its exit status and its log."""

    codes: list[int]
    logs: list[str]
    killed_by_launcher: list[int]
    timed_out: bool = False

    def describe(self) -> str:
        text = f'{self.codes}'
        if self.timed_out:
            text += ' (timed out)'
        if self.killed_by_launcher:
            text += f' (launcher killed ranks {self.killed_by_launcher})'
        return text


@dataclasses.dataclass
class Job:
    """The attempts of one run folder (two runs for a sweep)."""

    zygote: Zygote
    root: pathlib.Path
    world_size: int
    options: Sequence[str]
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    _running: list[list[int]] = dataclasses.field(default_factory=list)

    @property
    def experiment_dir(self) -> pathlib.Path:
        return self.root / _reference.EXPERIMENT

    def run_dir(self, run_id: str = 'run') -> pathlib.Path:
        return self.experiment_dir / 'runs' / run_id

    def attempt(self, *options: str) -> Attempt:
        """Run the next attempt to its end under the launcher's rules.

        The first attempt starts the run, the next ones resume it.
        """
        return self.finish(self.start(*options))

    def start(self, *options: str) -> list[int]:
        """Start the next attempt; the pid of each rank."""
        number = len(self.attempts) + len(self._running) + 1
        self.root.mkdir(parents=True, exist_ok=True)
        argv = ['--root', str(self.root), '--out', str(self.root)]
        argv += [*self.options, *options]
        if number > 1:
            argv.append('--resume')
        port = free_port()
        pids = []
        for rank in range(self.world_size):
            env = {'DRYTORCH_DIST_TIMEOUT': DIST_TIMEOUT}
            if self.world_size > 1:
                env.update(torchrun_environ(rank, self.world_size, port))
            pids.append(self.zygote.start(argv, self.log(number, rank), env))
        self._running.append(pids)
        return pids

    def finish(self, pids: list[int]) -> Attempt:
        """Wait for a started attempt to end; what it left."""
        number = len(self.attempts) + 1
        attempt = self._watch(pids)
        self._running.remove(pids)
        attempt.logs = [
            path.read_text() if path.exists() else ''
            for path in (self.log(number, r) for r in range(len(pids)))
        ]
        self.attempts.append(attempt)
        return attempt

    def log(self, number: int, rank: int) -> pathlib.Path:
        return self.root / f'attempt{number}-rank{rank}.log'

    def _watch(self, pids: list[int]) -> Attempt:
        """Wait for every rank; a dead rank ends the attempt for all."""
        codes: dict[int, int] = {}
        killed: list[int] = []
        deadline = time.monotonic() + ATTEMPT_TIMEOUT
        failed_at: float | None = None
        timed_out = False
        while len(codes) < len(pids):
            for rank, pid in enumerate(pids):
                if rank not in codes and _exited(pid):
                    codes[rank] = self.zygote.wait(pid)
            bad = [c for c in codes.values() if c not in (0, REQUEUE)]
            if bad and failed_at is None:
                failed_at = time.monotonic()
            now = time.monotonic()
            killed_rank = KILLED in codes.values()
            late = failed_at is not None and now - failed_at > GRACE
            timed_out = now > deadline
            if killed_rank or late or timed_out:
                for rank, pid in enumerate(pids):
                    if rank not in codes:
                        _kill_group(pid)
                        killed.append(rank)
                        codes[rank] = self.zygote.wait(pid)
            time.sleep(0.02)
        return Attempt(
            [codes[r] for r in range(len(pids))], [], killed, timed_out
        )

    def logs(self) -> str:
        """Every log of every attempt, for a report."""
        parts = []
        for number, attempt in enumerate(self.attempts, start=1):
            for rank, text in enumerate(attempt.logs):
                parts.append(f'--- attempt {number}, rank {rank}:\n{text}')
        return '\n'.join(parts)

    # ------------------------------------------------------------ results
    def final(self, run_id: str = 'run') -> dict[str, Any] | None:
        path = self.root / f'final-{run_id}.pt'
        if not path.exists():
            return None
        return torch.load(path, weights_only=False)

    def rank_result(self, run_id: str, rank: int) -> dict[str, Any] | None:
        path = self.root / f'{run_id}-rank{rank}.json'
        return json.loads(path.read_text()) if path.exists() else None

    def registry(self, run_id: str = 'run') -> dict[str, Any] | None:
        path = self.experiment_dir / 'registry.json'
        if not path.exists():
            return None
        runs = json.loads(path.read_text())['runs']
        found = [r for r in runs if r['run_id'] == run_id]
        return found[0] if found else None

    def newest_checkpoint(self, run_id: str = 'run') -> str | None:
        """The newest complete checkpoint of a run, as a load would pick."""
        store = LocalCheckpoint(self.run_dir(run_id) / 'checkpoints')
        store.bind('net')
        found = store.available()
        return found[-1].path.name if found else None

    def checkpoint(self, epoch: int, run_id: str = 'run') -> dict[str, Any]:
        store = LocalCheckpoint(self.run_dir(run_id) / 'checkpoints')
        store.bind('net')
        state, _ = store.load(epoch, mid_epoch=False)
        return state


def options(world_size: int, workers: int, sweep: bool = False) -> list[str]:
    chosen = [*WORLD_OPTIONS[world_size], '--workers', str(workers)]
    return [*chosen, '--sweep'] if sweep else chosen


def new_job(zygote: Zygote, root: pathlib.Path, scenario: Scenario) -> Job:
    world = scenario.world_size
    chosen = options(world, scenario.workers, scenario.sweep)
    return Job(zygote, root, world, chosen)


# ------------------------------------------------------------ expectations
@dataclasses.dataclass
class Outcome:
    """What the attempts of a scenario showed, before the comparison.

    Attributes:
        problems: what went wrong with the attempts themselves.
        after_first: per run, (status, attempts) in the registry after the
            interrupted attempt; a run it did not start is absent.
        resume_from: the newest complete checkpoint of the first run left
            unfinished, which the restart must load (None: none there).

    """

    problems: list[str]
    after_first: dict[str, tuple[str, int]]
    resume_from: str | None = None

    def expected_attempts(self, run_id: str) -> int:
        """The registry's attempts of a run once the scenario is over.

        One for each attempt that ran it: the first, and the resumed one
        unless the first had completed it.  Whether a rank that was not
        killed finished ``sweep-a`` before the launcher stopped it is a
        race, so this follows the registry after the first attempt; that
        registry is checked on its own (:func:`run_scenario`).
        """
        status, attempts = self.after_first.get(run_id, ('', 0))
        return attempts + (status != 'completed')


def runs_of(scenario: Scenario) -> list[str]:
    """The run ids of the scenario's script, in the order it runs them."""
    return [_reference.SWEEP_FIRST, 'run'] if scenario.sweep else ['run']


def first_attempt_problems(scenario: Scenario, attempt: Attempt) -> list[str]:
    """What is wrong with how the interrupted attempt ended."""
    problems = []
    cued = scenario.cue_ranks
    came = [rank for rank in cued if 'CUE ' in attempt.logs[rank]]
    # a SIGKILL on one rank ends the job: the other may never get there
    if scenario.how == 'KILL' and came:
        cued = came
    for rank in cued:
        if rank not in came:
            problems.append(f'the cue never came on rank {rank}')
        again = 'CUE again' in attempt.logs[rank]
        if scenario.where == 'second_signal' and not again:
            problems.append(f'no second signal came on rank {rank}')
    if attempt.timed_out:
        problems.append(f'attempt 1 hung (killed after {ATTEMPT_TIMEOUT} s)')
    if scenario.how in ('USR2', 'TERM'):
        wanted = [REQUEUE] * scenario.world_size
    elif scenario.how == 'terminate':
        wanted = [0] * scenario.world_size
    else:
        wanted = [
            c if r not in cued else KILLED for r, c in enumerate(attempt.codes)
        ]
    if attempt.codes != wanted:
        problems.append(
            f'attempt 1 exited {attempt.describe()}, expected {wanted}'
        )
    return problems


# ------------------------------------------------------------ comparison
def _check(problems: list[str], label: str, check: Callable[[], None]) -> None:
    """Run an assertion helper; its failure becomes one line."""
    try:
        check()
    except AssertionError as err:
        text = str(err).replace('\n', ' ')
        problems.append(f'{label}: {text[:400]}')
    except Exception as err:  # noqa: BLE001 - a missing file is a symptom
        problems.append(f'{label}: {err.__class__.__name__}: {err}'[:400])


def _same_results(
    problems: list[str], job: Job, reference: Job, run_id: str
) -> None:
    """Weights, test metrics and each rank's outcome as the reference's."""
    final = job.final(run_id)
    expected = reference.final(run_id)
    if final is None or expected is None:
        problems.append(f'{run_id}: no final weights (run did not end)')
    else:
        _check(
            problems,
            f'{run_id}: final weights',
            lambda: assert_bitwise_equal(final['model'], expected['model']),
        )
        _check(
            problems,
            f'{run_id}: optimiser state',
            lambda: assert_bitwise_equal(
                final['optimizer'], expected['optimizer']
            ),
        )
    for rank in range(job.world_size):
        mine = job.rank_result(run_id, rank)
        theirs = reference.rank_result(run_id, rank)
        if mine is None or theirs is None:
            continue
        for key, what in (
            ('test', 'test metrics'),
            ('epoch', 'epochs trained'),
            ('terminated', 'termination reason'),
        ):
            if mine[key] != theirs[key]:
                problems.append(
                    f'{run_id}: rank {rank} {what} {mine[key]!r}, '
                    f'expected {theirs[key]!r}'
                )


def _same_records(
    problems: list[str],
    job: Job,
    reference: Job,
    run_id: str,
    trackers: Sequence[str],
) -> None:
    """Every tracker holds each of the reference's records once."""
    done = reference.rank_result(run_id, 0)
    epochs = done['epoch'] if done else 0
    for kind in trackers:
        read = READERS[kind]

        def compare(read: Callable[..., Any] = read, kind: str = kind) -> None:
            actual = read(job.run_dir(run_id))
            expected = _epoch_records(read(reference.run_dir(run_id)))
            assert_records_once(kind, _epoch_records(actual), expected, epochs)

        _check(problems, f'{run_id}: {kind} records', compare)


def _epoch_records(records: dict[Any, list[float]]) -> dict[Any, list[float]]:
    """The per-epoch records; TensorBoard's running values by step aside.

    Running values (``batch/...`` tags, by global step) are compared by
    :func:`_running_values`: ``assert_records_once`` checks epochs.
    """
    return {
        key: values
        for key, values in records.items()
        if not str(key[0]).startswith('batch/')
    }


def _running_values(
    problems: list[str], job: Job, reference: Job, run_id: str
) -> None:
    """TensorBoard's running values equal the reference's, each once."""

    def compare() -> None:
        read = READERS['tb']
        actual = read(job.run_dir(run_id))
        expected = read(reference.run_dir(run_id))
        running = {
            k: v for k, v in expected.items() if k[0].startswith('batch/')
        }
        got = {k: v for k, v in actual.items() if k[0].startswith('batch/')}
        twice = sorted(k for k, v in got.items() if len(v) != 1)
        assert not twice, f'stored more than once: {twice[:6]}'
        assert set(got) == set(running), (
            f'missing {sorted(set(running) - set(got))[:6]}, '
            f'extra {sorted(set(got) - set(running))[:6]}'
        )
        differ = sorted(k for k in running if got[k] != running[k])
        assert not differ, f'values differ at {differ[:6]}'

    _check(problems, f'{run_id}: tb running values', compare)


def _registry(
    problems: list[str], job: Job, outcome: Outcome, run_id: str
) -> None:
    record = job.registry(run_id)
    wanted = ('completed', outcome.expected_attempts(run_id))
    got = (record['status'], record['attempts']) if record else None
    if got != wanted:
        problems.append(f'{run_id}: registry has {got}, expected {wanted}')
    if run_id == 'run':
        _check(
            problems,
            'run: SQL run row',
            lambda: _equal(sql_run(job.run_dir()), wanted),
        )


def _equal(actual: Any, expected: Any) -> None:
    assert actual == expected, f'{actual!r}, expected {expected!r}'


def _no_temporary_files(problems: list[str], job: Job) -> None:
    left = sorted(
        str(p.relative_to(job.experiment_dir))
        for p in job.experiment_dir.rglob('*.tmp')
    )
    if left:
        problems.append(f'temporary files left: {left}')


def differences(
    scenario: Scenario, job: Job, reference: Job, outcome: Outcome
) -> list[str]:
    """Every way the scenario's outcome differs from the reference's."""
    problems: list[str] = []
    # W&B cannot delete rows: after a SIGKILL, the epochs logged past the
    # last checkpoint come again (a documented limit), so its records are
    # not compared then
    trackers = [t for t in TRACKERS if scenario.how != 'KILL' or t != 'wandb']
    for run_id in runs_of(scenario):
        _same_results(problems, job, reference, run_id)
        _same_records(problems, job, reference, run_id, trackers)
        _running_values(problems, job, reference, run_id)
        _registry(problems, job, outcome, run_id)
    _no_temporary_files(problems, job)
    if scenario.how == 'KILL' and len(job.attempts) > 1:
        loaded = [
            line.split()[1]
            for line in job.attempts[1].logs[0].splitlines()
            if line.startswith('LOADED ')
        ]
        first = loaded[0] if loaded else None
        if first != outcome.resume_from:
            problems.append(
                f'the restart loaded {first}, not the last complete '
                f'checkpoint {outcome.resume_from}'
            )
    return problems


def termination_differences(
    scenario: Scenario, job: Job, uninterrupted: Job
) -> list[str]:
    """A terminated training against the uninterrupted one, up to the stop.

    Termination changes nothing of the epochs before it: the weights and
    optimiser at the end are those that the uninterrupted run saved at
    that epoch, and every record of those epochs is the same.
    """
    problems: list[str] = []
    stop = scenario.terminated_epoch
    for rank in range(job.world_size):
        result = job.rank_result('run', rank)
        got = (result['epoch'], result['terminated']) if result else None
        if got != (stop, _reference.REASON):
            problems.append(
                f'rank {rank} stopped with {got}, expected '
                f'{(stop, _reference.REASON)}'
            )
    final = job.final()
    if final is not None:

        def weights() -> None:
            saved = uninterrupted.checkpoint(stop)
            assert_bitwise_equal(final['model'], saved['model']['module'])
            assert_bitwise_equal(final['optimizer'], saved['optimizer'])

        _check(problems, f'weights against epoch {stop}', weights)
    for kind in TRACKERS:
        read = READERS[kind]

        def compare(read: Callable[..., Any] = read, kind: str = kind) -> None:
            def training(records: dict[Any, list[float]]) -> dict[Any, Any]:
                return {
                    key: value
                    for key, value in _epoch_records(records).items()
                    if key[0].startswith(('Trainer/', 'Validation/'))
                }

            actual = training(read(job.run_dir()))
            expected = {
                key: value
                for key, value in training(
                    read(uninterrupted.run_dir())
                ).items()
                if key[1] <= stop
            }
            assert_records_once(kind, actual, expected, stop)

        _check(problems, f'{kind} records up to epoch {stop}', compare)
    return problems


def run_scenario(scenario: Scenario, job: Job) -> Outcome:
    """The interrupted attempt, then the resumed one when there is one.

    No resumed attempt follows a termination, nor an attempt that exited 0
    on every rank: a scheduler requeues neither (and resuming a completed
    run continues it with more epochs).
    """
    first = job.attempt(*scenario.cue_options())
    problems = first_attempt_problems(scenario, first)
    after: dict[str, tuple[str, int]] = {}
    for run_id in runs_of(scenario):
        record = job.registry(run_id)
        if record is not None:
            after[run_id] = (record['status'], record['attempts'])
    if any(attempts != 1 for _, attempts in after.values()):
        problems.append(f'registry after attempt 1: {after}')
    outcome = Outcome(problems, after)
    if scenario.how in ('USR2', 'TERM'):
        stopped = after.get('run', ('', 0))[0]
        if stopped != 'preempted':
            problems.append(f'run is {stopped!r} after the signal')
    if scenario.how == 'terminate' or first.codes == [0] * job.world_size:
        return outcome
    unfinished = [
        r for r in runs_of(scenario) if after.get(r, ('', 0))[0] != 'completed'
    ]
    if unfinished:
        outcome.resume_from = job.newest_checkpoint(unfinished[0])
    if scenario.sweep and scenario.how != 'KILL':
        # the signal came at the end of sweep-a: `run` stops at its first
        # step boundary (every step alone, every sync point with 2 ranks)
        boundary = 1 if scenario.world_size == 1 else 2
        wanted = checkpoint_name(0, boundary)
        if outcome.resume_from != wanted:
            problems.append(
                f'run stopped at checkpoint {outcome.resume_from}, '
                f'expected {wanted} (its first step boundary)'
            )
    second = job.attempt()
    if second.codes != [0] * scenario.world_size:
        problems.append(f'the resumed attempt exited {second.describe()}')
    return outcome
