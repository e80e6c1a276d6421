"""GPU check: the backend and device each task gets, on real CUDA.

    python benchmarks/gpu_per_task_check.py               # all visible GPUs
    CUDA_VISIBLE_DEVICES=0 python benchmarks/gpu_per_task_check.py --tasks 4

Each simulated task is a fresh process with the variables its launcher
would set, so that CUDA sees only what that task would see:

1. ``srun --gpus-per-task=1``: task i sees one GPU (the i-th visible one,
   wrapping around), its local rank runs from 0 to n - 1, and
   ``SLURM_STEP_GPUS`` lists n GPUs.  Expected: NCCL on ``cuda:0``.
2. every task sees every visible GPU (torchrun, one worker per GPU).
   Expected: NCCL on ``cuda:<local rank>``.
3. two srun tasks share one GPU (``--gres=gpu:1 -n 2``).  Expected: gloo,
   both on ``cuda:0``.

A task runs ``init_distributed()`` with ``dist.init_process_group``
replaced by a recorder, since the other ranks of a simulated step do not
exist (``torch.cuda.set_device`` is real), then, when NCCL was chosen, a
real NCCL group of one on the chosen device and an all-reduce on it.
Without CUDA every task expects gloo on the CPU, which checks the script.
Needs no installed drytorch: the repository is put on PYTHONPATH.
Exit status: 0 when every task got what was expected.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_PREFIXES = ('SLURM_', 'OMPI_', 'PMI_', 'PMIX_', 'MPI_')
LAUNCHER_NAMES = {
    'RANK',
    'LOCAL_RANK',
    'WORLD_SIZE',
    'LOCAL_WORLD_SIZE',
    'GROUP_RANK',
    'MASTER_ADDR',
    'MASTER_PORT',
    'TORCHELASTIC_RUN_ID',
    'DRYTORCH_FORCE_PROCESS_GROUP',
}


def task() -> dict[str, Any]:
    """One simulated task: what init_distributed chose, and whether it ran."""
    import torch
    import torch.distributed as dist

    from drytorch.distributed import process_group as pg

    chosen: dict[str, Any] = {}

    def record(backend: str, **kwargs: Any) -> None:
        chosen['backend'] = backend
        chosen['device'] = str(kwargs.get('device_id') or 'cpu')

    real_init = dist.init_process_group
    dist.init_process_group = record  # type: ignore[assignment]
    try:
        pg.init_distributed()
    finally:
        dist.init_process_group = real_init
    device = pg.local_device()
    report: dict[str, Any] = {
        **chosen,
        'local_device': str(device),
        'visible': torch.cuda.device_count(),
        'CUDA_VISIBLE_DEVICES': os.environ.get('CUDA_VISIBLE_DEVICES'),
    }
    values = torch.ones(4, device=device)
    if chosen.get('backend') == 'nccl':
        report['current_device'] = torch.cuda.current_device()
        dist.init_process_group(
            'nccl',
            store=dist.HashStore(),
            rank=0,
            world_size=1,
            device_id=device,
        )
        dist.all_reduce(values)
        dist.destroy_process_group()
    report['ran'] = values.sum().item() == 4.0
    return report


def clean_environ() -> dict[str, str]:
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in LAUNCHER_NAMES
        and not name.startswith(LAUNCHER_PREFIXES)
    }
    path = environ.get('PYTHONPATH')
    environ['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), path]))
    return environ


def srun_task(
    local_rank: int, tasks: int, step_gpus: int, visible_devices: str
) -> dict[str, str]:
    return {
        **clean_environ(),
        'SLURM_JOB_ID': '1',
        'SLURM_STEP_ID': '0',
        'SLURM_PROCID': str(local_rank),
        'SLURM_LOCALID': str(local_rank),
        'SLURM_NODEID': '0',
        'SLURM_NTASKS': str(tasks),
        'SLURM_TASKS_PER_NODE': str(tasks),
        'SLURM_JOB_NODELIST': 'localhost',
        'SLURM_STEP_GPUS': ','.join(str(i) for i in range(step_gpus)),
        'CUDA_VISIBLE_DEVICES': visible_devices,
    }


def torchrun_worker(local_rank: int, workers: int) -> dict[str, str]:
    return {
        **clean_environ(),
        'RANK': str(local_rank),
        'LOCAL_RANK': str(local_rank),
        'WORLD_SIZE': str(workers),
        'LOCAL_WORLD_SIZE': str(workers),
        'GROUP_RANK': '0',
        'MASTER_ADDR': '127.0.0.1',
        'MASTER_PORT': '29500',
        'TORCHELASTIC_RUN_ID': 'gpu-per-task-check',
    }


def visible_ids() -> list[str]:
    """The GPUs this process sees, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    given = os.environ.get('CUDA_VISIBLE_DEVICES')
    if given is not None:
        ids = [item.strip() for item in given.split(',') if item.strip()]
    else:
        ids = [str(i) for i in range(torch.cuda.device_count())]
    return ids[: torch.cuda.device_count()]


def run_task(environ: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, '--task'],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {'error': (done.stderr or done.stdout).strip()[-2000:]}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--tasks', type=int, default=4)
    parser.add_argument('--task', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        print(json.dumps(task()))
        return 0
    ids = visible_ids()
    cuda = bool(ids)
    print(
        f'visible GPUs: {ids or "none"} (CUDA_VISIBLE_DEVICES='
        f'{os.environ.get("CUDA_VISIBLE_DEVICES")!r})'
    )
    scenarios: list[tuple[str, dict[str, str], tuple[str, str]]] = []
    for rank in range(args.tasks):
        own = ids[rank % len(ids)] if cuda else ''
        environ = srun_task(rank, args.tasks, args.tasks, own)
        expected = ('nccl', 'cuda:0') if cuda else ('gloo', 'cpu')
        scenarios.append((f'gpus-per-task=1 rank {rank}', environ, expected))
    for rank in range(len(ids)):
        expected = ('nccl', f'cuda:{rank}')
        environ = torchrun_worker(rank, len(ids))
        scenarios.append((f'all visible    rank {rank}', environ, expected))
    for rank in range(2):
        shared = ids[0] if cuda else ''
        environ = srun_task(rank, 2, 1, shared)
        expected = ('gloo', 'cuda:0' if cuda else 'cpu')
        scenarios.append((f'shared gpu     rank {rank}', environ, expected))
    failures = 0
    for name, environ, (backend, device) in scenarios:
        report = run_task(environ)
        got = (report.get('backend'), report.get('local_device'))
        bound = report.get('device')
        ok = (
            got == (backend, device)
            and report.get('ran') is True
            and (backend != 'nccl' or bound == device)
        )
        failures += not ok
        print(
            f'{"ok  " if ok else "FAIL"} {name}: backend={got[0]} '
            f'device={got[1]} (expected {backend} {device}); '
            f'CUDA_VISIBLE_DEVICES={environ.get("CUDA_VISIBLE_DEVICES")!r}'
            + ('' if ok else f'; report: {report}')
        )
    print('all tasks as expected' if not failures else f'{failures} failed')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
