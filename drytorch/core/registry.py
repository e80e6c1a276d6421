"""The run registry: one JSON file per experiment, guarded by a file lock.

Several processes may create runs of one experiment at the same moment (a
sweep, a job array), so every read-modify-write happens under a lock and the
file is replaced atomically: a reader never sees half a registry.  Only rank
zero of a job touches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any, Literal

import filelock

from drytorch.core import exceptions

__all__ = ['RunRecord', 'RunRegistry', 'RunStatus', 'atomic_write_text']

RunStatus = Literal['created', 'running', 'completed', 'failed', 'preempted']
TIMESTAMP_FORMAT = '%Y-%m-%d@%Hh%Mm%Ss'


@dataclasses.dataclass
class RunRecord:
    """What the registry knows of one run."""

    run_id: str
    status: RunStatus = 'created'
    timestamp: str = ''
    git_commit: str | None = None
    attempts: int = 0
    job_key: str | None = None
    job_index: int | None = None
    world_size: int = 1
    updated: str = ''


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    with tmp.open('w', encoding='utf-8') as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def git_commit(cwd: pathlib.Path | None = None) -> str | None:
    """The commit checked out where the script runs, if it is a git tree."""
    try:
        out = subprocess.run(
            ['git', 'rev-parse', 'HEAD'],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


class RunRegistry:
    """Runs of one experiment, in creation order."""

    def __init__(self, exp_dir: pathlib.Path) -> None:
        self.path = exp_dir / 'registry.json'
        self._lock = filelock.FileLock(str(exp_dir / '.registry.json.lock'))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[str, RunRecord]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            runs = self._read()
            yield runs
            payload = {'runs': [dataclasses.asdict(r) for r in runs.values()]}
            atomic_write_text(self.path, json.dumps(payload, indent=2))

    def _read(self) -> dict[str, RunRecord]:
        if not self.path.exists():
            return {}
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise RuntimeError(
                f'The run registry {self.path} is not valid JSON ({err}). '
                'Restore it from a backup or move it away to start afresh.'
            ) from err
        known = {f.name for f in dataclasses.fields(RunRecord)}
        records = [
            RunRecord(**{k: v for k, v in entry.items() if k in known})
            for entry in data.get('runs', [])
        ]
        return {r.run_id: r for r in records}

    def records(self) -> list[RunRecord]:
        """Every run, oldest first.

        Reads need no lock: writers replace the file atomically, so a
        reader sees either the old registry or the new one.
        """
        return list(self._read().values())

    def get(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id``, if any."""
        return self._read().get(run_id)

    def last(self) -> RunRecord | None:
        """The most recently created run, if any."""
        records = self.records()
        return records[-1] if records else None

    def find_job(
        self, job_key: str, index: int | None = None
    ) -> RunRecord | None:
        """The run started by the scheduler job ``job_key``, if any.

        Args:
            job_key: the scheduler's job key.
            index: which of the job's runs (0 for the first one the job's
                script created); the job's last run when None.

        """
        for record in reversed(self.records()):
            if record.job_key != job_key:
                continue
            if index is None or record.job_index in (index, None):
                return record
        return None

    def reserve(
        self,
        run_id: str | None,
        *,
        job_key: str | None,
        world_size: int,
        now: datetime.datetime,
        job_index: int | None = None,
    ) -> RunRecord:
        """Create a new run record with a unique id and return it.

        Default ids are timestamps; a second run in the same second gets a
        numbered suffix, decided under the lock so that concurrent
        processes never share an id.
        """
        commit = git_commit()
        with self._transaction() as runs:
            if run_id is not None and run_id in runs:
                raise exceptions.RunAlreadyRecordedError(run_id)
            base = run_id or now.strftime(TIMESTAMP_FORMAT)
            unique = base
            counter = 1
            while unique in runs:
                unique = f'{base}_{counter}'
                counter += 1
            record = RunRecord(
                run_id=unique,
                timestamp=now.isoformat(timespec='seconds'),
                git_commit=commit,
                job_key=job_key,
                job_index=job_index,
                world_size=world_size,
                updated=now.isoformat(timespec='seconds'),
            )
            runs[unique] = record
        return record

    def update(self, run_id: str, **changes: Any) -> RunRecord:
        """Change fields of a record (status, attempts...) under the lock."""
        with self._transaction() as runs:
            record = runs.get(run_id)
            if record is None:
                record = RunRecord(run_id=run_id)
                runs[run_id] = record
            for key, value in changes.items():
                setattr(record, key, value)
            record.updated = datetime.datetime.now().isoformat(
                timespec='seconds'
            )
        return record
