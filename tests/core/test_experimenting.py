"""Experiments and runs: lifecycle, registry, ids, resume, requeue."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import re
import types
import warnings
from typing import Any

import pytest

from drytorch import Experiment, PreemptedExit, Run
from drytorch.core import exceptions, experimenting, log_events
from drytorch.trackers.logging import BuiltinLogger, InfoLevels
from tests.helpers.kernel import RecordingTracker

RUN_ID = re.compile(r'^\d{4}-\d\d-\d\d@\d\dh\d\dm\d\ds$')
LOG_LINE = (
    r'^\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\] - Experiment: {exp} - '
    r'{verb} run: {run}$'
)


@dataclasses.dataclass
class Config:
    lr: float = 0.1
    epochs: int = 3


def registry_entries(exp: Experiment[Any]) -> list[dict[str, Any]]:
    """The registry as a user reads it: the JSON file."""
    path = exp.par_dir / exp.name / 'registry.json'
    return json.loads(path.read_text())['runs']


def entry(exp: Experiment[Any], run_id: str) -> dict[str, Any]:
    matches = [e for e in registry_entries(exp) if e['run_id'] == run_id]
    assert len(matches) == 1, registry_entries(exp)
    return matches[0]


@pytest.fixture
def frozen_now(monkeypatch: pytest.MonkeyPatch) -> datetime.datetime:
    """Every run starts at the same second."""
    moment = datetime.datetime(2026, 5, 29, 12, 0, 47)

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Frozen:
            return cls.fromtimestamp(moment.timestamp(), tz)

    fake = types.SimpleNamespace(datetime=Frozen)
    monkeypatch.setattr(experimenting, 'datetime', fake)
    return moment


class TestExperiment:
    def test_get_current_and_get_config_inside_a_run(self) -> None:
        config = Config()
        exp = Experiment(config, name='Exp', par_dir='experiments')
        with exp.create_run():
            assert Experiment.get_current() is exp
            assert Experiment.get_config() is config
            assert exp.run.is_active

    def test_get_current_outside_a_run(self) -> None:
        exp = Experiment(Config(), name='Exp', par_dir='experiments')
        with pytest.raises(
            exceptions.NoActiveExperimentError, match='get_current'
        ):
            Experiment.get_current()
        with pytest.raises(exceptions.NoActiveExperimentError):
            Experiment.get_config()
        with pytest.raises(exceptions.NoActiveExperimentError):
            _ = exp.run
        with exp.create_run():
            pass
        with pytest.raises(exceptions.NoActiveExperimentError):
            Experiment.get_current()

    def test_get_current_of_a_subclass(self) -> None:
        class MyExperiment(Experiment[Config]):
            pass

        plain = Experiment(Config(), name='Plain', par_dir='experiments')
        with (
            plain.create_run(),
            pytest.raises(exceptions.NoActiveExperimentError, match='Plain'),
        ):
            MyExperiment.get_current()
        mine = MyExperiment(Config(lr=0.5), par_dir='experiments')
        assert mine.name == 'MyExperiment'
        with mine.create_run():
            assert MyExperiment.get_current() is mine
            assert MyExperiment.get_config().lr == 0.5

    def test_folders(self, tmp_path: pathlib.Path) -> None:
        exp = Experiment(None, name='Exp', par_dir=tmp_path / 'out')
        assert exp.dir == tmp_path / 'out' / 'Exp'
        assert not (tmp_path / 'out').exists()
        with exp.create_run() as run:
            assert run.dir == tmp_path / 'out' / 'Exp' / 'runs' / run.id
        assert (tmp_path / 'out' / 'Exp' / 'registry.json').is_file()


class TestLifecycle:
    def test_context_manager_statuses(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        run = exp.create_run()
        assert isinstance(run, Run)
        assert run.status == 'created'
        assert not run.is_active
        with run:
            assert run.status == 'running'
            assert entry(exp, run.id)['status'] == 'running'
        assert run.status == 'completed'
        assert entry(exp, run.id)['status'] == 'completed'
        assert entry(exp, run.id)['attempts'] == 1

    def test_start_and_stop(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        recorder = RecordingTracker()
        exp.trackers.subscribe(recorder)
        run = exp.create_run()
        assert run.start() is run
        assert Experiment.current_run() is run
        assert entry(exp, run.id)['status'] == 'running'
        run.stop()
        assert Experiment.current_run() is None
        assert entry(exp, run.id)['status'] == 'completed'
        run.stop()  # a second stop changes nothing
        assert recorder.names.count('StopExperimentEvent') == 1

    def test_failed_run(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        with pytest.raises(ValueError, match='boom'), exp.create_run() as run:
            raise ValueError('boom')
        assert run.status == 'failed'
        assert entry(exp, run.id)['status'] == 'failed'
        assert Experiment.current_run() is None

    def test_preempted_run(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        recorder = RecordingTracker()
        exp.trackers.subscribe(recorder)
        with pytest.raises(PreemptedExit) as info, exp.create_run() as run:
            raise PreemptedExit('signal')
        assert info.value.code == exceptions.REQUEUE_EXIT_CODE
        assert entry(exp, run.id)['status'] == 'preempted'
        stop = recorder.events[-1]
        assert isinstance(stop, log_events.StopExperimentEvent)
        assert stop.preempted

    def test_stop_with_explicit_status(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        run = exp.create_run().start()
        run.stop('failed')
        assert entry(exp, run.id)['status'] == 'failed'

    def test_nested_run_is_refused(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        other = Experiment(None, name='Other', par_dir='experiments')
        with exp.create_run() as first:
            with pytest.raises(exceptions.RunAlreadyRunningError) as info:
                other.create_run(run_id='second').start()
            assert first.id in str(info.value)
            assert 'second' in str(info.value)
            with pytest.raises(exceptions.RunAlreadyRunningError):
                exp.create_run().start()
            assert Experiment.current_run() is first
            log_events.EndTrainingEvent(source_name='still works')
        assert first.status == 'completed'
        assert [e['run_id'] for e in registry_entries(exp)] == [first.id]
        assert not (other.dir / 'registry.json').exists()

    def test_a_run_after_another(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        with exp.create_run() as first:
            pass
        with exp.create_run() as second:
            assert Experiment.current_run() is second
        assert first.id != second.id
        assert [e['run_id'] for e in registry_entries(exp)] == [
            first.id,
            second.id,
        ]

    def test_record_false_writes_no_registry(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        recorder = RecordingTracker()
        exp.trackers.subscribe(recorder)
        with exp.create_run(record=False) as run:
            assert RUN_ID.match(run.id)
        assert not exp.dir.exists()
        assert recorder.names == [
            'StartExperimentEvent',
            'StopExperimentEvent',
        ]

    def test_registry_records_what_the_issue_lists(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        with exp.create_run() as run:
            pass
        record = entry(exp, run.id)
        assert {'run_id', 'status', 'timestamp', 'git_commit', 'attempts'} <= (
            set(record)
        )
        stamp = datetime.datetime.fromisoformat(record['timestamp'])
        assert stamp.strftime('%Y-%m-%d@%Hh%Mm%Ss') == run.id


class TestIds:
    def test_default_id_is_the_start_timestamp(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        before = datetime.datetime.now().replace(microsecond=0)
        with exp.create_run() as run:
            pass
        after = datetime.datetime.now()
        assert RUN_ID.match(run.id), run.id
        started = datetime.datetime.strptime(run.id, '%Y-%m-%d@%Hh%Mm%Ss')
        assert before <= started <= after
        assert run.timestamp.replace(microsecond=0) == started

    def test_runs_in_the_same_second_get_distinct_ids(
        self, frozen_now: datetime.datetime
    ) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        ids = []
        for _ in range(3):
            with exp.create_run() as run:
                ids.append(run.id)
        assert len(set(ids)) == 3
        assert ids[0] == '2026-05-29@12h00m47s'
        assert all(i.startswith(ids[0]) for i in ids)
        assert [e['run_id'] for e in registry_entries(exp)] == ids

    def test_explicit_id(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        with exp.create_run(run_id='baseline') as run:
            assert run.id == 'baseline'
        assert entry(exp, 'baseline')['status'] == 'completed'

    def test_existing_id_without_resume_is_refused(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        with exp.create_run(run_id='baseline'):
            pass
        run = exp.create_run(run_id='baseline')
        with pytest.raises(exceptions.RunAlreadyRecordedError) as info:
            run.start()
        assert "'baseline'" in str(info.value)
        assert 'resume=True' in str(info.value)
        assert Experiment.current_run() is None
        assert entry(exp, 'baseline')['status'] == 'completed'
        assert entry(exp, 'baseline')['attempts'] == 1


class TestNames:
    @pytest.mark.parametrize(
        ('name', 'chars'),
        [
            ('a/b', ["'/'"]),
            ('x:y', ["':'"]),
            ('a<b>|c', ["'<'", "'>'", "'|'"]),
        ],
    )
    def test_bad_characters_are_named(
        self, name: str, chars: list[str]
    ) -> None:
        with pytest.raises(exceptions.NameNotValidError) as info:
            Experiment(None, name=name, par_dir='experiments')
        message = str(info.value)
        assert 'Experiment' in message
        for char in chars:
            assert char in message
        exp = Experiment(None, name='Good', par_dir='experiments')
        with pytest.raises(exceptions.NameNotValidError) as info:
            exp.create_run(run_id=name)
        for char in chars:
            assert char in str(info.value)
        assert not pathlib.Path('experiments').exists()

    def test_names_are_value_errors(self) -> None:
        with pytest.raises(ValueError, match='folder name'):
            Experiment(None, name='a/b')

    def test_long_names(self) -> None:
        Experiment(None, name='x' * 255, par_dir='experiments')
        with pytest.raises(exceptions.NameNotValidError, match='256'):
            Experiment(None, name='x' * 256, par_dir='experiments')
        exp = Experiment(None, name='Exp', par_dir='experiments')
        with pytest.raises(exceptions.NameNotValidError, match='300'):
            exp.create_run(run_id='r' * 300)

    @pytest.mark.parametrize('name', ['.', '..', ' padded', 'tab\there'])
    def test_other_unusable_names(self, name: str) -> None:
        with pytest.raises(exceptions.NameNotValidError):
            Experiment(None, name=name, par_dir='experiments')

    def test_usual_names_are_accepted(self) -> None:
        for name in ['My Experiment', 'exp-1_v2.3', 'run@2026', 'àccénts']:
            exp = Experiment(None, name=name, par_dir='experiments')
            with exp.create_run() as run:
                pass
            assert run.dir.is_relative_to(exp.dir)


class TestResume:
    def test_resume_last_run_counts_attempts(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        recorder = RecordingTracker()
        exp.trackers.subscribe(recorder)
        with exp.create_run(run_id='old'):
            pass
        with exp.create_run() as last:
            pass
        with exp.create_run(resume=True) as resumed:
            assert resumed.id == last.id
            assert resumed.resumed
            assert resumed.attempt == 2
            assert entry(exp, last.id)['status'] == 'running'
        with exp.create_run(resume=True) as again:
            assert again.attempt == 3
        assert entry(exp, last.id)['attempts'] == 3
        assert entry(exp, last.id)['status'] == 'completed'
        assert entry(exp, 'old')['attempts'] == 1
        starts = recorder.of_type(log_events.StartExperimentEvent)
        assert [(s.run_id, s.resumed, s.attempt) for s in starts] == [
            ('old', False, 1),
            (last.id, False, 1),
            (last.id, True, 2),
            (last.id, True, 3),
        ]
        assert len(registry_entries(exp)) == 2

    def test_resume_named_run(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        with exp.create_run(run_id='first'):
            pass
        with exp.create_run(run_id='second'):
            pass
        with exp.create_run(run_id='first', resume=True) as run:
            assert run.resumed
        assert entry(exp, 'first')['attempts'] == 2
        assert entry(exp, 'second')['attempts'] == 1

    def test_resume_a_failed_run(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        with pytest.raises(RuntimeError), exp.create_run(run_id='r'):
            raise RuntimeError
        assert entry(exp, 'r')['status'] == 'failed'
        with exp.create_run(run_id='r', resume=True):
            pass
        assert entry(exp, 'r')['status'] == 'completed'

    def test_unknown_id_warns_and_starts_it(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        with (
            pytest.warns(exceptions.NotExistingRunWarning) as record,
            exp.create_run(run_id='ghost', resume=True) as run,
        ):
            assert run.id == 'ghost'
            assert not run.resumed
        message = str(record[0].message)
        assert "'ghost'" in message and "'Exp'" in message
        assert entry(exp, 'ghost')['attempts'] == 1
        assert entry(exp, 'ghost')['status'] == 'completed'

    def test_resume_with_no_run_yet_warns_and_starts_one(self) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            with exp.create_run(resume=True) as run:
                assert not run.resumed
        categories = [w.category for w in caught]
        assert categories == [exceptions.NotExistingRunWarning]
        assert RUN_ID.match(run.id)
        assert [e['run_id'] for e in registry_entries(exp)] == [run.id]


class TestLogLines:
    def test_start_stop_and_resume_lines(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        exp = Experiment(None, name='LogExp', par_dir='experiments')
        exp.trackers.subscribe(BuiltinLogger(InfoLevels.metrics))
        with exp.create_run() as run:
            pass
        with exp.create_run(resume=True):
            pass
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 4, lines
        run_pattern = re.escape(run.id)
        verbs = ['Starting', 'Stopping', 'Resuming', 'Stopping']
        for line, verb in zip(lines, verbs, strict=True):
            pattern = LOG_LINE.format(exp='LogExp', verb=verb, run=run_pattern)
            assert re.match(pattern, line), line

    def test_failed_stop_says_so(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        exp = Experiment(None, name='LogExp', par_dir='experiments')
        exp.trackers.subscribe(BuiltinLogger(InfoLevels.metrics))
        with pytest.raises(KeyError), exp.create_run():
            raise KeyError
        last = capsys.readouterr().err.splitlines()[-1]
        assert re.search(r'Stopping run: \S+ \(failed\)$', last), last


class TestSchedulerRequeue:
    def test_slurm_requeue_resumes_the_jobs_run(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        monkeypatch.setenv('SLURM_JOB_ID', '123')
        monkeypatch.setenv('SLURM_RESTART_COUNT', '0')
        with exp.create_run() as first:
            assert not first.resumed
        monkeypatch.setenv('SLURM_RESTART_COUNT', '1')
        with exp.create_run() as requeued:
            assert requeued.id == first.id
            assert requeued.resumed
            assert requeued.attempt == 2
        monkeypatch.setenv('SLURM_RESTART_COUNT', '2')
        with exp.create_run() as again:
            assert again.id == first.id
        assert entry(exp, first.id)['attempts'] == 3
        assert len(registry_entries(exp)) == 1

    def test_requeue_of_a_script_with_several_runs(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each run of the requeued script resumes its own run."""
        exp = Experiment(None, name='Exp', par_dir='experiments')
        monkeypatch.setenv('SLURM_JOB_ID', '77')

        def script() -> list[Run]:
            runs = []
            for run_id in (None, 'named', None):
                with exp.create_run(run_id=run_id) as run:
                    runs.append(run)
            return runs

        monkeypatch.setenv('SLURM_RESTART_COUNT', '0')
        first = script()
        assert len({run.id for run in first}) == 3
        monkeypatch.setenv('SLURM_RESTART_COUNT', '1')
        second = script()
        assert [run.id for run in second] == [run.id for run in first]
        assert all(run.resumed and run.attempt == 2 for run in second)
        assert len(registry_entries(exp)) == 3

    def test_other_job_starts_a_new_run(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        monkeypatch.setenv('SLURM_JOB_ID', '123')
        with exp.create_run(run_id='job123'):
            pass
        monkeypatch.setenv('SLURM_JOB_ID', '456')
        monkeypatch.setenv('SLURM_RESTART_COUNT', '0')
        with exp.create_run() as run:
            assert not run.resumed
            assert run.id != 'job123'

    def test_torchelastic_restart_resumes(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        exp = Experiment(None, name='Exp', par_dir='experiments')
        monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'abc')
        monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '0')
        with exp.create_run() as first:
            pass
        monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
        with exp.create_run() as restarted:
            assert restarted.id == first.id
            assert restarted.resumed
