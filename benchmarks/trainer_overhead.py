"""Overhead of drytorch's Trainer over a hand-written PyTorch loop.

Both sides do the same work on CPU: an MLP (64 -> 256 -> 256 -> 10) trained
with Adam on batches of 64 samples of 64 features, from the same initial
weights, over the same batches in the same order (the hand loop asks the
drytorch loader for ``permutation(epoch)``).  The hand loop also keeps the
epoch's mean loss, as a typical loop does.  drytorch runs with the standard
trackers on (log, progress bars, YAML metadata); their output goes to a
temporary file, not the terminal.

The two sides alternate, round after round, in one process, so that a slow
patch of the machine hits both.  The figure reported is the ratio of the
median step times (drytorch / hand) by the wall clock.  Beside it: the same
ratio in CPU time of the training thread (torch runs on one thread here, so
this leaves out the time other processes took the core), and the median of
each round's own ratio; on a busy machine these two are the steadier
figures.  Both sides must also produce the same epoch losses to 5
decimals, which shows that they did equal work.

    python benchmarks/trainer_overhead.py            # 15 rounds of 2 epochs
    python benchmarks/trainer_overhead.py --rounds 25 --epochs 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

import drytorch

FEATURES = 64
HIDDEN = 256
CLASSES = 10
BATCH = 64
LR = 1e-3
SEED = 0
THREADS = 1
TARGET = 1.05
RESULTS = pathlib.Path(__file__).parent / 'results' / 'trainer_overhead.json'


def make_data(n_batches: int) -> TensorDataset:
    """Inputs and class labels from a fixed random teacher."""
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.randn(n_batches * BATCH, FEATURES, generator=generator)
    teacher = torch.randn(FEATURES, CLASSES, generator=generator)
    labels = (inputs @ teacher).argmax(dim=1)
    return TensorDataset(inputs, labels)


def make_network() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )


class HandLoop:
    """The loop a user would write: forward, loss, backward, step."""

    def __init__(
        self, network: nn.Module, loader: drytorch.DataLoader
    ) -> None:
        self.network = network
        self.loader = loader
        self.optimizer = torch.optim.Adam(network.parameters(), lr=LR)
        self.epoch = 0
        inputs, labels = loader.dataset.tensors
        self.inputs = inputs
        self.labels = labels

    def train(self, n_epochs: int) -> list[float]:
        losses = []
        self.network.train()
        for _ in range(n_epochs):
            self.epoch += 1
            order = self.loader.permutation(self.epoch)
            total, count = 0.0, 0
            for indices in torch.split(order, BATCH):
                inputs = self.inputs[indices]
                labels = self.labels[indices]
                outputs = self.network(inputs)
                loss = nn.functional.cross_entropy(outputs, labels)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                total += loss.item() * len(indices)
                count += len(indices)
            losses.append(total / count)
        return losses


def run(rounds: int, epochs: int, n_batches: int) -> dict:
    torch.set_num_threads(THREADS)
    drytorch.init_trackers('standard')
    dataset = make_data(n_batches)
    network = make_network()
    hand_network = copy.deepcopy(network)
    control_network = copy.deepcopy(network)
    steps_per_round = epochs * n_batches

    # per round and side: (wall-clock, CPU time of this thread) per step
    times: dict[str, list[tuple[float, float]]] = {
        'ours': [],
        'hand': [],
        'control': [],
    }
    ours_losses: list[float] = []
    hand_losses: list[float] = []
    control_losses: list[float] = []

    with tempfile.TemporaryDirectory(prefix='drytorch-bench-') as tmp:
        experiment = drytorch.Experiment(
            None, name='TrainerOverhead', par_dir=tmp
        )
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
            )
            trainer.post_epoch_hooks.register(
                lambda t: ours_losses.append(
                    t.computed_metrics['CrossEntropy']
                )
            )
            hand = HandLoop(hand_network, loader)
            # a second hand loop: hand against hand shows the noise
            control = HandLoop(control_network, loader)
            sides = ['ours', 'hand', 'control']
            for index in range(rounds + 1):  # round 0 warms all up
                # rotate which side goes first, so that none always
                # follows the same other's cache and allocator state
                order = sides[index % 3 :] + sides[: index % 3]
                for side in order:
                    wall, cpu = time.perf_counter(), time.thread_time()
                    if side == 'ours':
                        trainer.train(epochs)
                    elif side == 'hand':
                        hand_losses.extend(hand.train(epochs))
                    else:
                        control_losses.extend(control.train(epochs))
                    wall = time.perf_counter() - wall
                    cpu = time.thread_time() - cpu
                    if index:
                        times[side].append(
                            (wall / steps_per_round, cpu / steps_per_round)
                        )

    def median_ms(side: str, clock: int) -> float:
        return statistics.median(t[clock] for t in times[side]) * 1e3

    names = {'drytorch': 'ours', 'hand': 'hand', 'control': 'control'}
    wall_ms = {name: median_ms(side, 0) for name, side in names.items()}
    cpu_ms = {name: median_ms(side, 1) for name, side in names.items()}
    diffs = [abs(a - b) for a, b in zip(ours_losses, hand_losses, strict=True)]
    return {
        'ratio': wall_ms['drytorch'] / wall_ms['hand'],
        'ratio_cpu_time': cpu_ms['drytorch'] / cpu_ms['hand'],
        'control_ratio': wall_ms['control'] / wall_ms['hand'],
        # each round's own ratio: the two sides of a round ran seconds
        # apart, so a slow patch of a shared machine cancels out
        'median_round_ratio': statistics.median(
            ours[0] / hand[0]
            for ours, hand in zip(times['ours'], times['hand'], strict=True)
        ),
        'target': TARGET,
        'median_step_ms': wall_ms,
        'median_step_cpu_ms': cpu_ms,
        'step_ms_per_round': {
            name: [t[0] * 1e3 for t in times[side]]
            for name, side in names.items()
        },
        'epoch_losses': {'drytorch': ours_losses, 'hand': hand_losses},
        'max_loss_difference': max(diffs),
        'losses_equal_to_5_decimals': all(
            round(a, 5) == round(b, 5)
            for a, b in zip(ours_losses, hand_losses, strict=True)
        )
        and control_losses == hand_losses,
        'setup': {
            'rounds': rounds,
            'epochs_per_round': epochs,
            'batches_per_epoch': n_batches,
            'batch_size': BATCH,
            'features': FEATURES,
            'hidden': [HIDDEN, HIDDEN],
            'classes': CLASSES,
            'optimizer': f'Adam(lr={LR})',
            'torch_threads': THREADS,
            'trackers': 'standard (output to a file)',
            'torch': torch.__version__,
            'python': platform.python_version(),
            'machine': platform.machine(),
            'cpu': _cpu_name(),
            'cpu_count': os.cpu_count(),
            'load_average': list(os.getloadavg()),
        },
    }


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as info:
            for line in info:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def report(result: dict) -> None:
    wall, cpu = result['median_step_ms'], result['median_step_cpu_ms']
    print(f'{"median step (ms)":<20}{"wall-clock":>12}{"CPU time":>12}')
    print(
        f'{"hand-written loop":<20}{wall["hand"]:>12.4f}{cpu["hand"]:>12.4f}'
    )
    print(
        f'{"drytorch Trainer":<20}{wall["drytorch"]:>12.4f}'
        f'{cpu["drytorch"]:>12.4f}'
    )
    print(
        f'{"ratio":<20}{result["ratio"]:>12.3f}'
        f'{result["ratio_cpu_time"]:>12.3f}'
    )
    print(f'{"median round ratio":<20}{result["median_round_ratio"]:>12.3f}')
    print(
        f'{"control (hand/hand)":<20}{result["control_ratio"]:>12.3f}'
        f'{cpu["control"] / cpu["hand"]:>12.3f}'
    )
    print()
    print('epoch    drytorch loss    hand loss')
    losses = result['epoch_losses']
    for epoch, (ours, hand) in enumerate(
        zip(losses['drytorch'], losses['hand'], strict=True), start=1
    ):
        print(f'{epoch:>5}    {ours:>13.7f}    {hand:>9.7f}')
    same = result['losses_equal_to_5_decimals']
    print(
        f'\nlosses equal to 5 decimals: {same} '
        f'(largest difference {result["max_loss_difference"]:.2e})'
    )
    verdict = 'within' if result['ratio'] <= result['target'] else 'ABOVE'
    print(f'ratio {result["ratio"]:.3f}: {verdict} the target {TARGET}')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--batches', type=int, default=200)
    parser.add_argument('--out', type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = run(args.rounds, args.epochs, args.batches)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    report(result)
    print(f'\nresults: {args.out}')
    if not result['losses_equal_to_5_decimals']:
        print('FAILED: the two loops did not compute the same losses')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
