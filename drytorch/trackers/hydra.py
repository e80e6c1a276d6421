"""Hydra's output folder of the current job, linked into the run's folder.

Hydra writes the composed configuration, the overrides and the job's log
in an output folder of its own; the link puts them next to the run's other
files, and the copy made at clean-up keeps them there if Hydra's folder is
later removed.
"""

from __future__ import annotations

import functools
import pathlib
import shutil

from typing_extensions import override

from drytorch.core import exceptions, log_events
from drytorch.trackers.base_classes import Dumper, module_available

__all__ = ['HydraLink', 'HydraNotRunningError', 'is_available']


def is_available() -> bool:
    """Whether hydra-core can be imported."""
    return module_available('hydra')


class HydraNotRunningError(exceptions.TrackerError):
    """Raised when HydraLink is used outside a Hydra job."""

    def __init__(self) -> None:
        super().__init__(
            'HydraLink needs a running Hydra job, and none is running: '
            'create it inside the function decorated with @hydra.main '
            '(and run the script through Hydra), or leave HydraLink out.'
        )


def _hydra_output_dir() -> pathlib.Path:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise HydraNotRunningError()
    output_dir = HydraConfig.get().runtime.output_dir
    if not output_dir:
        raise HydraNotRunningError()
    return pathlib.Path(output_dir)


class HydraLink(Dumper):
    """Links Hydra's output folder as ``hydra`` in the run's folder.

    Each later attempt of a resumed run (a new Hydra job) gets its own
    ``hydra_attempt<N>``.  At clean-up the link is replaced by a copy
    when ``copy_hydra``.  When the run's folder is itself inside Hydra's
    output folder there is nothing to link, and nothing is done.

    Args:
        par_dir: the folder under which each run's folder (which holds
            the link) goes; the experiment's ``par_dir`` when None.
        copy_hydra: replace the link with a copy when the run stops.
        hydra_dir: the folder to link (DRYTorch's option); Hydra's output
            folder of the running job when None.

    Raises:
        HydraNotRunningError: at construction, outside a Hydra job (when
            ``hydra_dir`` is None).
        NotADirectoryError: if ``hydra_dir`` is not a folder.

    """

    def __init__(
        self,
        par_dir: str | pathlib.Path | None = None,
        copy_hydra: bool = True,
        hydra_dir: str | pathlib.Path | None = None,
    ) -> None:
        super().__init__(par_dir)
        self._fixed_dir = hydra_dir is not None
        if hydra_dir is None:
            if not is_available():
                raise exceptions.MissingDependencyError('hydra-core', 'hydra')
            self.hydra_dir = _hydra_output_dir()
        else:
            self.hydra_dir = pathlib.Path(hydra_dir)
            if not self.hydra_dir.is_dir():
                raise NotADirectoryError(
                    f'hydra_dir {str(self.hydra_dir)!r} is not a folder; '
                    "pass Hydra's output folder, or None inside @hydra.main."
                )
        self.copy_hydra = copy_hydra
        self.link: pathlib.Path | None = None

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        super().notify(event)
        if not self._fixed_dir:
            # a multirun reuses this tracker for several jobs: ask again
            self.hydra_dir = _hydra_output_dir()
        name = (
            'hydra' if event.attempt <= 1 else f'hydra_attempt{event.attempt}'
        )
        link = self.par_dir / name
        if link.parent.resolve().is_relative_to(self.hydra_dir.resolve()):
            return  # the run's folder already is in Hydra's
        _remove(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(self.hydra_dir.resolve(), target_is_directory=True)
        self.link = link

    @override
    def clean_up(self) -> None:
        """Replace the link with a copy of Hydra's folder, if asked."""
        link, self.link = self.link, None
        if link is not None and self.copy_hydra and link.is_symlink():
            # copy under a temporary name, then swap: never half a copy
            partial = link.with_name(f'.{link.name}.copying')
            _remove(partial)
            shutil.copytree(self.hydra_dir, partial, symlinks=True)
            link.unlink()
            partial.rename(link)
        return super().clean_up()


def _remove(path: pathlib.Path) -> None:
    """Remove a link, file or folder left by an earlier run, if any."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
