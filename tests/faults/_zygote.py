"""The warm parent that forks the fault matrix's attempts.

The protocol, the reasons and the way a child leaves are those of
``tests/preemption/_zygote.py`` (whose client, ``_support.Zygote``, talks to
this one too); only the script differs: the children run
``_reference.main``.  The matrix starts a few hundred attempts, and each
would otherwise spend seconds importing torch and the trackers.
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
from typing import Any, NoReturn

HERE = pathlib.Path(__file__).resolve().parent
# seconds after which a child dumps its stacks: before the harness gives up
# on it (see _harness.ATTEMPT_TIMEOUT)
STACKS_AFTER = 35.0
sys.path.insert(0, str(HERE.parents[1]))

from tests.preemption._zygote import WARM, reply  # noqa: E402


def warm() -> None:
    """Import what the attempts need before the first fork."""
    for name in (*WARM, 'tests.faults._reference'):
        importlib.import_module(name)
    import torch

    # building an optimiser imports torch's compiler stack (seconds)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def child(request: dict[str, Any]) -> NoReturn:
    """In the forked child: run one attempt, leave with its status."""
    os.setsid()
    log = os.open(request['log'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(devnull)
    os.environ.update(request.get('env', {}))
    from tests.faults import _reference

    # a hung attempt is killed after its timeout: its stacks are in the log
    faulthandler.dump_traceback_later(STACKS_AFTER)
    argv = [str(a) for a in request['argv']]
    sys.argv = [_reference.__file__, *argv]
    try:
        try:
            code: object = _reference.main(argv)
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
    os._exit((code or 0) & 0xFF)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if request['op'] == 'start':
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                child(request)
            reply({'pid': pid})
        elif request['op'] == 'wait':
            _, status = os.waitpid(int(request['pid']), 0)
            reply({'code': os.waitstatus_to_exitcode(status)})
        else:
            reply({'error': f'unknown op {request["op"]!r}'})


if __name__ == '__main__':
    warm()
    threads = [t.name for t in threading.enumerate()]
    if len(threads) != 1:
        reply({'error': f'threads before fork: {threads}'})
        sys.exit(1)
    reply({'ready': True})
    serve()
