"""One rank of the kernel's multi-process test (run by test_core_distributed).

Started by ``tests.helpers.multiprocess.run_distributed`` with torchrun's
variables: the process group is brought up by the kernel itself when the
first run starts, as it would be under torchrun.  Usage::

    python _dist_worker.py PAR_DIR

Everything this rank observed is printed as one JSON line prefixed with
``RESULT:``; nothing else is written by the worker itself, so every file
under PAR_DIR was written by drytorch.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
from typing import Any

import torch
from typing_extensions import override

from drytorch import Experiment, extend_default_trackers
from drytorch.core import exceptions, log_events
from drytorch.core.tracking import Tracker
from drytorch.distributed import ranks, teardown_distributed
from drytorch.trackers.csv import CSVDumper


class Recorder(Tracker):
    """Keeps the class names of the events it receives."""

    def __init__(self) -> None:
        self.names: list[str] = []

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        self.names.append(event.__class__.__name__)
        return super().notify(event)


class Trainer:
    """A stand-in actor with some metadata."""

    def __init__(self) -> None:
        self.lr = 0.01
        self.batch_size = 4


def main(par_dir: pathlib.Path) -> dict[str, Any]:
    rank = int(ranks.get_rank())
    extend_default_trackers([CSVDumper()])
    exp = Experiment({'seed': 0}, name='DistExp', par_dir=par_dir)
    recorder = Recorder()
    exp.trackers.subscribe(recorder)
    out: dict[str, Any] = {'env_rank': rank}
    pushed: list[int] = []

    with exp.create_run() as run:
        out['distributed'] = ranks.is_distributed()
        out['rank'] = ranks.get_rank()
        out['world_size'] = ranks.get_world_size()
        out['run_id'] = run.id
        out['live_trackers'] = sorted(exp.trackers.named_trackers)
        out['all_trackers'] = sorted(exp.trackers.all_names())
        out['csv_found'] = CSVDumper.get_current() is not None
        model = torch.nn.Linear(3, 1)
        name = exp.metadata_manager.register_model('linear', model)
        exp.metadata_manager.register_actor('trainer', Trainer(), name)
        batches = log_events.IterateBatchEvent(
            source_name='trainer', batch_size=4, dataset_size=16, n_iter=None
        )
        out['tracker_callbacks'] = len(batches.push_updates)
        batches.push_updates.append(lambda _, done: pushed.append(done))
        batches.update({'loss': 1.0}, 4)
        for epoch in (1, 2):
            log_events.MetricEvent(
                model_name=name,
                source_name='trainer',
                epoch=epoch,
                metrics={'loss': 1.0 / epoch},
            )
        if rank == 1:
            log_events.EndTrainingEvent(source_name='rank one only')
    out['pushed'] = pushed
    out['events_first_run'] = list(recorder.names)

    with exp.create_run(resume=True) as resumed:
        out['resumed_id'] = resumed.id
        out['resumed'] = resumed.resumed
        out['attempt'] = resumed.attempt

    # Rank zero refuses an existing id: every rank must fail, none hang.
    try:
        exp.create_run(run_id=out['run_id']).start()
    except exceptions.DryTorchError as err:
        out['refused'] = err.__class__.__name__
        out['refused_message'] = str(err)
    else:
        out['refused'] = None
    out['active_after_refusal'] = Experiment.current_run() is not None
    out['events'] = list(recorder.names)
    ranks.barrier()
    teardown_distributed()
    return out


if __name__ == '__main__':
    result = main(pathlib.Path(sys.argv[1]))
    print('RESULT:' + json.dumps(result), flush=True)
