"""SIGKILLs at random moments: no corrupt load, every restart from the last.

A killed process writes nothing more; the next attempt must load the
newest checkpoint that was completely written, never a half-written one,
and the run, once it completes, must equal the uninterrupted one.  The
default run kills a dozen attempts; ``-m faults`` kills 200.  The counts
are printed (``-s``) and asserted; ``benchmarks/kill_storm.py`` reports
them for any number of kills.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from tests.faults._harness import FaultZygote
from tests.faults._storm import StormReport, storm


def check(report: StormReport, kills: int) -> None:
    print(json.dumps(report.as_dict()))
    assert report.kills == kills
    assert report.corrupt_loads == 0, report
    assert not report.wrong_restarts, report
    assert not report.differing_runs, report
    # kills that all came before the first load would check nothing; a
    # kill lands before it about a third of the time
    assert report.restarts_checked >= kills // 10, report
    assert report.completed_runs >= 1, report


def test_a_dozen_kills(
    fault_zygote: FaultZygote, tmp_path: pathlib.Path
) -> None:
    check(storm(fault_zygote, tmp_path, kills=12, seed=1), 12)


@pytest.mark.faults
def test_two_hundred_kills(
    fault_zygote: FaultZygote, tmp_path: pathlib.Path
) -> None:
    check(storm(fault_zygote, tmp_path, kills=200, seed=2), 200)
