"""Gradient accumulation: the Trainer against a hand-written loop.

    python benchmarks/accumulation_overhead.py [--rounds 15] [--steps 4]

Part one, one process on the CPU (one torch thread): the MLP and data of
``trainer_overhead.py`` (64 -> 256 -> 256 -> 10, Adam, micro-batches of
64) trained with ``Trainer(accumulation_steps=k)`` and with the loop a user
writes for it (loss divided by k, ``zero_grad`` at a window's start, a
step at its end, a short last window weighted by its samples), plus that
hand loop a second time as the control.  The sides alternate round after
round, with a rotating order, as in ``trainer_overhead.py``; the figure is
the ratio of median step (micro-batch) times, wall clock and CPU time of
the training thread.  Both must give the same epoch losses to 5 decimals.
The Trainer runs with the standard trackers (output to a file), or none
with ``--trackers none``.

Part two, 2 gloo ranks (torch.multiprocessing, torchrun's variables): one
epoch with ``accumulation_steps=1`` and one with ``k``, DDP's bucket
all-reduces counted by a comm hook that runs the real all-reduce, divided
by the optimizer steps taken.

Results: ``benchmarks/results/accumulation_overhead.json``.
"""

import argparse
import contextlib
import copy
import json
import os
import pathlib
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

import drytorch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from trainer_overhead import (
    BATCH,
    LR,
    SEED,
    THREADS,
    _cpu_name,
    make_data,
    make_network,
)

TARGET = 1.02
RESULTS = (
    pathlib.Path(__file__).parent / 'results' / 'accumulation_overhead.json'
)


class HandAccumulation:
    """The accumulation loop a user would write."""

    def __init__(
        self, network: nn.Module, loader: drytorch.DataLoader, steps: int
    ) -> None:
        self.network = network
        self.loader = loader
        self.steps = steps
        self.optimizer = torch.optim.Adam(network.parameters(), lr=LR)
        self.epoch = 0
        self.inputs, self.labels = loader.dataset.tensors

    def train(self, n_epochs: int) -> list[float]:
        losses = []
        self.network.train()
        k = self.steps
        for _ in range(n_epochs):
            self.epoch += 1
            order = self.loader.permutation(self.epoch)
            batches = list(torch.split(order, BATCH))
            total, count = 0.0, 0
            for start in range(0, len(batches), k):
                window = batches[start : start + k]
                samples = sum(len(b) for b in window)
                self.optimizer.zero_grad(set_to_none=True)
                for indices in window:
                    outputs = self.network(self.inputs[indices])
                    loss = nn.functional.cross_entropy(
                        outputs, self.labels[indices]
                    )
                    (loss * (len(indices) / samples)).backward()
                    total += loss.item() * len(indices)
                    count += len(indices)
                self.optimizer.step()
            losses.append(total / count)
        return losses


def single_process(
    rounds: int, epochs: int, n_batches: int, steps: int, trackers: str
) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    drytorch.init_trackers(trackers)
    dataset = make_data(n_batches)
    network = make_network()
    hand_network = copy.deepcopy(network)
    control_network = copy.deepcopy(network)
    per_round = epochs * n_batches
    times: dict[str, list[tuple[float, float]]] = {
        'ours': [],
        'hand': [],
        'control': [],
    }
    losses: dict[str, list[float]] = {'ours': [], 'hand': [], 'control': []}
    with tempfile.TemporaryDirectory(prefix='drytorch-bench-') as tmp:
        experiment = drytorch.Experiment(None, name='Accumulate', par_dir=tmp)
        with (
            (pathlib.Path(tmp) / 'trackers.log').open('w') as sink,
            contextlib.redirect_stderr(sink),
            experiment.create_run(),
        ):
            model = drytorch.Model(network, name='mlp', device='cpu')
            loader = drytorch.DataLoader(dataset, BATCH, seed=SEED)
            trainer = drytorch.Trainer(
                model,
                loader=loader,
                loss=drytorch.Loss('CrossEntropy'),
                learning_schema=drytorch.LearningSchema.adam(base_lr=LR),
                accumulation_steps=steps,
            )
            trainer.post_epoch_hooks.register(
                lambda t: losses['ours'].append(
                    t.computed_metrics['CrossEntropy']
                )
            )
            hand = HandAccumulation(hand_network, loader, steps)
            control = HandAccumulation(control_network, loader, steps)
            sides = ['ours', 'hand', 'control']
            for index in range(rounds + 1):  # round 0 warms up
                order = sides[index % 3 :] + sides[: index % 3]
                for side in order:
                    wall, cpu = time.perf_counter(), time.thread_time()
                    if side == 'ours':
                        trainer.train(epochs)
                    elif side == 'hand':
                        losses['hand'].extend(hand.train(epochs))
                    else:
                        losses['control'].extend(control.train(epochs))
                    wall = time.perf_counter() - wall
                    cpu = time.thread_time() - cpu
                    if index:
                        times[side].append((wall / per_round, cpu / per_round))

    def median_ms(side: str, clock: int) -> float:
        return statistics.median(t[clock] for t in times[side]) * 1e3

    wall = {side: median_ms(side, 0) for side in times}
    cpu = {side: median_ms(side, 1) for side in times}
    pairs = list(zip(losses['ours'], losses['hand'], strict=True))
    return {
        'ratio': wall['ours'] / wall['hand'],
        'ratio_cpu_time': cpu['ours'] / cpu['hand'],
        'control_ratio': wall['control'] / wall['hand'],
        'control_ratio_cpu_time': cpu['control'] / cpu['hand'],
        'median_round_ratio': statistics.median(
            o[0] / h[0]
            for o, h in zip(times['ours'], times['hand'], strict=True)
        ),
        'target': TARGET,
        'median_step_ms': wall,
        'median_step_cpu_ms': cpu,
        'step_ms_per_round': {
            side: [round(t[0] * 1e3, 4) for t in times[side]] for side in times
        },
        'max_loss_difference': max(abs(a - b) for a, b in pairs),
        'losses_equal_to_5_decimals': all(
            round(a, 5) == round(b, 5) for a, b in pairs
        ),
        'optimizer_steps': trainer.optimizer_steps,
        'setup': {
            'rounds': rounds,
            'epochs_per_round': epochs,
            'micro_batches_per_epoch': n_batches,
            'accumulation_steps': steps,
            'micro_batch': BATCH,
            'trackers': trackers,
            'torch_threads': THREADS,
            'torch': torch.__version__,
            'cpu': _cpu_name(),
            'cpu_count': os.cpu_count(),
            'load_average': list(os.getloadavg()),
        },
    }


