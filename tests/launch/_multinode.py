"""The job and the helpers of the multi-node fault tests.

``train`` runs in the job's processes, which need not import tests/: the
tests register this module with cloudpickle, to be pickled by value.  It
trains the digits demo and, on the first attempt, holds every rank at the
start of one epoch until the test has done its deed (a signal, a crashed
node): the fault lands at a known point of the training, whatever the
machine's speed.  Each rank reports in a folder of markers where it ran,
what it waited for and where it stopped.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import socket
import subprocess
import time
from typing import Any

PAUSE_LIMIT_S = 150.0
USABLE = ('idle', 'mixed', 'alloc', 'completing')
GO = 'go'
SYNC_EVERY = 4
"""The file that ends the wait in ``wait='go'`` mode."""


def train(
    par_dir: str,
    epochs: int,
    hold_at: int,
    markers: str | None = None,
    wait: str = 'signal',
) -> dict[str, float]:
    """The digits demo, with a checkpoint after epoch ``hold_at``.

    Every run (the reference too) checkpoints after epoch ``hold_at``
    besides the demo's own checkpoints, so that all runs have the same
    files.  With ``markers``, every rank of the first attempt stops before
    epoch ``hold_at + 1`` (the checkpoint of epoch ``hold_at`` is complete
    on disk by then), writes ``paused.<rank>`` (host and pid) and waits:
    for a preemption signal (``wait='signal'``) or for the file ``go`` in
    ``markers`` (``wait='go'``).  Then it writes ``released.<rank>``, and a
    rank that stops for a preemption writes ``stopped.<rank>`` with the
    position that the run reported.
    """
    from drytorch.core.exceptions import PreemptedExit
    from drytorch.demo import DemoConfig, train_digits
    from drytorch.distributed import ranks
    from drytorch.lib import hooks

    hooks.SaveEveryEpochs = functools.partial(  # type: ignore[misc]
        _SaveAndHold,
        base=hooks.SaveEveryEpochs,
        hold_at=hold_at,
        markers=markers,
        wait=wait,
    )
    try:
        return train_digits(DemoConfig(epochs=epochs), par_dir)
    except PreemptedExit as stop:
        if markers is not None:
            _report(
                pathlib.Path(markers) / f'stopped.{ranks.get_rank()}',
                message=str(stop),
            )
        raise


def _report(path: pathlib.Path, **fields: Any) -> None:
    fields.update(host=socket.gethostname(), pid=os.getpid())
    path.write_text(json.dumps(fields))


class _SaveAndHold:
    """The demo's SaveEveryEpochs, one checkpoint more and a hold."""

    def __init__(
        self,
        interval: int,
        base: type,
        hold_at: int,
        markers: str | None,
        wait: str,
    ) -> None:
        self._save = base(interval)
        self.hold_at = hold_at
        self.markers = markers
        self.wait = wait
        self._placed = False

    def __call__(self, trainer: Any) -> None:
        from drytorch.lib.runners import SyncSchedule

        if not self._placed:
            # sync points at fixed steps, from epoch 2 on: a signal during
            # the hold is read at step SYNC_EVERY of the next epoch, inside
            # it (the adaptive schedule syncs only at its end, this fast)
            trainer.sync = SyncSchedule(SYNC_EVERY)
            if self.markers is not None:
                # a hook of the next epochs' start: the checkpoint that
                # this hook asks for is written once every hook has run
                trainer.pre_epoch_hooks.register(
                    _Hold(self.hold_at, self.markers, self.wait)
                )
            self._placed = True
        self._save(trainer)
        if trainer.model.epoch == self.hold_at:
            trainer.save_checkpoint()


