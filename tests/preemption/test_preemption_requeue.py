"""Asking SLURM to requeue a preempted job, on rank zero, outside submitit.

``scontrol`` is a stand-in script on ``PATH`` that records its arguments,
except in the last test, which runs a job on the real test cluster.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drytorch import Experiment, PreemptedExit
from drytorch.core import exceptions, experimenting
from drytorch.distributed import preemption
from tests.helpers.multiprocess import REPO_ROOT
from tests.preemption._support import (
    REQUEUE,
    WORKER,
    Trial,
    Zygote,
    assert_bitwise_equal,
    base_environ,
)
from tests.preemption.conftest import options

FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "$FAKE_SCONTROL_LOG"
if [ -n "$FAKE_SCONTROL_ERROR" ]; then
    echo "$FAKE_SCONTROL_ERROR" >&2
    exit 1
fi
"""


@pytest.fixture
def scontrol(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pathlib.Path]:
    """A recording ``scontrol`` first on PATH; yields its log file."""
    folder = tmp_path / 'bin'
    folder.mkdir()
    script = folder / 'scontrol'
    script.write_text(FAKE_SCONTROL)
    script.chmod(0o755)
    log = tmp_path / 'scontrol.log'
    monkeypatch.setenv('PATH', f'{folder}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.setenv('FAKE_SCONTROL_LOG', str(log))
    monkeypatch.delenv('FAKE_SCONTROL_ERROR', raising=False)
    for name in list(os.environ):
        if name.startswith('SUBMITIT_'):
            monkeypatch.delenv(name)
    yield log


def calls(log: pathlib.Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


class TestRequestRequeue:
    def test_outside_slurm_nothing_runs(self, scontrol: pathlib.Path) -> None:
        assert not preemption.request_requeue()
        assert calls(scontrol) == []

    def test_rank_zero_requeues_its_job(
        self, scontrol: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv('SLURM_JOB_ID', '4242')
        assert preemption.request_requeue()
        assert calls(scontrol) == ['requeue 4242']

    @pytest.mark.parametrize(
        'variable', ['SUBMITIT_EXECUTOR', 'SUBMITIT_LOCAL_JOB_ID']
    )
    def test_submitit_requeues_by_itself(
        self,
        scontrol: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
        variable: str,
    ) -> None:
        monkeypatch.setenv('SLURM_JOB_ID', '4242')
        monkeypatch.setenv(variable, 'slurm')
        assert preemption.under_submitit()
        assert not preemption.request_requeue()
        assert calls(scontrol) == []

    def test_other_ranks_do_not(
        self, scontrol: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv('SLURM_JOB_ID', '4242')
        monkeypatch.setattr(preemption.ranks, 'is_rank_zero', lambda: False)
        assert not preemption.request_requeue()
        assert calls(scontrol) == []

    def test_a_refusal_is_a_warning(
        self, scontrol: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv('SLURM_JOB_ID', '4242')
        monkeypatch.setenv('FAKE_SCONTROL_ERROR', 'Invalid job id specified')
        with pytest.warns(
            exceptions.DryTorchWarning,
            match=r'`scontrol requeue 4242` failed \(Invalid job id '
            r'specified\).*requeue it with `scontrol requeue 4242`',
        ):
            assert not preemption.request_requeue()
        assert calls(scontrol) == ['requeue 4242']

    def test_no_scontrol_is_a_warning(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv('SLURM_JOB_ID', '4242')
        monkeypatch.setenv('PATH', str(tmp_path))
        with pytest.warns(exceptions.DryTorchWarning, match='FileNotFound'):
            assert not preemption.request_requeue()


class TestRunStop:
    """The run asks for the requeue once everything is saved."""

    @staticmethod
    def spy(
        monkeypatch: pytest.MonkeyPatch, exp: Experiment[None]
    ) -> list[tuple[str, bool, Any]]:
        """What the registry and the handlers say when it is asked."""
        seen: list[tuple[str, bool, Any]] = []

        def request_requeue() -> bool:
            record = exp.registry.last()
            assert record is not None
            armed = signal.getsignal(signal.SIGTERM) == (
                preemption.watcher._handle
            )
            seen.append((record.status, armed, Experiment.current_run()))
            return True

        monkeypatch.setattr(experimenting, 'request_requeue', request_requeue)
        return seen

    def test_preempted_run_requeues_last(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        exp: Experiment[None] = Experiment(None, name='e', par_dir=tmp_path)
        seen = self.spy(monkeypatch, exp)
        with pytest.raises(PreemptedExit), exp.create_run():
            raise PreemptedExit()
        # registry written, run closed, handlers still armed (SLURM's
        # SIGTERM after the requeue only sets the flag), and they stay
        # armed for a next run; the stop consumed the signal
        assert seen == [('preempted', True, None)]
        assert signal.getsignal(signal.SIGTERM) == preemption.watcher._handle
        assert not preemption.watcher.requested

    @pytest.mark.parametrize('status', ['completed', 'failed'])
    def test_other_endings_do_not(
        self,
        tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
        status: Any,
    ) -> None:
        exp: Experiment[None] = Experiment(None, name='e', par_dir=tmp_path)
        seen = self.spy(monkeypatch, exp)
        exp.create_run().start().stop(status)
        assert seen == []


def test_requeued_job_resumes_its_run(
    zygote: Zygote,
    reference: Callable[[int], Trial],
    tmp_path: pathlib.Path,
    scontrol: pathlib.Path,
) -> None:
    """Under SLURM: requeue asked, and the restarted job finds its run.

    The second attempt is not told to resume: ``SLURM_RESTART_COUNT``
    and the job id lead it to the run.
    """
    slurm = {
        'SLURM_JOB_ID': '4242',
        'PATH': os.environ['PATH'],
        'FAKE_SCONTROL_LOG': str(scontrol),
    }
    trial = Trial(zygote, tmp_path / 'run', 1, options(1, 'csv'))
    codes = trial.attempt('--signal-at', '8', env=slurm)
    assert codes == [REQUEUE], trial.logs()
    assert calls(scontrol) == ['requeue 4242']
    restarted = {**slurm, 'SLURM_RESTART_COUNT': '1'}
    assert trial.attempt(env=restarted, resume=False) == [0], trial.logs()
    assert calls(scontrol) == ['requeue 4242']
    record = trial.registry()
    assert (record['status'], record['attempts']) == ('completed', 2)
    assert record['job_key'] == 'slurm:4242'
    assert_bitwise_equal(trial.final(), reference(1).final())


def test_submitit_job_is_not_requeued_by_drytorch(
    zygote: Zygote, tmp_path: pathlib.Path, scontrol: pathlib.Path
) -> None:
    env = {
        'SLURM_JOB_ID': '4242',
        'SUBMITIT_EXECUTOR': 'slurm',
        'PATH': os.environ['PATH'],
        'FAKE_SCONTROL_LOG': str(scontrol),
    }
    trial = Trial(zygote, tmp_path / 'run', 1, options(1, 'csv'))
    assert trial.attempt('--signal-at', '8', env=env) == [REQUEUE]
    assert calls(scontrol) == []


# ---------------------------------------------------------------- SLURM
def _job_state(job: str) -> dict[str, str]:
    out = subprocess.run(
        ['scontrol', 'show', 'job', job],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return dict(field.split('=', 1) for field in out.split() if '=' in field)


def _wait_for(
    job: str, ready: Callable[[dict[str, str]], bool], timeout: float
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        state = _job_state(job)
        if ready(state):
            return state
        if time.monotonic() > deadline:
            subprocess.run(['scancel', job], check=False, timeout=30)
            pytest.fail(f'job {job} stuck: {state}')
        time.sleep(0.5)


@pytest.mark.slow
def test_preempted_job_is_requeued_by_slurm(
    slurm_cluster: Any,
    reference: Callable[[int], Trial],
    tmp_path: pathlib.Path,
) -> None:
    """A batch job preempts itself, asks for a requeue and comes back.

    SLURM holds a requeued job for two minutes before it may start again;
    the test lifts that hold (``StartTime=now``) once the job is pending
    and its first start is over.
    """
    root = tmp_path / 'run'
    root.mkdir()
    script = tmp_path / 'job.sh'
    # the first start preempts itself at its 8th step; the restart does not
    script.write_text(
        '#!/bin/bash\n'
        'cue=""\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then\n'
        '    cue="--signal-at 8"\n'
        'fi\n'
        f'exec {sys.executable} {WORKER} --root {root} --out {root} '
        '--trackers csv $cue\n'
    )
    env = base_environ()
    env['PYTHONPATH'] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), env.get('PYTHONPATH')])
    )
    output = tmp_path / 'job.out'
    submitted = subprocess.run(
        [
            'sbatch',
            '--parsable',
            '--requeue',
            '--time=5',
            f'--partition={slurm_cluster.partition}',
            f'--output={output}',
            '--open-mode=append',
            str(script),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job = submitted.stdout.strip().split(';')[0]
    state = _wait_for(
        job,
        lambda s: s['Restarts'] == '1' and s['JobState'] == 'PENDING',
        timeout=120,
    )
    # slurmd refuses to launch a job in the same second as it killed it
    # (credential times have a resolution of a second): wait past it
    time.sleep(2)
    subprocess.run(
        ['scontrol', 'update', f'JobId={job}', 'StartTime=now'],
        check=True,
        timeout=30,
    )
    state = _wait_for(
        job,
        lambda s: s['JobState'] not in ('PENDING', 'RUNNING', 'COMPLETING'),
        timeout=120,
    )
    log = output.read_text() if output.exists() else ''
    assert state['JobState'] == 'COMPLETED', log
    assert log.count('STARTED') == 2, log
    trial = Trial(None, root)
    record = trial.registry()
    assert (record['status'], record['attempts']) == ('completed', 2), log
    assert record['job_key'] == f'slurm:{job}'
    assert_bitwise_equal(trial.final(), reference(1).final())
