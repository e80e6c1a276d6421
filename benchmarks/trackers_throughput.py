"""Throughput of each tracker, and what a slow tracker costs a training.

Part 1 (throughput): one run of a real Experiment with a single tracker
subscribed, on rank zero, publishing what a long training publishes:
``--epochs`` epochs of ``--sources`` MetricEvents with ``--metrics`` values
each, and an EndEpochEvent per epoch.  Reported: MetricEvents per second
through the dispatcher and the tracker (EndEpochEvents included in the
time), the start of the run and its stop (clean-up, final plots).  'none'
is the dispatcher alone.  Visdom posts every point to its server, so it runs
fewer epochs (``--visdom-epochs``); PostgreSQL runs when
``DRYTORCH_TEST_PG_URL`` is set, in a database made for it and dropped.

Part 2 (slow backend): a small CPU training loop (an MLP, ``--steps``
optimiser steps per epoch) that publishes one MetricEvent per epoch, with no
tracker, with a tracker whose notify sleeps 5 ms, and with real trackers.
Trackers now run on a background worker (see tracker_worker.py); this part
measures what publishing costs the training thread.

    python benchmarks/trackers_throughput.py
    python benchmarks/trackers_throughput.py --epochs 500 --only csv sqlite
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
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from typing_extensions import override

import drytorch
from drytorch import Experiment
from drytorch.core import log_events
from drytorch.core.tracking import Tracker

RESULTS = pathlib.Path(__file__).parent / 'results'
Factory = Callable[[pathlib.Path], Tracker | None]


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


def _csv(folder: pathlib.Path) -> Tracker:
    from drytorch.trackers.csv import CSVDumper

    return CSVDumper(par_dir=folder)


def _sqlite(folder: pathlib.Path) -> Tracker:
    from drytorch.trackers.sqlalchemy import SQLConnection

    return SQLConnection(par_dir=folder)


def _tensorboard(folder: pathlib.Path) -> Tracker:
    from drytorch.trackers.tensorboard import TensorBoard

    return TensorBoard(par_dir=folder)


def _wandb(folder: pathlib.Path) -> Tracker:
    import wandb

    from drytorch.trackers.wandb import Wandb

    os.environ.setdefault('WANDB_MODE', 'offline')  # never go online here
    settings = wandb.Settings(console='off', x_disable_stats=True, silent=True)
    return Wandb(par_dir=folder, settings=settings)


def _matplotlib(folder: pathlib.Path) -> Tracker:
    from drytorch.trackers.matplotlib import MatPlotter

    return MatPlotter()


def _plotly(folder: pathlib.Path) -> Tracker:
    from drytorch.trackers.plotly import PlotlyPlotter

    return PlotlyPlotter()


def _yaml(folder: pathlib.Path) -> Tracker:
    from drytorch.trackers.yaml import YamlDumper

    return YamlDumper(par_dir=folder)


@contextlib.contextmanager
def _postgres() -> Iterator[Factory | None]:
    url = os.environ.get('DRYTORCH_TEST_PG_URL')
    if not url:
        yield None
        return
    import sqlalchemy as sa

    from drytorch.trackers.sqlalchemy import SQLConnection

    server = sa.make_url(url)
    name = f'drytorch_bench_{uuid.uuid4().hex[:12]}'
    admin = sa.create_engine(server, isolation_level='AUTOCOMMIT')
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE {name}'))
    target = server.set(database=name).render_as_string(hide_password=False)
    try:
        yield lambda folder: SQLConnection(engine=target)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE {name} WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def _visdom() -> Iterator[Factory | None]:
    """A Visdom server of our own on loopback, if visdom is installed."""
    from drytorch.trackers import visdom as visdom_tracker

    if not visdom_tracker.is_available():
        yield None
        return
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as env_path:
        server = subprocess.Popen(
            [
                sys.executable,
                '-c',
                'from visdom.server.run_server import main; main()',
                '-port',
                str(port),
                '--hostname',
                '127.0.0.1',
                '-bind_local',
                '-env_path',
                env_path,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(300):
                with socket.socket() as sock:
                    if sock.connect_ex(('127.0.0.1', port)) == 0:
                        break
                time.sleep(0.1)
            yield lambda folder: visdom_tracker.VisdomPlotter(
                'http://127.0.0.1', port
            )
        finally:
            server.terminate()
            server.wait(timeout=10)


def throughput(
    name: str, factory: Factory, epochs: int, sources: int, metrics: int
) -> dict[str, Any]:
    """Publish a long run's metrics through one tracker; time each part.

    A plotter named ``*-open`` has a figure asked for after the first
    epoch, which it then updates at every epoch end.
    """
    names = [f'metric_{i}' for i in range(metrics)]
    source_names = [f'source_{i}' for i in range(sources)]
    with tempfile.TemporaryDirectory() as folder:
        par_dir = pathlib.Path(folder)
        tracker = factory(par_dir / 'out')
        exp: Experiment[None] = Experiment(None, name='bench', par_dir=par_dir)
        if tracker is not None:
            exp.trackers.subscribe(tracker)
        t0 = time.perf_counter()
        run = exp.create_run('r').start()
        t1 = time.perf_counter()
        for epoch in range(1, epochs + 1):
            for source in source_names:
                log_events.MetricEvent(
                    model_name='model',
                    source_name=source,
                    epoch=epoch,
                    metrics={
                        n: 1.0 / (epoch + i) for i, n in enumerate(names)
                    },
                )
            log_events.EndEpochEvent(
                model_name='model', source_name=source_names[0], epoch=epoch
            )
            if epoch == 1 and name.endswith('-open'):
                tracker.plot_metric('model', names[0])  # type: ignore[union-attr]
        t2 = time.perf_counter()
        run.stop()
        t3 = time.perf_counter()
        survived = tracker is None or len(exp.trackers) == 1
    events = epochs * sources
    return {
        'tracker': name,
        'epochs': epochs,
        'metric_events': events,
        'events_per_s': events / (t2 - t1),
        'us_per_event': 1e6 * (t2 - t1) / events,
        'start_s': t1 - t0,
        'stop_s': t3 - t2,
        'survived': survived,
    }


def training_cost(
    cases: dict[str, Factory], rounds: int, epochs: int, steps: int
) -> list[dict[str, Any]]:
    """Per-step time of a small training publishing a metric per epoch.

    The cases alternate, round after round, so that a slow patch of a
    shared machine hits all of them.  The time spent publishing the event
    (the trackers run inside it, synchronously) is measured apart from the
    steps, since on a shared machine the steps' own time varies more than
    a few milliseconds; figures are medians over epochs.
    """
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    inputs = torch.randn(steps, 32, 64)
    labels = torch.randint(0, 10, (steps, 32))
    steps_s: dict[str, list[float]] = {name: [] for name in cases}
    publish_s: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(rounds):
        for name, factory in cases.items():
            with tempfile.TemporaryDirectory() as folder:
                tracker = factory(pathlib.Path(folder))
                exp: Experiment[None] = Experiment(
                    None, name='cost', par_dir=folder
                )
                if tracker is not None:
                    exp.trackers.subscribe(tracker)
                with exp.create_run(f'r{round_}'):
                    for epoch in range(1, epochs + 1):
                        start = time.perf_counter()
                        total = 0.0
                        for step in range(steps):
                            optimizer.zero_grad()
                            loss = nn.functional.cross_entropy(
                                network(inputs[step]), labels[step]
                            )
                            loss.backward()
                            optimizer.step()
                            total += loss.item()
                        trained = time.perf_counter()
                        log_events.MetricEvent(
                            model_name='mlp',
                            source_name='train',
                            epoch=epoch,
                            metrics={'loss': total / steps},
                        )
                        if epoch > 1:  # the first warms the tracker up
                            steps_s[name].append(trained - start)
                            publish_s[name].append(
                                time.perf_counter() - trained
                            )
    rows = []
    for name in cases:
        step = statistics.median(steps_s[name]) / steps
        publish = statistics.median(publish_s[name])
        rows.append(
            {
                'tracker': name,
                'step_us': 1e6 * step,
                'publish_ms_per_epoch': 1e3 * publish,
                'added_us_per_step': 1e6 * publish / steps,
                'added_percent': 100 * publish / (step * steps),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=5000)
    parser.add_argument('--visdom-epochs', type=int, default=300)
    parser.add_argument('--sources', type=int, default=3)
    parser.add_argument('--metrics', type=int, default=4)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--train-epochs', type=int, default=15)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--only', nargs='*', help='tracker names to run')
    parser.add_argument(
        '--json',
        type=pathlib.Path,
        default=RESULTS / 'trackers_throughput.json',
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    drytorch.init_trackers('none')
    stack = contextlib.ExitStack()
    postgres = stack.enter_context(_postgres())
    visdom = stack.enter_context(_visdom())
    candidates: dict[str, Factory | None] = {
        'none': lambda folder: None,
        'csv': _csv,
        'yaml': _yaml,
        'sqlite': _sqlite,
        'postgres': postgres,
        'tensorboard': _tensorboard,
        'wandb-offline': _wandb,
        'matplotlib': _matplotlib,
        'matplotlib-open': _matplotlib,
        'plotly': _plotly,
        'visdom': visdom,
    }
    chosen = {
        name: factory
        for name, factory in candidates.items()
        if factory is not None and (not args.only or name in args.only)
    }
    rows = []
    with stack:
        for name, factory in chosen.items():
            epochs = args.visdom_epochs if name == 'visdom' else args.epochs
            row = throughput(name, factory, epochs, args.sources, args.metrics)
            rows.append(row)
            print(
                f'{name:16} {row["events_per_s"]:>10.0f} events/s '
                f'{row["us_per_event"]:>9.1f} us/event  start '
                f'{row["start_s"]:.2f} s  stop {row["stop_s"]:.2f} s'
                + ('' if row['survived'] else '  (tracker dropped!)'),
                flush=True,
            )
        slow_cases: dict[str, Factory] = {
            'none': lambda folder: None,
            'sleep-5ms': lambda folder: _Sleepy(),
        }
        for name in ('csv', 'sqlite', 'tensorboard'):
            if name in chosen:
                slow_cases[name] = chosen[name]
        costs = training_cost(
            slow_cases, args.rounds, args.train_epochs, args.steps
        )
        for cost in costs:
            print(
                f'training with {cost["tracker"]:12} '
                f'step {cost["step_us"]:7.1f} us, publish '
                f'{cost["publish_ms_per_epoch"]:7.3f} ms/epoch = '
                f'{cost["added_us_per_step"]:7.1f} us/step '
                f'({cost["added_percent"]:5.1f} %)',
                flush=True,
            )
    result = {
        'machine': platform.platform(),
        'python': platform.python_version(),
        'cpus': os.cpu_count(),
        'arguments': {k: str(v) for k, v in vars(args).items()},
        'throughput': rows,
        'training': costs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f'written to {args.json}')


if __name__ == '__main__':
    main()
