"""Optional backends: imported only when used, clear errors when absent."""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from drytorch.core import exceptions

_REPO = pathlib.Path(__file__).resolve().parents[2]

# module, class, the backend's import name, the extra that installs it
CASES = [
    ('sqlalchemy', 'SQLConnection', 'sqlalchemy', 'sql'),
    ('tensorboard', 'TensorBoard', 'tensorboard', 'tensorboard'),
    ('wandb', 'Wandb', 'wandb', 'wandb'),
    ('hydra', 'HydraLink', 'hydra', 'hydra'),
    ('matplotlib', 'MatPlotter', 'matplotlib', 'plots'),
    ('plotly', 'PlotlyPlotter', 'plotly', 'plots'),
    ('visdom', 'VisdomPlotter', 'visdom', 'visdom'),
]


@pytest.mark.parametrize(
    ('module', 'cls', 'backend', 'extra'), CASES, ids=[c[0] for c in CASES]
)
def test_missing_backend_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    cls: str,
    backend: str,
    extra: str,
) -> None:
    tracker_module = importlib.import_module(f'drytorch.trackers.{module}')
    monkeypatch.setitem(sys.modules, backend, None)  # import fails
    assert tracker_module.is_available() is False
    with pytest.raises(
        exceptions.MissingDependencyError,
        match=rf"pip install 'drytorch\[{extra}\]'",
    ):
        getattr(tracker_module, cls)()


def test_importing_trackers_imports_no_backend() -> None:
    modules = ', '.join(f'drytorch.trackers.{c[0]}' for c in CASES)
    backends = [c[2] for c in CASES]
    code = (
        f'import sys, {modules}, drytorch.trackers.plotting\n'
        f'loaded = [b for b in {backends!r} if b in sys.modules]\n'
        'assert not loaded, loaded\n'
    )
    proc = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(_REPO)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
