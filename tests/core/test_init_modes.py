"""Initialisation modes of the default trackers."""

from __future__ import annotations

import json
import logging
import pathlib
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from drytorch import Experiment, init_trackers
from drytorch.core import exceptions, log_events, tracking
from tests.helpers.multiprocess import clean_environ

START = re.compile(
    r'^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] - Experiment: Modes - '
    r'Starting run: \d{4}-\d\d-\d\d@\d\dh\d\dm\d\ds$'
)
STOP = re.compile(
    r'^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] - Experiment: Modes - '
    r'Stopping run: \d{4}-\d\d-\d\d@\d\dh\d\dm\d\ds$'
)


def default_names() -> list[str]:
    return sorted(tracking.DEFAULT_TRACKERS)


def run_training_like(par_dir: pathlib.Path) -> pathlib.Path:
    """A run with a training outcome, a metric and a model registration."""
    exp = Experiment({'lr': 0.1}, name='Modes', par_dir=par_dir)
    with exp.create_run() as run:
        exp.metadata_manager.register_model('net', object())
        log_events.StartTrainingEvent(
            source_name='trainer', model_name='net', start_epoch=1, end_epoch=1
        )
        log_events.MetricEvent(
            model_name='net',
            source_name='trainer',
            epoch=1,
            metrics={'loss': 0.5},
        )
        log_events.EndTrainingEvent(source_name='trainer')
    return run.dir


