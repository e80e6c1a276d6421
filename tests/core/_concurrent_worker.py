"""One of several processes creating runs of one experiment at once.

Usage: ``python _concurrent_worker.py PAR_DIR BARRIER_DIR COUNT RUNS``.
Each process imports drytorch, then waits at a file barrier until all COUNT
processes are ready, so that their runs start as close together as
possible; it then creates RUNS runs and prints ``RUN:<id>`` for each.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

from drytorch import Experiment


def wait_for_all(barrier: pathlib.Path, count: int) -> None:
    (barrier / f'ready-{os.environ["TEST_PROCESS_INDEX"]}').touch()
    deadline = time.monotonic() + 60
    while len(list(barrier.glob('ready-*'))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError('the other processes never got ready')
        time.sleep(0.002)


def main() -> None:
    par_dir, barrier, count, runs = sys.argv[1:5]
    wait_for_all(pathlib.Path(barrier), int(count))
    exp = Experiment(None, name='Shared', par_dir=par_dir)
    for _ in range(int(runs)):
        with exp.create_run() as run:
            print(f'RUN:{run.id}', flush=True)


if __name__ == '__main__':
    main()
