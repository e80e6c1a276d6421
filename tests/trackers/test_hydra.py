"""HydraLink inside a real ``@hydra.main`` job, run as a script."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

pytest.importorskip('hydra', reason='hydra-core is not installed')

from drytorch.trackers.hydra import HydraLink, HydraNotRunningError
from tests.trackers._support import make_experiment, run_epochs

_REPO = pathlib.Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent(
    """
    import pathlib
    import sys

    import hydra
    from hydra.core.hydra_config import HydraConfig

    import drytorch
    from drytorch import Experiment
    from drytorch.core import log_events
    from drytorch.trackers.hydra import HydraLink

    PAR_DIR = pathlib.Path(sys.argv.pop(1))


    @hydra.main(version_base=None, config_path=None, config_name=None)
    def main(cfg):
        drytorch.init_trackers('none')
        output = pathlib.Path(HydraConfig.get().runtime.output_dir)
        for name, copy in [('copied', True), ('linked', False)]:
            exp = Experiment(cfg, name=name, par_dir=PAR_DIR)
            exp.trackers.subscribe(HydraLink(copy_hydra=copy))
            run(exp, output)
        print('OUTPUT', output)


    def run(exp, output):
        with exp.create_run('r'):
            exp.trackers.flush()  # the link is made on the tracker thread
            link = exp.run.dir / 'hydra'
            assert link.is_symlink(), 'linked during the run'
            assert link.resolve() == output.resolve()
            assert (link / '.hydra' / 'config.yaml').is_file()
            log_events.MetricEvent(
                model_name='m', source_name='train', epoch=1,
                metrics={'loss': 1.0},
            )


    main()
    """
)


@pytest.fixture(scope='module')
def job(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Run the job once; its experiments' folders are under the result."""
    tmp_path = tmp_path_factory.mktemp('hydra')
    script = tmp_path / 'job.py'
    script.write_text(_SCRIPT)
    outputs = tmp_path / 'outputs'
    env = dict(os.environ, PYTHONPATH=str(_REPO))
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / 'experiments'),
            f'hydra.run.dir={outputs}',
            '+lr=0.1',
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'OUTPUT {outputs}' in proc.stdout
    return tmp_path


def test_link_replaced_by_a_copy_at_clean_up(job: pathlib.Path) -> None:
    kept = job / 'experiments' / 'copied' / 'runs' / 'r' / 'hydra'
    assert kept.is_dir()
    assert not kept.is_symlink()
    config = (kept / '.hydra' / 'config.yaml').read_text()
    assert 'lr: 0.1' in config
    assert (kept / '.hydra' / 'overrides.yaml').is_file()


def test_link_kept_without_copy(job: pathlib.Path) -> None:
    link = job / 'experiments' / 'linked' / 'runs' / 'r' / 'hydra'
    assert link.is_symlink()
    assert link.resolve() == (job / 'outputs').resolve()


def test_outside_a_hydra_job_fails_at_construction() -> None:
    with pytest.raises(HydraNotRunningError, match=r'@hydra\.main'):
        HydraLink()


@pytest.fixture
def hydra_output(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """Hydra's state as a job sets it, without running one."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    output = tmp_path / 'outputs'
    (output / '.hydra').mkdir(parents=True)
    (output / '.hydra' / 'config.yaml').write_text('lr: 0.1\n')
    config = OmegaConf.create({'hydra': OmegaConf.structured(HydraConf)})
    config.hydra.runtime.output_dir = str(output)
    HydraConfig.instance().set_config(config)
    try:
        yield output
    finally:
        HydraConfig.instance().cfg = None


def test_each_attempt_keeps_its_own_copy(
    tmp_path: pathlib.Path, hydra_output: pathlib.Path
) -> None:
    exp = make_experiment(tmp_path / 'exp', HydraLink())
    run_epochs(exp, [1], preempt=True)
    (hydra_output / 'second.log').write_text('attempt 2')
    run_epochs(exp, [2], resume=True, attempt=2)
    run_dir = tmp_path / 'exp' / 't' / 'runs' / 'r'
    first, second = run_dir / 'hydra', run_dir / 'hydra_attempt2'
    for copy in (first, second):
        assert copy.is_dir()
        assert not copy.is_symlink()
        assert (copy / '.hydra' / 'config.yaml').read_text() == 'lr: 0.1\n'
    assert not (first / 'second.log').exists()
    assert (second / 'second.log').is_file()


def test_failed_run_is_copied_too(
    tmp_path: pathlib.Path, hydra_output: pathlib.Path
) -> None:
    exp = make_experiment(tmp_path / 'exp', HydraLink())
    with pytest.raises(RuntimeError), exp.create_run('r'):
        raise RuntimeError('crash')
    copy = tmp_path / 'exp' / 't' / 'runs' / 'r' / 'hydra'
    assert copy.is_dir()
    assert not copy.is_symlink()


def test_jobs_sharing_a_par_dir_keep_their_copies(
    tmp_path: pathlib.Path, hydra_output: pathlib.Path
) -> None:
    shared = tmp_path / 'shared'
    link = HydraLink(par_dir=shared)
    config = hydra_output / '.hydra' / 'config.yaml'
    for name, lr in (('t', '0.1'), ('u', '0.2')):
        config.write_text(f'lr: {lr}\n')  # the next job's configuration
        exp = make_experiment(tmp_path / 'exp', link, name=name)
        run_epochs(exp, [1], run_id='r')
        run_epochs(exp, [1], run_id='s')
    for name, lr in (('t', '0.1'), ('u', '0.2')):
        for run_id in ('r', 's'):
            copy = shared / name / 'runs' / run_id / 'hydra'
            assert copy.is_dir()
            assert not copy.is_symlink()
            assert (copy / '.hydra' / 'config.yaml').read_text() == (
                f'lr: {lr}\n'
            )
    assert not (shared / 'hydra').exists()


def test_an_explicit_hydra_dir_needs_no_running_job(
    tmp_path: pathlib.Path,
) -> None:
    """DRYTorch's ``hydra_dir=``: any folder, linked then copied."""
    folder = tmp_path / 'outputs'
    (folder / '.hydra').mkdir(parents=True)
    (folder / '.hydra' / 'config.yaml').write_text('lr: 0.2\n')
    exp = make_experiment(tmp_path / 'exp', HydraLink(hydra_dir=folder))
    run_epochs(exp, [1])
    copy = tmp_path / 'exp' / 't' / 'runs' / 'r' / 'hydra'
    assert copy.is_dir() and not copy.is_symlink()
    assert (copy / '.hydra' / 'config.yaml').read_text() == 'lr: 0.2\n'
    with pytest.raises(NotADirectoryError, match='hydra_dir'):
        HydraLink(hydra_dir=tmp_path / 'missing')
