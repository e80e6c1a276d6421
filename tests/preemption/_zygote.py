"""A warm parent that forks attempts of the preemption worker on request.

Every attempt of every preemption test is a process of its own, killed by
real signals; starting each from a fresh interpreter would spend most of
the suite's time importing torch.  This parent imports everything once,
while it is still single-threaded, then forks one child per attempt.  A
child redirects its output to a log file, takes its environment, runs
``_worker.main`` and leaves as a script would: a ``SystemExit`` sets its
status as the interpreter would and the ``atexit`` functions run; only
the teardown of the modules is skipped.  Its exit status is the real one
that ``waitpid`` reports.

Protocol, one JSON object per line on stdin, one reply per line on stdout:

- ``{"op": "start", "argv": [...], "env": {...}, "log": PATH}`` forks a
  child and replies ``{"pid": PID}``;
- ``{"op": "wait", "pid": PID}`` replies ``{"code": STATUS}`` once the
  child has exited (negative: killed by that signal).

The parent replies ``{"ready": true}`` once warm.  It exits when its stdin
closes.
"""

from __future__ import annotations

import atexit
import faulthandler
import importlib
import json
import os
import pathlib
import sys
import threading
import traceback
from types import ModuleType
from typing import Any, NoReturn

HERE = pathlib.Path(__file__).resolve().parent
WARM = (
    'torch',
    'torch.utils.tensorboard',
    'sqlalchemy',
    'wandb',
    'yaml',
    'drytorch',
    'drytorch.trackers.csv',
    'drytorch.trackers.sqlalchemy',
    'drytorch.trackers.tensorboard',
    'drytorch.trackers.wandb',
    'drytorch.trackers.yaml',
)


def warm() -> None:
    """Import what the worker needs, and what its first step imports."""
    for name in WARM:
        importlib.import_module(name)
    sys.path.insert(0, str(HERE))
    importlib.import_module('_worker')
    import torch

    # building an optimiser imports torch's compiler stack (seconds)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + '\n')
    sys.stdout.flush()


def child(
    request: dict[str, Any], worker: ModuleType, stacks_after: float
) -> NoReturn:
    """In the forked child: become the worker, then leave with its status.

    A hung attempt is killed by the test after its timeout: ``stacks_after``
    seconds in, every thread's stack goes to the log first, so that the
    hang can be read.
    """
    os.setsid()
    log = os.open(request['log'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(devnull)
    os.environ.update(request.get('env', {}))
    faulthandler.dump_traceback_later(stacks_after, exit=False)
    argv = [str(a) for a in request['argv']]
    sys.argv = [worker.__file__ or '', *argv]
    try:
        try:
            code: object = worker.main(argv)
        finally:
            from drytorch.distributed import teardown_distributed

            teardown_distributed()
    except SystemExit as leaving:
        code = leaving.code
    except BaseException:  # noqa: BLE001 - reported as the interpreter would
        traceback.print_exc()
        code = 1
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip tearing down the modules: in a forked child that touches every
    # page inherited from the parent, seconds under load
    os._exit((code or 0) & 0xFF)


def serve(worker: ModuleType, stacks_after: float) -> None:
    """Answer requests until stdin closes (see the module docstring)."""
    threads = [t.name for t in threading.enumerate()]
    if len(threads) != 1:
        reply({'error': f'threads before fork: {threads}'})
        sys.exit(1)
    reply({'ready': True})
    for line in sys.stdin:
        request = json.loads(line)
        if request['op'] == 'start':
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                child(request, worker, stacks_after)
            reply({'pid': pid})
        elif request['op'] == 'wait':
            _, status = os.waitpid(int(request['pid']), 0)
            reply({'code': os.waitstatus_to_exitcode(status)})
        else:
            reply({'error': f'unknown op {request["op"]!r}'})


if __name__ == '__main__':
    warm()
    serve(importlib.import_module('_worker'), 75.0)
