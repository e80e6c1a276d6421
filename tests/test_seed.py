"""The trackers tutorial (the seed), run as a user would run it.

Every Python code block of the tutorial, in order, forms one script, run in
a fresh folder with ``python script.py``.  The blocks are copied unchanged
(only the indentation, which the tutorial's text lost, is restored).  Left
out: the shell line ``! uv pip install drytorch``, and the fragment that
shows the ``notify`` pattern outside any class (it is not runnable on its
own; ``tests/core/test_tracking.py`` checks that pattern).

After the tutorial's blocks the script goes one step further, as the
tutorial invites: it subscribes the custom ``MetadataVisualizer`` to an
experiment and has the metadata manager register a model and an actor.
"""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers.multiprocess import clean_environ

TUTORIAL_BLOCKS = [
    """\
from drytorch import Experiment, init_trackers
init_trackers(mode='minimal')
tuning_experiment = Experiment(
    None, name='TuningExperiment', par_dir='experiments'
)
with tuning_experiment.create_run():
    pass # no logging output
init_trackers()
standard_experiment = Experiment(
    None, name='StandardExperiment', par_dir='experiments'
)
with standard_experiment.create_run():
    pass # log experiment's name
""",
    """\
import pathlib
from drytorch import extend_default_trackers
from drytorch.trackers.csv import CSVDumper
csv_dumper = CSVDumper(par_dir=pathlib.Path('experiments', 'my_directory'))
extend_default_trackers([csv_dumper])
""",
    """\
csv_dumper_experiment = Experiment(
    None, name='ExperimentWithCSVDumper', par_dir='experiments'
)
with csv_dumper_experiment.create_run():
    if CSVDumper.get_current() is not csv_dumper:
        raise AssertionError('Trackers should coincide.')
""",
    """\
import functools
import pprint
from typing_extensions import override
from drytorch.core import log_events
from drytorch.core.tracking import Tracker
class MetadataVisualizer(Tracker):
    \"\"\"Tracker that prints the metadata on the console.\"\"\"
    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)
    @notify.register
    def _(self, event: log_events.ModelRegistrationEvent) -> None:
        pprint.pp(event.architecture_repr)
        return super().notify(event)
    @notify.register
    def _(self, event: log_events.ActorRegistrationEvent) -> None:
        pprint.pp(event.metadata)
        return super().notify(event)
""",
]

VISUALIZER_DRIVER = """\
import sys
import torch
print('=== visualizer ===', flush=True)
print('=== visualizer ===', file=sys.stderr, flush=True)
class Trainer:
    def __init__(self):
        self.learning_rate = 0.001
        self.max_epochs = 7
visual_experiment = Experiment(
    None, name='VisualExperiment', par_dir='experiments'
)
visual_experiment.trackers.subscribe(MetadataVisualizer())
with visual_experiment.create_run():
    manager = visual_experiment.metadata_manager
    model_name = manager.register_model('linear', torch.nn.Linear(2, 3))
    manager.register_actor('trainer', Trainer(), model_name)
"""

TIMESTAMP = r'\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]'
RUN_ID = r'\d{4}-\d\d-\d\d@\d\dh\d\dm\d\ds'


def log_line(experiment: str, verb: str) -> re.Pattern[str]:
    return re.compile(
        rf'^{TIMESTAMP} - Experiment: {experiment} - {verb} run: {RUN_ID}$'
    )


@pytest.fixture(scope='module')
def tutorial(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pathlib.Path, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp('tutorial')
    script = folder / 'script.py'
    script.write_text('\n'.join([*TUTORIAL_BLOCKS, VISUALIZER_DRIVER]))
    proc = subprocess.run(
        [sys.executable, 'script.py'],
        cwd=folder,
        env=clean_environ(drop=['DRYTORCH_INIT_MODE']),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return folder, proc


def split(text: str) -> tuple[list[str], list[str]]:
    """The lines before and after the visualizer marker."""
    before, marker, after = text.partition('=== visualizer ===\n')
    assert marker, text
    return before.splitlines(), after.splitlines()


def test_script_runs(tutorial: Any) -> None:
    _, proc = tutorial
    assert proc.returncode == 0, proc.stderr


def test_tutorial_output(tutorial: Any) -> None:
    _, proc = tutorial
    out_before, _ = split(proc.stdout)
    err_before, _ = split(proc.stderr)
    assert out_before == []
    # minimal mode printed nothing: only the standard-mode runs log
    expected = [
        log_line('StandardExperiment', 'Starting'),
        log_line('StandardExperiment', 'Stopping'),
        log_line('ExperimentWithCSVDumper', 'Starting'),
        log_line('ExperimentWithCSVDumper', 'Stopping'),
    ]
    assert len(err_before) == len(expected), proc.stderr
    for line, pattern in zip(err_before, expected, strict=True):
        assert pattern.match(line), line
    # each stop names the run its start named
    assert err_before[0].split('run: ')[1] == err_before[1].split('run: ')[1]
    assert err_before[2].split('run: ')[1] == err_before[3].split('run: ')[1]


def test_tutorial_files(tutorial: Any) -> None:
    folder, _ = tutorial
    experiments = folder / 'experiments'
    # minimal mode dumps no metadata; standard mode does
    assert not (experiments / 'TuningExperiment' / 'runs').exists()
    (standard_run,) = (experiments / 'StandardExperiment' / 'runs').iterdir()
    assert re.fullmatch(RUN_ID, standard_run.name)
    assert (standard_run / 'metadata' / 'config.yaml').is_file()


def test_visualizer_prints_architecture_and_actor_metadata(
    tutorial: Any,
) -> None:
    _, proc = tutorial
    _, out_after = split(proc.stdout)
    assert out_after[0] == repr(
        'Linear(in_features=2, out_features=3, bias=True)'
    )
    metadata = ast.literal_eval('\n'.join(out_after[1:]))
    assert isinstance(metadata, dict)
    flat = repr(metadata)
    assert "'learning_rate': 0.001" in flat
    assert "'max_epochs': 7" in flat
    _, err_after = split(proc.stderr)
    assert log_line('VisualExperiment', 'Starting').match(err_after[0])
    assert log_line('VisualExperiment', 'Stopping').match(err_after[-1])