class _Hold:
    """Waits, on every rank of the first attempt, before one epoch."""

    def __init__(self, after: int, markers: str, wait: str) -> None:
        self.after = after
        self.markers = pathlib.Path(markers)
        self.wait = wait

    def __call__(self, trainer: Any) -> None:
        from drytorch.core.experimenting import Experiment
        from drytorch.distributed import ranks
        from drytorch.distributed.preemption import watcher

        run = Experiment.get_current().run
        if trainer.model.epoch != self.after or run.attempt != 1:
            return
        rank = ranks.get_rank()
        _report(self.markers / f'paused.{rank}', epoch=trainer.model.epoch)
        start = time.monotonic()
        go = self.markers / GO
        while time.monotonic() - start < PAUSE_LIMIT_S:
            if self.wait == 'signal' and watcher.requested:
                break
            if self.wait == 'go' and go.exists():
                break
            time.sleep(0.05)
        _report(
            self.markers / f'released.{rank}',
            signal=watcher.signum,
            waited_s=time.monotonic() - start,
        )


# --- the test side ----------------------------------------------------------


def read_markers(markers: pathlib.Path, kind: str) -> dict[int, Any]:
    """``kind.<rank>`` files of the markers folder, by rank."""
    found = {}
    for path in markers.glob(f'{kind}.*'):
        text = path.read_text()
        if text:
            found[int(path.suffix[1:])] = json.loads(text)
    return found


def job_tail(job: Any, rank: int = 0, lines: int = 30) -> str:
    """The end of one rank's logs, for a failure message."""
    paths = job.log_paths()
    if rank >= len(paths):
        return '(no logs)'
    shown = []
    for path in paths[rank]:
        text = path.read_text() if path.exists() else '(missing)'
        shown.append(f'--- {path}\n' + '\n'.join(text.splitlines()[-lines:]))
    return '\n'.join(shown)


def sacct_history(job_id: str) -> list[str]:
    """The job's state in each of its attempts (sacct --duplicates)."""
    proc = subprocess.run(
        ['sacct', '-D', '-X', '-n', '-P', '-j', job_id, '-o', 'State'],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stdout.split()


def sacct_field(job_id: str, field: str) -> str:
    """One field of the job's (last) accounting record."""
    proc = subprocess.run(
        ['sacct', '-X', '-n', '-P', '-j', job_id, '-o', field],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stdout.split()[-1]


def attempts(par_dir: pathlib.Path) -> list[dict[str, Any]]:
    """``metadata/attempts.yaml`` of the one demo run under ``par_dir``."""
    import yaml

    (path,) = (par_dir / 'Digits' / 'runs').glob('*/metadata/attempts.yaml')
    return list(yaml.safe_load(path.read_text()))


def scontrol(*args: str) -> subprocess.CompletedProcess[str]:
    """``scontrol ARGS``; raise if it fails."""
    return subprocess.run(
        ['scontrol', *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def node_states(partition: str) -> dict[str, str]:
    """Each node's state in ``partition``, as sinfo prints it."""
    out = subprocess.run(
        ['sinfo', '-h', '-N', '-p', partition, '-o', '%N %T'],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return dict(line.split() for line in out.splitlines() if line)


def restore_node(cluster: Any, node: str, timeout_s: float = 30) -> None:
    """Bring a crashed node back: its slurmd runs, SLURM may use it again.

    ``node.sh start`` restarts its slurmd (ReturnToService=2 returns a node
    that stopped answering); a node set DOWN by scontrol needs RESUME too.
    """
    cluster.node_tool('start', node)
    deadline = time.monotonic() + timeout_s
    resumed = False
    while True:
        state = node_states(cluster.partition).get(node, '')
        if state.startswith(USABLE) and not state.endswith('*'):
            return
        if not resumed and state.startswith(('down', 'drain')):
            subprocess.run(
                ['scontrol', 'update', f'NodeName={node}', 'State=RESUME'],
                capture_output=True,
                timeout=30,
                check=False,
            )
            resumed = True
        if time.monotonic() > deadline:
            raise AssertionError(
                f'{node} not back after {timeout_s:g} s: {state}'
            )
        time.sleep(0.2)


def wait_idle(cluster: Any, timeout_s: float = 60) -> None:
    """Wait until every node of the cluster is idle."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = node_states(cluster.partition)
        if set(states.values()) == {'idle'}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f'nodes not idle after {timeout_s:g} s: {states}'
            )
        time.sleep(0.2)
