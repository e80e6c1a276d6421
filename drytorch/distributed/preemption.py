"""Preemption: a signal sets a flag; the training loop does the rest.

The handler does nothing but record that the signal arrived.  The loop reads
the flag at a step boundary (every step in one process; in the packed
all-reduce at sync points across ranks, so that every rank stops at the
same step), then checkpoints, closes its trackers and exits with
:data:`drytorch.core.exceptions.REQUEUE_EXIT_CODE`; under SLURM, rank zero
first asks SLURM to requeue the job (:func:`request_requeue`) unless
submitit, which requeues its own jobs, started it.  Doing that work inside
the handler, as submitit does for a pickled function, would run it at an
arbitrary bytecode of the training step, possibly while a collective is in
flight on another rank.

The default signals: SIGUSR2, which submitit's ``--signal`` and SLURM's
preemption send and which NCCL leaves alone (NCCL's watchdog may use
SIGUSR1); SIGUSR1, sent by other cluster setups; SIGTERM, sent at a time
limit and by ``scancel``.  Set ``DRYTORCH_PREEMPT_SIGNALS`` (for example
``USR2,TERM``) to change them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType

from drytorch.core import exceptions
from drytorch.distributed import ranks

__all__ = [
    'DEFAULT_SIGNALS',
    'PreemptionWatcher',
    'configured_signals',
    'request_requeue',
    'under_submitit',
    'watcher',
]

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGUSR2,
    signal.SIGUSR1,
    signal.SIGTERM,
)
SIGNALS_VARIABLE = 'DRYTORCH_PREEMPT_SIGNALS'
REQUEUE_TIMEOUT = 60.0


def configured_signals() -> tuple[signal.Signals, ...]:
    """The signals to watch: ``$DRYTORCH_PREEMPT_SIGNALS`` or the default."""
    text = os.environ.get(SIGNALS_VARIABLE, '').strip()
    if not text:
        return DEFAULT_SIGNALS
    chosen = []
    for part in text.replace(' ', '').split(','):
        name = part.upper()
        name = name if name.startswith('SIG') else f'SIG{name}'
        try:
            chosen.append(signal.Signals[name])
        except KeyError:
            raise ValueError(
                f'{SIGNALS_VARIABLE} names {part!r}, which is not a signal; '
                'use names such as USR2, USR1, TERM, separated by commas.'
            ) from None
    return tuple(chosen)


class PreemptionWatcher:
    """Records that a preemption signal arrived; nothing more.

    Attributes:
        signalled_at: ``time.monotonic()`` of the first signal, if any.
        signum: the first signal received, if any.
        consumed: the signal that the last preempted run stopped for.

    """

    def __init__(self) -> None:
        self.signalled_at: float | None = None
        self.signum: int | None = None
        self.consumed: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal arrived since the watcher was armed."""
        return self.signalled_at is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()
            self.signum = signum

    def request(self) -> None:
        """Ask for a preemption stop from code (as a signal would)."""
        self._handle(signal.SIGUSR2, None)

    def reset(self) -> None:
        """Forget a signal, once a run has stopped for it.

        The signal stays readable as :attr:`consumed`: what the job does
        after the run (requeue or not) depends on which one it was.
        """
        if self.signum is not None:
            self.consumed = self.signum
        self.signalled_at = None
        self.signum = None

    @contextlib.contextmanager
    def armed(
        self, signals: Sequence[signal.Signals] | None = None
    ) -> Iterator[PreemptionWatcher]:
        """Install the handlers (if not yet) for the block and after it.

        The handlers stay installed once a run has armed them: a signal
        that arrives after a run's last step, or between two runs of a
        sweep, is kept, and the next run stops at its first step boundary
        and asks to be requeued, instead of the process dying from the
        default handler in between.  :meth:`disarm` restores the previous
        handlers, for a script that wants a late SIGTERM to end it.

        Handlers can only be installed from the main thread; elsewhere the
        block runs unwatched (the flag can still be set by :meth:`request`).
        """
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        if not self._previous:
            for sig in signals or configured_signals():
                self._previous[sig] = signal.signal(sig, self._handle)
        yield self

    @property
    def installed(self) -> bool:
        """Whether the handlers are installed."""
        return bool(self._previous)

    def disarm(self) -> None:
        """Restore the handlers that were there before the first run."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


watcher = PreemptionWatcher()
"""The process-wide watcher that runs arm while a run is active."""


def under_submitit(environ: Mapping[str, str] | None = None) -> bool:
    """Whether submitit started this process (it then requeues by itself).

    submitit's job scripts export ``SUBMITIT_EXECUTOR`` and its local
    executor ``SUBMITIT_LOCAL_*``; any ``SUBMITIT_`` variable counts.
    """
    source = os.environ if environ is None else environ
    return any(name.startswith('SUBMITIT_') for name in source)


def request_requeue(environ: Mapping[str, str] | None = None) -> bool:
    """Ask SLURM to requeue this job, when nothing else will.

    Runs ``scontrol requeue $SLURM_JOB_ID`` on rank zero; every other rank,
    a process outside SLURM (no ``SLURM_JOB_ID``) and a job of submitit
    (which requeues its own jobs) do nothing.  Not a collective: ranks may
    call it at different moments, or not at all.  A failure is a warning,
    since the checkpoint is written and the exit status still says
    "requeue me" to a job script.

    Returns:
        Whether SLURM accepted the request.

    """
    source = os.environ if environ is None else environ
    job = source.get('SLURM_JOB_ID', '').strip()
    if not job or under_submitit(source) or not ranks.is_rank_zero():
        return False
    if watcher.signum == signal.SIGTERM:
        # SIGTERM is how `scancel` stops a job: requeueing would undo the
        # cancel.  The checkpoint is saved; resubmit with resume=True.
        return False
    command = ['scontrol', 'requeue', job]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=REQUEUE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        problem = f'{err.__class__.__name__}: {err}'
    else:
        if done.returncode == 0:
            return True
        problem = done.stderr.strip() or f'exit status {done.returncode}'
    warnings.warn(
        exceptions.DryTorchWarning(
            f'`{" ".join(command)}` failed ({problem}). The checkpoint is '
            'saved, but SLURM will not restart the job by itself: requeue '
            f'it with `scontrol requeue {job}`, or resubmit it; the run '
            'resumes where it stopped.'
        ),
        stacklevel=2,
    )
    return False
