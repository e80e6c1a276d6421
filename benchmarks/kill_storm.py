"""SIGKILLs at random moments of a training that checkpoints every epoch.

Starts the fault matrix's reference training (one process, CSV, six
epochs, a checkpoint per epoch, steps and writes slowed a little) and
SIGKILLs its attempts at random moments, each attempt resuming the one
before, until ``--kills`` kills; then finishes the run without a kill.
Prints the counts (see ``tests/faults/_storm.py``): kills, corrupt loads,
restarts checked against the last complete checkpoint and those that
loaded another one, completed runs and those that differ from the
uninterrupted run.  The result is written to
``benchmarks/results/kill_storm.json``.

    python benchmarks/kill_storm.py              # 200 kills
    python benchmarks/kill_storm.py --kills 20 --seed 3
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults._harness import FaultZygote  # noqa: E402
from tests.faults._storm import storm  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--kills', type=int, default=200)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--out',
        default=str(ROOT / 'benchmarks' / 'results' / 'kill_storm.json'),
    )
    args = parser.parse_args()
    zygote = FaultZygote()
    try:
        with tempfile.TemporaryDirectory(prefix='kill-storm-') as folder:
            report = storm(
                zygote, pathlib.Path(folder), args.kills, seed=args.seed
            )
    finally:
        zygote.close()
    result = {
        'kills_asked': args.kills,
        'seed': args.seed,
        'machine': platform.platform(),
        **report.as_dict(),
        'clean': report.clean,
    }
    text = json.dumps(result, indent=2)
    print(text)
    pathlib.Path(args.out).write_text(text + '\n')
    return 0 if report.clean else 1


if __name__ == '__main__':
    sys.exit(main())
