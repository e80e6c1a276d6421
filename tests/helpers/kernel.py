"""Test doubles and isolation for code that runs drytorch experiments.

- :class:`RecordingTracker` keeps every event it receives and counts its
  clean-ups; :class:`FailingTracker` raises on the events it is told to.
- :func:`isolated_kernel` gives a test empty default trackers, no launcher
  variables, no run left active afterwards and the ``drytorch`` logger as
  it found it.  Wrap it in a fixture::

      @pytest.fixture(autouse=True)
      def _kernel(monkeypatch):
          with isolated_kernel(monkeypatch):
              yield
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator

import pytest
from typing_extensions import override

from drytorch.core import log_events, tracking
from drytorch.core.experimenting import Experiment
from drytorch.distributed.preemption import watcher
from tests.helpers.multiprocess import LAUNCHER_PREFIXES, LAUNCHER_VARIABLES

__all__ = ['FailingTracker', 'RecordingTracker', 'isolated_kernel']


class RecordingTracker(tracking.Tracker):
    """Records every event it is notified of, in order.

    Immediate, so that a test of what the library publishes sees each event
    the moment it is published; the background worker has tests of its own
    (``tests/core/test_background_trackers.py``), where subclasses set
    ``immediate = False``.
    """

    immediate = True

    def __init__(self) -> None:
        super().__init__()
        self.events: list[log_events.Event] = []
        self.clean_ups = 0

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        self.events.append(event)
        return super().notify(event)

    @override
    def clean_up(self) -> None:
        self.clean_ups += 1
        return super().clean_up()

    def of_type(
        self, event_type: type[log_events.Event]
    ) -> list[log_events.Event]:
        """The recorded events of ``event_type``."""
        return [e for e in self.events if isinstance(e, event_type)]

    @property
    def names(self) -> list[str]:
        """The class names of the recorded events, in order."""
        return [e.__class__.__name__ for e in self.events]


class FailingTracker(RecordingTracker):
    """Records events, and raises ``error`` on those of ``on``.

    On the background worker, as a user's tracker would be.
    """

    immediate = False

    def __init__(
        self,
        on: type[log_events.Event] = log_events.Event,
        error: BaseException | None = None,
    ) -> None:
        super().__init__()
        self.on = on
        self.error = error or RuntimeError('tracker backend is down')

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        super().notify(event)
        if isinstance(event, self.on):
            raise self.error


@contextlib.contextmanager
def isolated_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No default tracker, no launcher variable, nothing left running.

    Nor a preemption flag or signal handler left by a run.
    """
    for name in list(os.environ):
        if name in LAUNCHER_VARIABLES or name.startswith(LAUNCHER_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.delenv('DRYTORCH_INIT_MODE', raising=False)
    logger = logging.getLogger('drytorch')
    saved_logger = (logger.level, list(logger.handlers), logger.propagate)
    saved_defaults = dict(tracking.DEFAULT_TRACKERS)
    tracking.remove_all_default_trackers()
    try:
        yield
    finally:
        run = Experiment.current_run()
        if run is not None:
            run.stop('failed')
        Experiment._current_run_obj = None
        # runs leave the signal handlers installed (and a late signal
        # pending) on purpose; a test must not pass them to the next
        watcher.reset()
        watcher.disarm()
        tracking.EventDispatcher._active = None
        log_events.Event.set_publisher(None)
        tracking.DEFAULT_TRACKERS.clear()
        tracking.DEFAULT_TRACKERS.update(saved_defaults)
        logger.setLevel(saved_logger[0])
        logger.handlers[:] = saved_logger[1]
        logger.propagate = saved_logger[2]


def kernel_in_tmp_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> Iterator[None]:
    """Each test starts in its own folder with no default tracker.

    A plain generator, registered by each test folder's conftest as its
    autouse fixture: ``_kernel = pytest.fixture(autouse=True)(...)``.
    """
    monkeypatch.chdir(tmp_path)
    with isolated_kernel(monkeypatch):
        yield


@pytest.fixture
def recorder() -> RecordingTracker:
    """A fresh recording tracker."""
    return RecordingTracker()
