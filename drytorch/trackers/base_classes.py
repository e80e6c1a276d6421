"""What several trackers share: run-folder dumpers and metric loaders."""

from __future__ import annotations

import abc
import dataclasses
import functools
import importlib
import pathlib
from collections.abc import Mapping, Sequence, Set
from typing import Any, ClassVar

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.core.folders import check_folder
from drytorch.core.tracking import Tracker

__all__ = [
    'module_available',
    'Dumper',
    'MetricHistory',
    'MetricLoader',
    'SourceHistory',
    'config_dict',
]

SourceHistory = tuple[list[int], dict[str, list[float]]]
"""Epochs of a source, and each metric's values at those epochs."""

MetricHistory = dict[str, SourceHistory]
"""Per source name, its history."""


class MetricLoader(abc.ABC):
    """Something that can read back the metrics of earlier sessions."""

    @abc.abstractmethod
    def load_metrics(
        self, model_name: str, max_epoch: int = -1
    ) -> MetricHistory:
        """Per source, the epochs and metric values stored for a model.

        Args:
            model_name: the model whose metrics to load.
            max_epoch: the last epoch to include; -1 for all.

        """


class Dumper(Tracker):
    """A tracker that writes files under a folder of its run.

    Its folder is the run's own one: ``<experiment par_dir>/<experiment>/
    runs/<run id>``.  With ``par_dir`` given, the same layout is built
    under it instead: ``<par_dir>/<experiment>/runs/<run id>``.  One dumper
    may serve many experiments and runs (``extend_default_trackers``), and
    two runs writing in one folder would overwrite or mix each other's
    files; so every run keeps its own folder, and a resumed run, which
    keeps its id, finds its files again.

    Subclasses write under the :attr:`par_dir` property, never under the
    folder they were given (``_par_dir``): the layout is decided here, once.
    A store that keeps runs apart by itself (a database with tables of
    experiments and runs) sets :attr:`run_folders` to False and gets the
    given folder as it is.

    Args:
        par_dir: the folder under which the runs' folders go; the
            experiment's ``par_dir`` when None.

    Raises:
        NotAFolderError: if ``par_dir``, or a folder above it, is a file
            (at the start of each run too, for the run's folder).

    """

    run_folders: ClassVar[bool] = True
    """Whether a given ``par_dir`` gets one folder per run under it."""

    def __init__(self, par_dir: str | pathlib.Path | None = None) -> None:
        super().__init__()
        self._par_dir = pathlib.Path(par_dir) if par_dir is not None else None
        if self._par_dir is not None:
            # now, rather than at the first write after hours of training
            check_folder(self.__class__.__name__, self._par_dir)
        self._run_dir: pathlib.Path | None = None
        self.exp_name = ''
        self.run_id = ''
        self.resumed = False

    @property
    def par_dir(self) -> pathlib.Path:
        """The folder of the run this dumper writes for.

        After the run stops it stays that run's folder, so that its files
        can still be read (``CSVDumper.load_metrics``), until the next run
        starts.  Before any run there is none.
        """
        if self._run_dir is None:
            raise exceptions.NoActiveExperimentError(
                f'{self.__class__.__name__}.par_dir'
            )
        return self._run_dir

    def _run_dir_of(
        self, event: log_events.StartExperimentEvent
    ) -> pathlib.Path:
        """The folder of the run that ``event`` starts, for this dumper.

        The run's own layout (``event.run_dir``), moved under this
        dumper's ``par_dir`` when it has one: the layout is written once,
        in the event.
        """
        if self._par_dir is None:
            return event.run_dir
        if not self.run_folders:
            return self._par_dir
        return self._par_dir / event.run_dir.relative_to(event.par_dir)

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        # before any subclass writes: a file in the way fails this tracker
        # alone, with its path, and nothing is written anywhere
        self._run_dir = None  # not the last run's, if this check fails
        self._run_dir = check_folder(
            self.__class__.__name__, self._run_dir_of(event)
        )
        self.exp_name = event.exp_name
        self.run_id = event.run_id
        self.resumed = event.resumed
        return super().notify(event)


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``name=value`` pairs with 4 significant decimals, for log lines."""
    return '  '.join(f'{name}={value:.4g}' for name, value in metrics.items())


_MAX_CONFIG_DEPTH = 32


def config_dict(config: Any) -> dict[str, Any]:
    """The whole configuration as nested dicts, lists and scalars.

    Unlike the readable form of metadata, nothing is cut short: a database
    or a W&B run is where the complete configuration must be found.
    Dataclasses and mappings (OmegaConf's included) become dicts; other
    objects their ``repr``.  Anything but a mapping is put under
    ``'config'``.
    """
    plain = _plain(config, 0)
    if isinstance(plain, dict):
        return plain
    return {} if plain is None else {'config': plain}


def _plain(obj: Any, depth: int) -> Any:
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if depth >= _MAX_CONFIG_DEPTH:  # a cycle, most likely
        return repr(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, Sequence | Set) and not isinstance(obj, bytes):
        return [_plain(v, depth + 1) for v in obj]
    item = getattr(obj, 'item', None)  # numpy and torch scalars
    if callable(item) and getattr(obj, 'ndim', None) == 0:
        return item()
    return repr(obj) if not isinstance(obj, pathlib.PurePath) else str(obj)


def module_available(name: str) -> bool:
    """Whether the optional package ``name`` imports.

    Each tracker module keeps its own ``is_available`` (one flag per
    optional dependency) built on this; detection never raises.
    """
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
