"""Fixtures of the fault matrix: the zygote, the reference runs, a summary.

The full product is marked ``faults`` and runs only when ``-m`` names that
marker (``python -m pytest -q -m faults tests/faults``); the default
command runs the pairwise subset, which holds every value of every axis,
so that it still runs every kind of test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults._harness import FaultZygote
from tests.faults._references import OUTCOMES, References

MARKER = 'faults'  # registered in pyproject.toml


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Leave out the ``faults`` tests unless ``-m`` asks for them.

    This hook sees every item of the session: only those marked here go.
    """
    if MARKER in (config.option.markexpr or ''):
        return
    chosen = [i for i in items if i.get_closest_marker(MARKER) is None]
    if len(chosen) < len(items):
        config.hook.pytest_deselected(
            items=[i for i in items if i.get_closest_marker(MARKER)]
        )
        items[:] = chosen


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The matrix's count: scenarios run, and those that differ."""
    if not OUTCOMES:
        return
    failing = {k: v for k, v in OUTCOMES.items() if v}
    terminalreporter.section('fault matrix')
    terminalreporter.write_line(
        f'{len(OUTCOMES)} scenarios, {len(failing)} with differences'
    )
    for scenario, problems in failing.items():
        terminalreporter.write_line(f'{scenario}: {problems[0]}')
        for problem in problems[1:]:
            terminalreporter.write_line(f'    {problem}')


@pytest.fixture(scope='session')
def fault_zygote() -> Iterator[FaultZygote]:
    for module in ('sqlalchemy', 'tensorboard', 'wandb'):
        # the reference training logs to every tracker
        pytest.importorskip(
            module, reason=f"{module} is missing: pip install -e '.[all]'"
        )
    parent = FaultZygote()
    try:
        yield parent
    finally:
        parent.close()


@pytest.fixture(scope='session')
def references(
    fault_zygote: FaultZygote, tmp_path_factory: pytest.TempPathFactory
) -> References:
    return References(fault_zygote, tmp_path_factory.mktemp('references'))
