"""What a plotter costs per epoch early in a run and 5,000 epochs in.

Once a plot is asked for, a plotter updates it at every epoch end.  That
update used to redraw the whole history (PlotlyPlotter: 0.6 ms at epoch 10,
9.6 ms at epoch 5,000); it must cost the same whatever the run's length.

Each plotter available here (matplotlib, plotly, Visdom on a server started
on loopback) runs ``--epochs`` epochs (Visdom: ``--visdom-epochs``, its
server slows down as windows grow, see below) of ``--sources``
MetricEvents with ``--metrics`` values each and an EndEpochEvent, with
every metric's plot asked for after the first epoch.  The plotter is made
immediate, so that the publishing thread pays for it and each epoch can be
timed alone.
To be fair on a shared machine, the epochs of a young model (epochs 5 to
15) alternate with those of a model ``--epochs`` old, in one plotter.
Reported: the median time of one epoch's events of each, and their ratio
(1 is the goal); in wall-clock time and
in CPU time of the publishing thread.  Visdom's wall clock includes its
server's work, in another process: each update there stringifies and
hashes the whole window (``UpdateHandler.wrap_func``), whatever was sent.

    python benchmarks/plotters.py
    python benchmarks/plotters.py --epochs 1000 --only plotly
    # the same figures for another source tree, kept under its own label
    python benchmarks/plotters.py --source /tmp/old --label before
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import pathlib
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

RESULTS = pathlib.Path(__file__).parent / 'results' / 'plotters.json'
EARLY = 5  # a young model's epochs from 5 to 15 are "at epoch 10"


@contextlib.contextmanager
def _visdom_server() -> Iterator[int | None]:
    """A Visdom server on a free loopback port, or None without visdom.

    ``run_server.main`` serves the API without downloading web assets, so
    it starts offline.
    """
    try:
        import visdom  # noqa: F401
    except ImportError:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory() as env_path:
        server = subprocess.Popen(
            [
                sys.executable,
                '-c',
                'from visdom.server.run_server import main; main()',
                *('-port', str(port), '--hostname', '127.0.0.1'),
                *('-bind_local', '-env_path', env_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with socket.socket() as sock:
                    if sock.connect_ex(('127.0.0.1', port)) == 0:
                        break
                time.sleep(0.1)
            yield port
        finally:
            server.terminate()
            server.wait(timeout=10)


def _factories(visdom_port: int | None) -> dict[str, Callable[[], Any]]:
    """The plotters whose backend is installed, by name."""
    from drytorch.trackers import matplotlib, plotly

    found: dict[str, Callable[[], Any]] = {}
    if matplotlib.is_available():
        found['matplotlib'] = matplotlib.MatPlotter
    if plotly.is_available():
        found['plotly'] = plotly.PlotlyPlotter
    if visdom_port is not None:
        from drytorch.trackers.visdom import VisdomPlotter

        found['visdom'] = lambda: VisdomPlotter(
            'http://127.0.0.1', visdom_port, env='bench'
        )
    return found


class _Publisher:
    """Publishes epochs of metrics for any model; times each epoch."""

    def __init__(self, plotter: Any, sources: int, metrics: int) -> None:
        self.plotter = plotter
        self.names = [f'metric_{i}' for i in range(metrics)]
        self.sources = [f'source_{i}' for i in range(sources)]

    def epoch(self, model: str, epoch: int) -> tuple[float, float]:
        """One epoch's events; wall and this thread's CPU seconds."""
        from drytorch.core import log_events

        values = {n: 1.0 / (epoch + i) for i, n in enumerate(self.names)}
        began, began_cpu = time.perf_counter(), time.thread_time()
        for source in self.sources:
            log_events.MetricEvent(
                model_name=model,
                source_name=source,
                epoch=epoch,
                metrics=values,
            )
        log_events.EndEpochEvent(
            model_name=model, source_name=self.sources[0], epoch=epoch
        )
        took = time.perf_counter() - began, time.thread_time() - began_cpu
        if epoch == 1:  # the plots are asked for: updated from now on
            for name in self.names:
                self.plotter.plot_metric(model, name)
        return took


def per_epoch(
    factory: Callable[[], Any],
    epochs: int,
    sources: int,
    metrics: int,
    rounds: int,
) -> dict[str, Any]:
    """Epochs of a young model and of one ``epochs`` old, interleaved.

    One plotter draws a model trained to ``epochs - 1`` untimed, then, in
    each round, a new model's epochs 1 to 15 alternate with as many of the
    old model's: a slow patch of a shared machine hits both alike.  The
    young models' epochs 5 to 15 are "at epoch 10".
    """
    from drytorch import Experiment

    young: list[tuple[float, float]] = []
    old: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        plotter = factory()
        plotter.immediate = True  # timed on this thread, epoch by epoch
        exp: Any = Experiment(None, name='bench', par_dir=folder)
        exp.trackers.subscribe(plotter)
        with exp.create_run('r'):
            publisher = _Publisher(plotter, sources, metrics)
            for epoch in range(1, epochs):
                publisher.epoch('old', epoch)
            gc.collect()
            gc.disable()  # a collection would land on one epoch at random
            try:
                epoch = epochs
                for round_ in range(rounds):
                    for young_epoch in range(1, 16):
                        took = publisher.epoch(f'young_{round_}', young_epoch)
                        if young_epoch >= EARLY:
                            young.append(took)
                        took = publisher.epoch('old', epoch)
                        if young_epoch >= EARLY:
                            old.append(took)
                        epoch += 1
                    gc.collect()
            finally:
                gc.enable()
        survived = len(exp.trackers) == 1
    row: dict[str, Any] = {'epochs': epochs, 'last_epoch': epoch - 1}
    for index, kind in ((0, ''), (1, 'cpu_')):
        early = statistics.median(took[index] for took in young)
        late = statistics.median(took[index] for took in old)
        row[f'{kind}ms_per_epoch_at_10'] = 1e3 * early
        row[f'{kind}ms_per_epoch_at_end'] = 1e3 * late
        row[f'{kind}ratio'] = late / early
    row['survived'] = survived
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=5000)
    parser.add_argument('--visdom-epochs', type=int, default=1000)
    parser.add_argument('--sources', type=int, default=2)
    parser.add_argument('--metrics', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--only', nargs='*', help='plotter names to run')
    parser.add_argument(
        '--source', type=pathlib.Path, help='import drytorch from here'
    )
    parser.add_argument('--label', default='current')
    parser.add_argument('--json', type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    if args.source is not None:
        sys.path.insert(0, str(args.source.resolve()))
    import drytorch

    drytorch.init_trackers('none')
    rows: dict[str, Any] = {}
    with _visdom_server() as port:
        for name, factory in _factories(port).items():
            if args.only and name not in args.only:
                continue
            epochs = args.visdom_epochs if name == 'visdom' else args.epochs
            row = per_epoch(
                factory, epochs, args.sources, args.metrics, args.rounds
            )
            rows[name] = row
            print(
                f'{name:11} {row["ms_per_epoch_at_10"]:8.3f} ms at epoch 10'
                f'  {row["ms_per_epoch_at_end"]:8.3f} ms at epoch'
                f' {epochs}  ratio {row["ratio"]:5.2f}'
                f"  (this thread's CPU: {row['cpu_ms_per_epoch_at_10']:.3f}"
                f' and {row["cpu_ms_per_epoch_at_end"]:.3f} ms,'
                f' ratio {row["cpu_ratio"]:.2f})'
                + ('' if row['survived'] else '  (plotter dropped!)'),
                flush=True,
            )
    results: dict[str, Any] = {}
    if args.json.exists():
        results = json.loads(args.json.read_text())
    results.setdefault('runs', {})[args.label] = {
        'machine': platform.platform(),
        'python': platform.python_version(),
        'cpus': os.cpu_count(),
        'drytorch': str(pathlib.Path(drytorch.__file__).parent),
        'arguments': {k: str(v) for k, v in vars(args).items()},
        'plotters': rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + '\n')
    print(f'written to {args.json} under {args.label!r}')


if __name__ == '__main__':
    main()
