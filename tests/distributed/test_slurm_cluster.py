"""SLURM for real: the batch shell is one process, srun's tasks are ranks.

Runs one job on the one-node test cluster (``slurm_cluster`` fixture): its
batch shell reports what it detects, then ``srun`` starts two ranks that
bring gloo up from SLURM's own variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name('rank_worker.py')
REPO = Path(__file__).resolve().parents[2]

DETECT = (
    'import json; from drytorch.distributed import detect_environment; '
    'e = detect_environment(); '
    'print(json.dumps({"shell": e.name, "world_size": e.world_size}))'
)


@pytest.mark.slow
def test_batch_shell_and_srun_tasks(
    slurm_cluster: Any, tmp_path: Path
) -> None:
    output = tmp_path / 'job.out'
    script = tmp_path / 'job.sh'
    script.write_text(
        '#!/bin/bash\n'
        f"{sys.executable} -c '{DETECT}'\n"
        f'srun {sys.executable} {WORKER} init\n'
    )
    environ = dict(os.environ)
    path = environ.get('PYTHONPATH')
    environ['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), path]))
    environ['OMP_NUM_THREADS'] = '1'
    environ['DRYTORCH_DIST_TIMEOUT'] = '60'
    proc = subprocess.run(
        [
            'sbatch',
            '--wait',
            '--ntasks=2',
            '--time=3',
            f'--partition={slurm_cluster.partition}',
            f'--output={output}',
            str(script),
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    log = output.read_text() if output.exists() else ''
    assert proc.returncode == 0, proc.stderr + log
    reports = [json.loads(x) for x in log.splitlines() if x.startswith('{')]
    shell = [r for r in reports if 'shell' in r]
    ranks = [r for r in reports if 'group_rank' in r]
    # sbatch --ntasks=2 gives the shell SLURM_NTASKS=2 and SLURM_PROCID=0,
    # yet it is one process.
    assert shell == [{'shell': 'local', 'world_size': 1}]
    assert sorted(r['group_rank'] for r in ranks) == [0, 1]
    assert {r['name'] for r in ranks} == {'slurm'}
    assert {r['group_size'] for r in ranks} == {2}
    assert {r['master'].split(':')[0] for r in ranks} == {'localhost'}