# ------------------------------------------------------------ DDP counts
def _counting(
    state: dict[str, int], bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    state['all_reduces'] += 1
    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


def _count(steps: int, n_batches: int) -> dict[str, int]:
    model = drytorch.Model(make_network(), name=f'k{steps}', device='cpu')
    trainer = drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(make_data(n_batches), BATCH, seed=SEED),
        loss=drytorch.Loss('CrossEntropy'),
        learning_schema=drytorch.LearningSchema.adam(base_lr=LR),
        accumulation_steps=steps,
    )
    counts = {'all_reduces': 0}
    ddp = model.training_module()
    ddp.register_comm_hook(counts, _counting)  # type: ignore[operator]
    trainer.train(1)
    return {
        'micro_batches': len(trainer.loader.plan(training=True, epoch=1)),
        'optimizer_steps': trainer.optimizer_steps,
        'bucket_all_reduces': counts['all_reduces'],
    }


def rank_main(
    rank: int, world: int, port: int, steps: int, n_batches: int, out: str
) -> None:
    os.environ.update(
        {
            'RANK': str(rank),
            'LOCAL_RANK': str(rank),
            'WORLD_SIZE': str(world),
            'LOCAL_WORLD_SIZE': str(world),
            'GROUP_RANK': '0',
            'MASTER_ADDR': '127.0.0.1',
            'MASTER_PORT': str(port),
        }
    )
    from drytorch.distributed import init_distributed, teardown_distributed

    torch.set_num_threads(1)
    init_distributed(backend='gloo')
    with tempfile.TemporaryDirectory() as tmp:
        experiment = drytorch.Experiment(None, name='Count', par_dir=tmp)
        with experiment.create_run(record=False):
            result = {
                '1': _count(1, n_batches),
                str(steps): _count(steps, n_batches),
            }
    if rank == 0:
        pathlib.Path(out).write_text(json.dumps(result))
    teardown_distributed()


def ddp_counts(steps: int, n_batches: int) -> dict[str, Any]:
    os.environ['DRYTORCH_INIT_MODE'] = 'none'
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        raw = pathlib.Path(tmp) / 'rank0.json'
        mp.spawn(
            rank_main,
            args=(2, port, steps, n_batches, str(raw)),
            nprocs=2,
            join=True,
        )
        counted = json.loads(raw.read_text())
    for entry in counted.values():
        entry['all_reduces_per_optimizer_step'] = (
            entry['bucket_all_reduces'] / entry['optimizer_steps']
        )
        entry['all_reduces_per_micro_batch'] = (
            entry['bucket_all_reduces'] / entry['micro_batches']
        )
    return {'world_size': 2, 'backend': 'gloo', 'by_accumulation': counted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--batches', type=int, default=202)
    parser.add_argument('--steps', type=int, default=4)
    parser.add_argument('--trackers', default='standard')
    parser.add_argument('--out', type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    result = {
        'single_process': single_process(
            args.rounds, args.epochs, args.batches, args.steps, args.trackers
        ),
        'ddp': ddp_counts(args.steps, 50),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    single = result['single_process']
    print(f'k={args.steps}, micro-batches of {BATCH}, {args.rounds} rounds')
    for side in ('hand', 'ours', 'control'):
        print(
            f'  {side:<8} {single["median_step_ms"][side]:.4f} ms wall  '
            f'{single["median_step_cpu_ms"][side]:.4f} ms CPU'
        )
    print(
        f'  ratio {single["ratio"]:.3f} (CPU {single["ratio_cpu_time"]:.3f},'
        f' round median {single["median_round_ratio"]:.3f}); control '
        f'{single["control_ratio"]:.3f}; target {TARGET}'
    )
    print(
        f'  losses equal to 5 decimals: {single["losses_equal_to_5_decimals"]}'
    )
    for k, entry in result['ddp']['by_accumulation'].items():
        print(
            f'  DDP k={k}: {entry["bucket_all_reduces"]} bucket all-reduces, '
            f'{entry["optimizer_steps"]} optimizer steps, '
            f'{entry["micro_batches"]} micro-batches: '
            f'{entry["all_reduces_per_optimizer_step"]:.2f} per step'
        )
    print(f'results: {args.out}')
    return 0 if single['losses_equal_to_5_decimals'] else 1


if __name__ == '__main__':
    sys.exit(main())
