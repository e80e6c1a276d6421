"""One rank of the multi-process tests, run as a script.

``python rank_worker.py MODE`` with the launcher's variables set prints one
JSON line and exits:

- ``init``: start the group, check the second call is a no-op, all-reduce
  the ranks, tear down twice; exit 0.
- ``loop``: start the group and all-reduce forever; the rank named by
  ``VICTIM`` reports the time and kills itself (SIGKILL) at step 20; a
  rank whose collective fails reports the error and the time, tears the
  group down and exits 4.

A ``DistributedSetupError`` from ``init_distributed`` is printed, exit 3.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from drytorch.distributed import (
    DistributedSetupError,
    detect_environment,
    init_distributed,
    teardown_distributed,
)


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def run_init() -> int:
    env = init_distributed()
    again = init_distributed()
    total = torch.tensor([float(env.rank)])
    dist.all_reduce(total)
    report(
        name=env.name,
        detected=detect_environment().name,
        rank=env.rank,
        world_size=env.world_size,
        local_rank=env.local_rank,
        group_rank=dist.get_rank(),
        group_size=dist.get_world_size(),
        backend=dist.get_backend(),
        same=again is env,
        total=total.item(),
        master=f'{env.master_addr}:{env.master_port}',
    )
    teardown_distributed()
    teardown_distributed()
    return 0 if not dist.is_initialized() else 1


def run_loop() -> int:
    env = init_distributed()
    victim = int(os.environ['VICTIM'])
    values = torch.ones(256)
    step = 0
    while True:
        if step == 20 and env.rank == victim:
            report(rank=env.rank, step=step, killed_at=time.time())
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            dist.all_reduce(values)
        except RuntimeError as exc:
            report(
                rank=env.rank, step=step, error=str(exc)[:500], at=time.time()
            )
            teardown_distributed()
            return 4
        values.fill_(1.0)
        step += 1


def main(mode: str) -> int:
    start = time.monotonic()
    try:
        return run_init() if mode == 'init' else run_loop()
    except DistributedSetupError as exc:
        report(
            setup_error=str(exc), seconds=round(time.monotonic() - start, 2)
        )
        return 3


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
