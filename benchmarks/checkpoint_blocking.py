"""How long a checkpoint stops training: single file, parts, background.

    python benchmarks/checkpoint_blocking.py [--nproc 2] [--device cpu]
        [--megabytes 200] [--saves 3] [--parallel ddp|fsdp]

Starts ``--nproc`` ranks (torch.multiprocessing with torchrun's variables;
gloo on the CPU, NCCL with ``--device cuda``).  Every rank builds the same
MLP of about ``--megabytes`` of float32 weights (Adam's two moments make
the checkpoint three times that), trains one step so that the optimizer
has its state, and then, for each way of writing, saves ``--saves`` times
through ``Trainer.save_checkpoint()`` after a training step each:

- ``file``: today's single file: the state gathered on rank zero, which
  writes it alone, while every rank waits;
- ``parts``: ``LocalCheckpoint(sharded=True)``: every rank writes its part
  through torch.distributed.checkpoint, rank zero renames the folder;
- ``async``: ``LocalCheckpoint(async_checkpoint=True)``: the training
  thread waits only while each rank copies its part to host memory; the
  write runs on a thread.

The figure per way is the median time the training thread is blocked in
``save_checkpoint()`` (rank zero's; every rank is blocked as long, since
the save ends in an agreement), and for ``async`` also the time until the
background write has finished (``LocalCheckpoint.wait()`` after the
save).  Target: ``async`` blocks at most a tenth of ``file``.

Results go to ``--out`` (``benchmarks/results/checkpoint_blocking.json``)
and a summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / 'results' / 'checkpoint_blocking.json'
WAYS = ('file', 'parts', 'async')
WIDTH = 2048  # a 2048 x 2048 layer holds 16 MiB of float32


class Block(nn.Module):
    """One layer of the model: FSDP's unit."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(WIDTH, WIDTH)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(inputs))


def network(megabytes: float) -> nn.Module:
    per_layer = (WIDTH * WIDTH + WIDTH) * 4 / 2**20
    layers = max(1, round(megabytes / per_layer))
    torch.manual_seed(0)
    return nn.Sequential(
        *(Block() for _ in range(layers)), nn.Linear(WIDTH, 4)
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return int(probe.getsockname()[1])


def _rank(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port),
        DRYTORCH_INIT_MODE='none',
    )
    if world == 1:
        os.environ['DRYTORCH_FORCE_PROCESS_GROUP'] = '1'
    import drytorch
    from drytorch.distributed import ranks, teardown_distributed
    from drytorch.lib import checkpoints, objectives

    root = pathlib.Path(args.root)
    experiment = drytorch.Experiment(None, name='Bench', par_dir=root)
    results: dict[str, Any] = {}
    try:
        with experiment.create_run(run_id='bench'):
            # None: each rank's own GPU (default_device), or the CPU
            device = None if args.device == 'cuda' else args.device
            for way in WAYS:
                store = checkpoints.LocalCheckpoint(
                    root / way,
                    run_folders=False,
                    sharded=way != 'file',
                    async_checkpoint=way == 'async',
                    keep_last=1,
                )
                extra: dict[str, Any] = {}
                if args.parallel == 'fsdp':
                    extra['shard'] = (Block,)
                model = drytorch.Model(
                    network(args.megabytes),
                    name=way,
                    device=device,
                    checkpoint=store,
                    parallel=args.parallel,
                    **extra,
                )
                data = TensorDataset(
                    torch.randn(8 * world, WIDTH),
                    torch.randint(0, 4, (8 * world,)),
                )
                trainer = drytorch.Trainer(
                    model,
                    loader=drytorch.DataLoader(data, 8, seed=0),
                    loss=drytorch.Loss(
                        objectives.cross_entropy,
                        'CE',
                    ),
                    learning_schema=drytorch.LearningSchema.adam(1e-4),
                    checkpoint_timeout=1800,
                )
                blocked, done = [], []
                for index in range(args.saves + 1):
                    trainer.train(1)  # ends in a blocking save of its own
                    # a new state: the save is not skipped as one on disk
                    trainer.update_learning_rate(1e-4 * (index + 2))
                    start = time.perf_counter()
                    trainer.save_checkpoint()
                    blocked_s = time.perf_counter() - start
                    store.wait()
                    done_s = time.perf_counter() - start
                    if index:  # the first save makes groups and folders
                        blocked.append(blocked_s)
                        done.append(done_s)
                parameters = sum(p.numel() for p in model.module.parameters())
                local = _local_bytes(model.module)
                results[way] = {
                    'blocked_s': blocked,
                    'done_s': done,
                    'blocked_median_s': statistics.median(blocked),
                    'done_median_s': statistics.median(done),
                    'local_state_mb': local / 2**20,
                    'parameters': parameters,
                }
                del trainer, model
                shutil.rmtree(root / way, ignore_errors=True)
        if ranks.is_rank_zero():
            pathlib.Path(args.result).write_text(json.dumps(results))
    finally:
        teardown_distributed()


def _local_bytes(module: nn.Module) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for p in module.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        total += local.numel() * local.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--nproc', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--megabytes', type=float, default=200.0)
    parser.add_argument('--saves', type=int, default=3)
    parser.add_argument('--parallel', choices=('ddp', 'fsdp'), default='ddp')
    parser.add_argument('--dir', default='', help='where checkpoints go')
    parser.add_argument('--out', default=str(DEFAULT_OUT))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or None) as tmp:
        args.root = tmp
        args.result = str(pathlib.Path(tmp) / 'result.json')
        port = _free_port()
        mp.start_processes(
            _rank,
            args=(args.nproc, port, args),
            nprocs=args.nproc,
            start_method='spawn',
        )
        results = json.loads(pathlib.Path(args.result).read_text())
    file_s = results['file']['blocked_median_s']
    async_s = results['async']['blocked_median_s']
    report = {
        'config': {
            'nproc': args.nproc,
            'device': args.device,
            'parallel': args.parallel,
            'megabytes': args.megabytes,
            'saves': args.saves,
            'host': platform.node(),
            'cpus': os.cpu_count(),
            'torch': torch.__version__,
        },
        'results': results,
        'async_over_file': async_s / file_s,
        'target_async_over_file': 0.1,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + '\n')
    print(
        f'{args.nproc} ranks ({args.device}, {args.parallel}), '
        f'{results["file"]["parameters"] * 4 / 2**20:.0f} MB of weights'
    )
    for way in WAYS:
        r = results[way]
        print(
            f'  {way:6s} blocked {r["blocked_median_s"]:.3f} s, '
            f'on disk after {r["done_median_s"]:.3f} s'
        )
    print(f'async / file blocked: {report["async_over_file"]:.3f} (<= 0.1)')
    sys.stdout.flush()


if __name__ == '__main__':
    main()
