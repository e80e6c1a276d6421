"""Event files across the attempts of a run, for the TensorBoard tracker.

TensorBoard reads the event files of a folder (one of its "runs") in name
order and has a single way to take back what was written: a restart marker
at a step hides every value of every tag of that folder from the step on.
These helpers make a resumed attempt's file come after the earlier ones,
write such markers, and (:class:`Seam`) rewrite what a marker hid but is
still valid.
"""

from __future__ import annotations

import pathlib
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ['Seam', 'has_event_files', 'purge', 'wait_for_a_later_second']

_PATTERN = 'events.out.tfevents.*'


class Seam:
    """Joins a resumed attempt to the scalars of the earlier ones.

    A source's values are stale from the epoch at which it logs again in
    this attempt, but TensorBoard's only purge, a restart marker at a step,
    hides every tag's values from that step on.  So the valid values are
    read back first, and when a source logs again below values it already
    has, the purge is followed by writing again every value that is still
    valid past that step.  What TensorBoard shows is then right after every
    event, also if the process is killed before it can clean up.
    """

    def __init__(self, log_dir: pathlib.Path) -> None:
        from tensorboard.backend.event_processing import event_accumulator

        reader = event_accumulator.EventAccumulator(
            str(log_dir), size_guidance={event_accumulator.SCALARS: 0}
        )
        reader.Reload()
        self.valid: dict[str, dict[int, float]] = {
            tag: {int(s.step): s.value for s in reader.Scalars(tag)}
            for tag in reader.Tags()[event_accumulator.SCALARS]
        }
        self.started: set[str] = set()

    def restart(self, writer: SummaryWriter, prefix: str, epoch: int) -> bool:
        """A source logs again from ``epoch``; True if that purged."""
        self.started.add(prefix)
        stale = False
        for tag, points in self.valid.items():
            if tag.startswith(prefix):
                for step in [s for s in points if s >= epoch]:
                    del points[step]
                    stale = True
        if not stale:  # an exact resume: nothing to hide
            return False
        purge(writer, epoch)
        for tag, points in self.valid.items():
            for step, value in sorted(points.items()):
                if step >= epoch:
                    writer.add_scalar(tag, value, step)
        return True

    def record(self, tag: str, step: int, value: float) -> None:
        """A value of this attempt, to write again after a later purge."""
        self.valid.setdefault(tag, {})[step] = value


def has_event_files(log_dir: pathlib.Path) -> bool:
    """Whether an earlier writer left event files in the folder."""
    return next(log_dir.glob(_PATTERN), None) is not None


def wait_for_a_later_second(log_dir: pathlib.Path) -> None:
    """Make this attempt's event file sort after the earlier ones' files.

    TensorBoard reads a folder's files in name order, and a name starts
    with the second the file was created; within one second the order is
    left to the process id and a counter.  A resume in the same second as
    the previous attempt (the same process, in practice) waits for the next
    second.
    """
    latest = 0
    for path in log_dir.glob(_PATTERN):
        created = path.name.split('.')[3]
        if created.isdigit():
            latest = max(latest, int(created))
    while int(time.time()) <= latest:
        time.sleep(0.02)


def purge(writer: SummaryWriter, step: int) -> None:
    """Hide every scalar of the writer's folder from ``step`` on.

    The marker only hides what was read before it: the values the writer
    adds after it are shown.
    """
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    marker = Event(step=step, session_log=SessionLog(status=SessionLog.START))
    file_writer: Any = writer.file_writer
    file_writer.add_event(marker)
