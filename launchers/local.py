"""The digits demo as one process: no launcher, no process group.

    python launchers/local.py [--epochs N] [--par-dir DIR] [--seed S]

The same script runs unchanged under ``torchrun.sh`` and ``mpirun.sh``
beside this file; drytorch finds out from the environment how many
processes there are.  Results go under ``DIR/Digits/runs/<run id>``
(``./experiments`` by default).
"""

from __future__ import annotations

import sys

from drytorch.demo import main

if __name__ == '__main__':
    sys.exit(main())