class TestModes:
    def test_standard(
        self, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        init_trackers('standard')
        assert default_names() == ['BuiltinLogger', 'TqdmLogger', 'YamlDumper']
        run_dir = run_training_like(tmp_path)
        captured = capsys.readouterr()
        assert captured.out == ''
        lines = captured.err.splitlines()
        assert START.match(lines[0]), lines
        assert STOP.match(lines[-1]), lines
        assert any('Training net' in line for line in lines)
        assert any('loss=0.5' in line for line in lines)
        assert (run_dir / 'metadata' / 'config.yaml').is_file()

    def test_default_mode_is_standard(self) -> None:
        init_trackers()
        assert default_names() == ['BuiltinLogger', 'TqdmLogger', 'YamlDumper']

    def test_hydra_logs_to_stdout_and_propagates(
        self, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        init_trackers('hydra')
        assert default_names() == ['BuiltinLogger', 'YamlDumper']
        root_records: list[logging.LogRecord] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                root_records.append(record)

        handler = Collect()
        logging.getLogger().addHandler(handler)
        try:
            run_dir = run_training_like(tmp_path)
        finally:
            logging.getLogger().removeHandler(handler)
        captured = capsys.readouterr()
        lines = captured.out.splitlines()
        assert START.match(lines[0]), lines
        assert STOP.match(lines[-1]), lines
        assert 'Experiment: Modes' not in captured.err
        messages = [r.getMessage() for r in root_records]
        assert any(
            m.startswith('Experiment: Modes - Starting') for m in messages
        )
        assert (run_dir / 'metadata' / 'config.yaml').is_file()

    def test_minimal_logs_outcomes_only_and_dumps_nothing(
        self, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        init_trackers('minimal')
        assert default_names() == ['BuiltinLogger']
        run_dir = run_training_like(tmp_path)
        captured = capsys.readouterr()
        assert captured.out == ''
        assert 'Experiment: Modes' not in captured.err
        assert 'loss=0.5' not in captured.err
        assert 'Training net' in captured.err
        assert not run_dir.exists()

    def test_minimal_run_prints_nothing(
        self, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        init_trackers(mode='minimal')
        with Experiment(None, name='Quiet', par_dir=tmp_path).create_run():
            pass
        assert capsys.readouterr() == ('', '')

    def test_none(
        self, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        init_trackers('standard')
        init_trackers('none')
        assert default_names() == []
        exp = Experiment(None, name='Modes', par_dir=tmp_path)
        assert exp.trackers.named_trackers == {}
        run_dir = run_training_like(tmp_path)
        assert capsys.readouterr() == ('', '')
        assert not run_dir.exists()

    def test_modes_replace_each_other(self) -> None:
        init_trackers('standard')
        init_trackers('minimal')
        assert default_names() == ['BuiltinLogger']
        init_trackers('hydra')
        assert default_names() == ['BuiltinLogger', 'YamlDumper']

    def test_extended_trackers_survive_until_the_next_init(self) -> None:
        init_trackers('minimal')

        class Extra(tracking.Tracker):
            def notify(self, event: log_events.Event) -> None:
                return None

        tracking.extend_default_trackers([Extra()])
        assert default_names() == ['BuiltinLogger', 'Extra']

    def test_wrong_mode_lists_the_valid_ones(self) -> None:
        init_trackers('minimal')
        with pytest.raises(ValueError, match='verbose') as info:
            init_trackers('verbose')  # type: ignore[arg-type]
        message = str(info.value)
        for mode in ('standard', 'hydra', 'minimal', 'none'):
            assert f"'{mode}'" in message
        assert 'DRYTORCH_INIT_MODE' in message
        assert default_names() == ['BuiltinLogger']  # left untouched

    @pytest.mark.parametrize(
        ('blocked', 'mode', 'expected'),
        [
            ('tqdm', 'standard', ['BuiltinLogger', 'YamlDumper']),
            ('yaml', 'standard', ['BuiltinLogger', 'TqdmLogger']),
            ('yaml', 'hydra', ['BuiltinLogger']),
        ],
    )
    def test_missing_optional_dependency_warns(
        self,
        monkeypatch: pytest.MonkeyPatch,
        blocked: str,
        mode: Any,
        expected: list[str],
    ) -> None:
        monkeypatch.setitem(sys.modules, blocked, None)
        with pytest.warns(exceptions.DryTorchWarning) as record:
            init_trackers(mode)
        assert default_names() == expected
        package = {'tqdm': 'tqdm', 'yaml': 'PyYAML'}[blocked]
        message = str(record[0].message)
        assert package in message
        assert 'drytorch[recommended]' in message

    def test_missing_dependency_in_minimal_mode_is_silent(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, 'tqdm', None)
        monkeypatch.setitem(sys.modules, 'yaml', None)
        init_trackers('minimal')
        assert default_names() == ['BuiltinLogger']


# ---------------------------------------------------------------- on import

PROBE = """
import json, sys, warnings
{block}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import drytorch
from drytorch.core.tracking import DEFAULT_TRACKERS
exp = drytorch.Experiment(None, name='Modes', par_dir='experiments')
with exp.create_run():
    pass
print(json.dumps({{
    'trackers': sorted(DEFAULT_TRACKERS),
    'warnings': [str(w.message) for w in caught],
}}))
"""

CASES: dict[str, tuple[str | None, str]] = {
    'unset': (None, ''),
    'hydra': ('hydra', ''),
    'none': ('none', ''),
    'invalid': ('loud', ''),
    'blocked': (
        None,
        "sys.modules['tqdm'] = None\nsys.modules['yaml'] = None",
    ),
}


@pytest.fixture(scope='module')
def on_import(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each case in a fresh interpreter, all started at once."""
    running = {}
    for name, (mode, block) in CASES.items():
        env = clean_environ(drop=['DRYTORCH_INIT_MODE'])
        if mode is not None:
            env['DRYTORCH_INIT_MODE'] = mode
        code = textwrap.dedent(PROBE).format(block=block)
        running[name] = subprocess.Popen(
            [sys.executable, '-c', code],
            env=env,
            cwd=tmp_path_factory.mktemp(name),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    done = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        done[name] = subprocess.CompletedProcess(
            process.args, process.returncode, out, err
        )
    return done


def probe_result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    ('case', 'trackers', 'stream'),
    [
        ('unset', ['BuiltinLogger', 'TqdmLogger', 'YamlDumper'], 'stderr'),
        ('hydra', ['BuiltinLogger', 'YamlDumper'], 'stdout'),
        ('none', [], None),
    ],
)
def test_mode_read_on_import(
    on_import: dict[str, subprocess.CompletedProcess[str]],
    case: str,
    trackers: list[str],
    stream: str | None,
) -> None:
    proc = on_import[case]
    result = probe_result(proc)
    assert result['trackers'] == trackers
    assert result['warnings'] == []
    for name in ('stdout', 'stderr'):
        text = getattr(proc, name)
        logged = 'Experiment: Modes - Starting run' in text
        assert logged == (name == stream), (name, text)


def test_invalid_mode_on_import(
    on_import: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    proc = on_import['invalid']
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('ValueError'), proc.stderr
    assert "'loud'" in last and "'standard'" in last and "'none'" in last


def test_import_without_tqdm_and_yaml(
    on_import: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    proc = on_import['blocked']
    result = probe_result(proc)
    assert result['trackers'] == ['BuiltinLogger']
    warned = ' '.join(result['warnings'])
    assert 'tqdm' in warned and 'PyYAML' in warned
    assert 'Experiment: Modes - Starting run' in proc.stderr
