"""What trackers cost the training thread now that they run on a worker.

Part 1 (slow backend): one run publishes ``--events`` MetricEvents (and an
EndEpochEvent after each) to a tracker whose ``notify`` sleeps 5 ms per
metric event.  Reported: microseconds per event on the training thread, for
no tracker, for the sleeping tracker on the background worker (the
default), and for the same tracker made ``immediate`` (what every tracker
cost before the worker); and the drain time, how long the run's stop waited
for the worker to deliver what was queued.

Part 2 (real training): drytorch's Trainer on an MLP (as in
``trainer_overhead.py``), with no tracker and with CSV + SQLite +
TensorBoard + W&B offline + MLflow (a local SQLite store) subscribed.  The
two cases alternate, round after round; the figure is the ratio of the
median step times (wall clock, and CPU time of the training thread), once
the trackers have started (their start, a second or more for W&B and
MLflow, is reported apart).  The target is set for epochs of 2,000 steps
(about a second here); a second case with 200-step epochs (0.1 s) shows
what per-epoch tracker work costs when epochs are that short: the worker's
Python competes with the training thread for the interpreter.

    python benchmarks/tracker_worker.py
    python benchmarks/tracker_worker.py --events 2000 --rounds 9
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset
from typing_extensions import override

import drytorch
from drytorch import Experiment
from drytorch.core import log_events
from drytorch.core.tracking import Tracker

RESULTS = pathlib.Path(__file__).parent / 'results' / 'tracker_worker.json'
TARGET_US_PER_EVENT = 50.0
TARGET_STEP_RATIO = 1.01


class _Sleepy(Tracker):
    """A backend that takes 5 ms to store each metric event."""

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        time.sleep(0.005)
        return super().notify(event)


def slow_backend(events: int) -> list[dict[str, Any]]:
    """Training-thread cost per event and drain time, per case."""
    rows = []
    for case in ('none', 'sleep-5ms-worker', 'sleep-5ms-immediate'):
        with tempfile.TemporaryDirectory() as folder:
            exp: Experiment[None] = Experiment(None, name='w', par_dir=folder)
            if case != 'none':
                tracker = _Sleepy()
                if case.endswith('immediate'):
                    tracker.immediate = True  # type: ignore[misc]
                exp.trackers.subscribe(tracker)
            run = exp.create_run('r').start()
            began = time.perf_counter()
            for epoch in range(1, events + 1):
                log_events.MetricEvent(
                    model_name='m',
                    source_name='train',
                    epoch=epoch,
                    metrics={'loss': 1.0 / epoch, 'accuracy': 0.5},
                )
                log_events.EndEpochEvent(
                    model_name='m', source_name='train', epoch=epoch
                )
            published = time.perf_counter() - began
            run.stop()
            stopped = time.perf_counter() - began - published
            report = exp.trackers.last_report
        rows.append(
            {
                'case': case,
                'metric_events': events,
                'us_per_event': 1e6 * published / events,
                'stop_s': stopped,
                'drain_s': report.drain_s,
                'training_waited_s': report.waited_s,
            }
        )
    return rows


def _all_trackers(folder: pathlib.Path) -> list[Tracker]:
    os.environ.setdefault('WANDB_MODE', 'offline')
    import wandb

    from drytorch.trackers.csv import CSVDumper
    from drytorch.trackers.sqlalchemy import SQLConnection
    from drytorch.trackers.tensorboard import TensorBoard
    from drytorch.trackers.wandb import Wandb

    trackers: list[Tracker] = [
        CSVDumper(par_dir=folder),
        SQLConnection(par_dir=folder),
        TensorBoard(par_dir=folder),
        Wandb(
            par_dir=folder,
            settings=wandb.Settings(
                console='off', x_disable_stats=True, silent=True
            ),
        ),
    ]
    with contextlib.suppress(ImportError):
        from drytorch.trackers import mlflow as mlflow_tracker

        if mlflow_tracker.is_available():
            folder.mkdir(parents=True, exist_ok=True)
            uri = f'sqlite:///{folder.resolve() / "mlflow.db"}'
            trackers.append(mlflow_tracker.MLflow(tracking_uri=uri))
    return trackers


def _data(batches: int, batch: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batches * batch, 64, generator=generator)
    labels = (inputs @ torch.randn(64, 10, generator=generator)).argmax(1)
    return TensorDataset(inputs, labels)


def real_training(
    rounds: int, epochs: int, batches: int, batch: int
) -> dict[str, Any]:
    """Per-step time with no tracker and with all of them.

    Each run first waits for its trackers to have started (a W&B or MLflow
    run takes a second or more to open, on the worker, once per run): that
    time is reported apart, as ``start_s``, so that the step figure is the
    cost of training with trackers, not of opening them.  The worker's own
    time per tracker is reported too: it is what, per epoch, competes with
    the training thread for the interpreter.
    """
    dataset = _data(batches, batch)
    cases: dict[str, Callable[[pathlib.Path], list[Tracker]]] = {
        'none': lambda folder: [],
        'csv+sqlite+tensorboard+wandb+mlflow': _all_trackers,
    }
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in cases}
    subscribed: dict[str, list[str]] = {}
    drains: list[float] = []
    starts: list[float] = []
    busy: dict[str, list[float]] = {}
    for index in range(rounds + 1):  # round 0 warms up
        order = list(cases) if index % 2 else list(cases)[::-1]
        for name in order:
            with tempfile.TemporaryDirectory() as tmp:
                folder = pathlib.Path(tmp)
                exp: Experiment[None] = Experiment(
                    None, name='cost', par_dir=folder
                )
                trackers = cases[name](folder / 'out')
                exp.trackers.subscribe(*trackers)
                subscribed[name] = [t.__class__.__name__ for t in trackers]
                with exp.create_run(f'r{index}'):
                    torch.manual_seed(0)
                    network = nn.Sequential(
                        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)
                    )
                    model = drytorch.Model(network, name='mlp', device='cpu')
                    trainer = drytorch.Trainer(
                        model,
                        loader=drytorch.DataLoader(dataset, batch, seed=0),
                        loss=drytorch.Loss('CrossEntropy'),
                        learning_schema=drytorch.LearningSchema.adam(
                            base_lr=1e-3
                        ),
                    )
                    began = time.perf_counter()
                    exp.trackers.flush()
                    started = time.perf_counter() - began
                    wall, cpu = time.perf_counter(), time.thread_time()
                    trainer.train(epochs)
                    wall = time.perf_counter() - wall
                    cpu = time.thread_time() - cpu
                report = exp.trackers.last_report
                if name != 'none' and index:
                    drains.append(report.drain_s)
                    starts.append(started)
                    for tracker, seconds in report.busy_s.items():
                        busy.setdefault(tracker, []).append(seconds)
                if index:
                    steps = epochs * batches
                    times[name].append((wall / steps, cpu / steps))
    none, full = times['none'], times[list(cases)[1]]
    wall_ratio = statistics.median(t[0] for t in full) / statistics.median(
        t[0] for t in none
    )
    cpu_ratio = statistics.median(t[1] for t in full) / statistics.median(
        t[1] for t in none
    )
    return {
        'rounds': rounds,
        'epochs': epochs,
        'batches_per_epoch': batches,
        'batch': batch,
        'trackers': subscribed,
        'step_us': {
            name: 1e6 * statistics.median(t[0] for t in rows)
            for name, rows in times.items()
        },
        'step_ratio_wall': wall_ratio,
        'step_ratio_thread_cpu': cpu_ratio,
        'start_s_median': statistics.median(starts) if starts else None,
        'drain_s_median': statistics.median(drains) if drains else None,
        'worker_busy_s_per_run': {
            tracker: statistics.median(seconds)
            for tracker, seconds in busy.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=1000)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--batches', type=int, default=2000)
    parser.add_argument(
        '--short-batches',
        type=int,
        default=200,
        help='batches per epoch of the short-epoch case (0: skip it)',
    )
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--json', type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    drytorch.init_trackers('none')
    slow = slow_backend(args.events)
    for row in slow:
        print(
            f'{row["case"]:22} {row["us_per_event"]:9.2f} us/event on the '
            f'training thread; stop {row["stop_s"]:.2f} s '
            f'(drain {row["drain_s"]:.2f} s)',
            flush=True,
        )
    training = real_training(
        args.rounds, args.epochs, args.batches, args.batch
    )
    _print_training(training)
    short = None
    if args.short_batches:
        short = real_training(
            args.rounds, args.epochs + 1, args.short_batches, args.batch
        )
        _print_training(short)
    worker = next(r for r in slow if r['case'] == 'sleep-5ms-worker')
    none = next(r for r in slow if r['case'] == 'none')
    added = worker['us_per_event'] - none['us_per_event']
    result = {
        'machine': platform.platform(),
        'python': platform.python_version(),
        'cpus': os.cpu_count(),
        'arguments': {k: str(v) for k, v in vars(args).items()},
        'slow_backend': slow,
        'sleep_5ms_added_us_per_event': added,
        'training': training,
        'training_short_epochs': short,
        'targets': {
            'us_per_event': TARGET_US_PER_EVENT,
            'step_ratio': TARGET_STEP_RATIO,
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f'written to {args.json}')
    ok = added <= TARGET_US_PER_EVENT
    print(f'5 ms tracker adds {added:.2f} us/event (target <= 50): {ok}')
    ratio = training['step_ratio_wall']
    step_ok = ratio <= TARGET_STEP_RATIO
    print(f'step ratio {ratio:.4f} (target <= {TARGET_STEP_RATIO}): {step_ok}')
    return 0 if ok and step_ok else 1


def _print_training(training: dict[str, Any]) -> None:
    print(
        f'{training["batches_per_epoch"]} batches/epoch: step '
        f'{training["step_us"]} us; ratio all/none '
        f'{training["step_ratio_wall"]:.4f} wall, '
        f'{training["step_ratio_thread_cpu"]:.4f} thread CPU; trackers '
        f'started in {training["start_s_median"]:.2f} s, drained at the '
        f'stop in {training["drain_s_median"]:.3f} s; worker busy per run '
        f'{training["worker_busy_s_per_run"]}',
        flush=True,
    )


if __name__ == '__main__':
    sys.exit(main())
