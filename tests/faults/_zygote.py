"""The warm parent that forks the fault matrix's attempts.

The protocol, the reasons and the way a child leaves are those of
``tests/preemption/_zygote.py`` (whose client, ``_support.Zygote``, talks to
this one too); only the script differs: the children run
``_reference.main``.  The matrix starts a few hundred attempts, and each
would otherwise spend seconds importing torch and the trackers.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
# seconds after which a child dumps its stacks: before the harness gives up
# on it (see _harness.ATTEMPT_TIMEOUT)
STACKS_AFTER = 35.0
sys.path.insert(0, str(HERE.parents[1]))

from tests.preemption import _zygote as preemption_zygote  # noqa: E402

if __name__ == '__main__':
    preemption_zygote.warm()  # torch, the trackers, torch's compiler stack
    reference = importlib.import_module('tests.faults._reference')
    preemption_zygote.serve(reference, STACKS_AFTER)
