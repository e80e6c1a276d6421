"""One CSV file of metrics per model and source; also a metric loader."""

from __future__ import annotations

import csv
import functools
import io
import pathlib
import warnings

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.core.registry import atomic_write_text
from drytorch.trackers.base_classes import Dumper, MetricHistory, MetricLoader

__all__ = ['CSVDumper']

_FIXED = ['model', 'source', 'epoch']


class CSVDumper(Dumper, MetricLoader):
    """Writes ``csv_metrics/<model>/<source>.csv`` in the run's folder.

    The run's folder is ``<par_dir>/<experiment>/runs/<run id>`` (see
    :class:`Dumper`), so experiments and runs that share a ``par_dir``
    never touch each other's files.  Each file holds the history of one
    run: the first row an attempt writes for epoch ``e`` drops the rows at
    ``e`` and after, left by an earlier attempt of the same run that went
    further than the checkpoint it resumed from.  A resumed run therefore
    never shows an epoch twice.

    As a metric loader it reads the files of the running run (of the last
    one, after it stopped): a resumed run finds its earlier attempts'.

    Args:
        par_dir: the folder under which each run's folder goes; the
            experiment's ``par_dir`` when None.
        dialect: the CSV format (DRYTorch's argument): a ``csv.Dialect``
            instance or subclass, or a registered name; Excel's by default.

    """

    def __init__(
        self,
        par_dir: str | pathlib.Path | None = None,
        dialect: csv.Dialect | type[csv.Dialect] | str = 'excel',
    ) -> None:
        super().__init__(par_dir)
        # checked now, not at the first epoch
        csv.writer(io.StringIO(), dialect=dialect)
        self.dialect = dialect
        # The metric columns of each file written this session, in order.
        self._columns: dict[pathlib.Path, list[str]] = {}

    def file_path(self, model_name: str, source_name: str) -> pathlib.Path:
        """The CSV file of a model and source."""
        return self.par_dir / 'csv_metrics' / model_name / f'{source_name}.csv'

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        path = self.file_path(event.model_name, event.source_name)
        names = list(event.metrics)
        if path not in self._columns:
            self._columns[path] = self._prepare(path, names, event.epoch)
        columns = self._columns[path]
        if sorted(columns) != sorted(names):
            raise exceptions.TrackerError(
                f'{path} has the metric columns {columns}, but this '
                f'MetricEvent of epoch {event.epoch} has {names}; a source '
                'must report the same metrics at every epoch.'
            )
        row = [event.model_name, event.source_name, str(event.epoch)]
        row += [repr(float(event.metrics[name])) for name in columns]
        with path.open('a', newline='', encoding='utf-8') as stream:
            csv.writer(stream, dialect=self.dialect).writerow(row)
        return super().notify(event)

    def _prepare(
        self, path: pathlib.Path, names: list[str], epoch: int
    ) -> list[str]:
        """Make ``path`` hold no row from ``epoch`` on; return its columns.

        An existing file with the same metrics keeps its column order, so
        that a resumed run appends rows that line up with the old ones.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        header = _FIXED + names
        rows = self._read_rows(path) if path.exists() else None
        if (
            rows
            and rows[0][: len(_FIXED)] == _FIXED
            and sorted(rows[0]) == sorted(header)
        ):
            header = rows[0]
        if rows is not None and rows and rows[0] != header:
            aside = path.with_suffix('.previous.csv')
            path.replace(aside)
            warnings.warn(
                exceptions.DryTorchWarning(
                    f'{path} had other columns ({rows[0]}); it was moved to '
                    f'{aside} and a new file started.'
                ),
                stacklevel=4,
            )
            rows = None
        kept = [header]
        if rows:
            kept += [r for r in rows[1:] if r and int(r[2]) < epoch]
        buffer = io.StringIO()
        csv.writer(buffer, dialect=self.dialect).writerows(kept)
        atomic_write_text(path, buffer.getvalue())
        return header[len(_FIXED) :]

    def _read_rows(self, path: pathlib.Path) -> list[list[str]]:
        with path.open(newline='', encoding='utf-8') as stream:
            return list(csv.reader(stream, dialect=self.dialect))

    @override
    def clean_up(self) -> None:
        self._columns.clear()
        return super().clean_up()

    @override
    def load_metrics(
        self, model_name: str, max_epoch: int = -1
    ) -> MetricHistory:
        folder = self.par_dir / 'csv_metrics' / model_name
        history: MetricHistory = {}
        if not folder.exists():
            return history
        for path in sorted(folder.glob('*.csv')):
            if path.name.endswith('.previous.csv'):
                continue
            found = self._history(path, max_epoch)
            if found is not None:
                history[path.stem] = found
        return history

    def read_csv(
        self, model_name: str, source: str, max_epoch: int = -1
    ) -> tuple[list[int], dict[str, list[float]]]:
        """The epochs and metric values of one model and source (DRYTorch's).

        Reads the current run's file (the last run's once it stopped), up
        to ``max_epoch`` (all when -1).

        Raises:
            FileNotFoundError: if that source logged nothing in this run.

        """
        path = self.file_path(model_name, source)
        found = self._history(path, max_epoch) if path.exists() else None
        if found is None:
            logged = sorted(self.load_metrics(model_name))
            raise FileNotFoundError(
                f'No metrics of {model_name!r} from {source!r} in {path}; '
                f'the sources logged are {logged}.'
            )
        return found

    def _history(
        self, path: pathlib.Path, max_epoch: int
    ) -> tuple[list[int], dict[str, list[float]]] | None:
        rows = self._read_rows(path)
        if not rows:
            return None
        names = rows[0][len(_FIXED) :]
        epochs: list[int] = []
        values: dict[str, list[float]] = {name: [] for name in names}
        for row in rows[1:]:
            if not row:
                continue
            epoch = int(row[2])
            if 0 <= max_epoch < epoch:
                continue
            epochs.append(epoch)
            for name, value in zip(names, row[3:], strict=True):
                values[name].append(float(value))
        return epochs, values
