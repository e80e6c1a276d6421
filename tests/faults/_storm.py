"""A kill storm: SIGKILLs at random moments of a training, counted.

The reference training (one process, CSV only, six epochs, no early stop,
a checkpoint every epoch; steps and checkpoint writes slowed a little so
that a random moment falls anywhere, writes included) is started and
SIGKILLed again and again, each attempt resuming the one before.  After
every kill the storm counts:

- corrupt loads: a complete checkpoint on disk (a name a load would
  pick) that does not load, and every attempt that warned that one
  "cannot be read";
- restarts that did not continue from the last complete checkpoint: the
  checkpoint an attempt loaded (its ``LOADED`` line) must be the newest
  complete one when it started.  An attempt killed before it loaded
  anything is counted apart.

A run that completes between two kills (its registry says so, even when
the kill came after that, before the process exited) is compared with the
uninterrupted one (weights bit for bit, CSV records once each) and the
storm goes on in a fresh folder.  At the end the last run is finished
without a kill and compared too.
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import signal
import time
from typing import Any

import torch

from tests.faults._harness import Job
from tests.preemption._support import (
    READERS,
    Zygote,
    _kill_group,
    assert_bitwise_equal,
    assert_records_once,
)

OPTIONS = (
    '--trackers',
    'csv',
    '--epochs',
    '6',
    '--patience',
    '0',
    '--step-sleep',
    '0.01',
    '--slow-save',
    '0.005',
)
EPOCHS = 6


@dataclasses.dataclass
class StormReport:
    """What a storm counted."""

    kills: int = 0
    corrupt_loads: int = 0
    restarts_checked: int = 0
    killed_before_loading: int = 0
    wrong_restarts: list[str] = dataclasses.field(default_factory=list)
    completed_runs: int = 0
    differing_runs: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (
            self.corrupt_loads or self.wrong_restarts or self.differing_runs
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reference(zygote: Zygote, root: pathlib.Path) -> tuple[Job, float]:
    """The uninterrupted storm training, and how long its attempt took."""
    job = Job(zygote, root, 1, OPTIONS)
    began = time.monotonic()
    attempt = job.attempt()
    took = time.monotonic() - began
    if attempt.codes != [0]:
        raise RuntimeError(f'the storm reference failed:\n{job.logs()}')
    return job, took


def _loaded(log: str) -> str | None:
    for line in log.splitlines():
        if line.startswith('LOADED '):
            return line.split()[1]
    return None


def _unreadable(job: Job) -> int:
    """Complete checkpoints of the run that do not load."""
    folder = job.run_dir() / 'checkpoints' / 'net'
    bad = 0
    for path in sorted(folder.glob('epoch_*.pt')):
        try:
            torch.load(path, weights_only=False)
        except Exception:  # noqa: BLE001 - any failure is a corrupt file
            bad += 1
    return bad


def _compare(job: Job, expected: Job) -> str | None:
    """None when the completed run equals the uninterrupted one."""
    try:
        final, wanted = job.final(), expected.final()
        assert final is not None, 'no final weights'
        assert wanted is not None
        assert_bitwise_equal(final['model'], wanted['model'])
        assert_bitwise_equal(final['optimizer'], wanted['optimizer'])
        read = READERS['csv']
        assert_records_once(
            'csv', read(job.run_dir()), read(expected.run_dir()), EPOCHS
        )
    except AssertionError as err:
        return f'{job.root.name}: {err}'
    return None


def storm(
    zygote: Zygote,
    root: pathlib.Path,
    kills: int,
    seed: int = 0,
) -> StormReport:
    """Kill the training ``kills`` times at random moments; the counts."""
    report = StormReport()
    began = time.monotonic()
    expected, duration = reference(zygote, root / 'reference')
    moments = random.Random(seed)
    runs = 0
    job = Job(zygote, root / f'run{runs}', 1, OPTIONS)
    while report.kills < kills:
        newest = job.newest_checkpoint()
        (pid,) = job.start()
        time.sleep(moments.uniform(0.0, duration))
        _kill_group(pid)
        attempt = job.finish([pid])
        log = attempt.logs[0]
        report.corrupt_loads += log.count('cannot be read')
        loaded = _loaded(log)
        if len(job.attempts) > 1:
            if loaded is None and newest is not None:
                report.killed_before_loading += 1
            else:
                report.restarts_checked += 1
                if loaded != newest:
                    report.wrong_restarts.append(
                        f'{job.root.name} attempt {len(job.attempts)}: '
                        f'loaded {loaded}, newest complete was {newest}'
                    )
        report.corrupt_loads += _unreadable(job)
        killed = attempt.codes == [-signal.SIGKILL]
        report.kills += int(killed)
        record = job.registry()
        if killed and not (record and record['status'] == 'completed'):
            continue
        # the run completed, maybe just before the kill: resuming it now
        # would continue it with more epochs, so the next run starts anew
        if record and record['status'] == 'completed':
            report.completed_runs += 1
            difference = _compare(job, expected)
            if difference:
                report.differing_runs.append(difference)
        else:
            report.differing_runs.append(
                f'{job.root.name}: attempt exited {attempt.codes}'
            )
        runs += 1
        job = Job(zygote, root / f'run{runs}', 1, OPTIONS)
    if job.attempts:
        attempt = job.attempt()
        report.corrupt_loads += attempt.logs[0].count('cannot be read')
        report.completed_runs += 1
        difference = _compare(job, expected)
        if attempt.codes != [0] or difference:
            report.differing_runs.append(
                difference or f'{job.root.name}: exited {attempt.codes}'
            )
    report.seconds = round(time.monotonic() - began, 1)
    return report
