"""The default trackers of each initialisation mode."""

from __future__ import annotations

import os
import warnings
from typing import Literal, get_args

from drytorch.core import exceptions, tracking
from drytorch.trackers import logging as builtin_logging
from drytorch.trackers.logging import BuiltinLogger, InfoLevels

__all__ = ['INIT_MODE_VARIABLE', 'InitMode', 'init_trackers']

InitMode = Literal['standard', 'hydra', 'minimal', 'none']
INIT_MODE_VARIABLE = 'DRYTORCH_INIT_MODE'


def _optional(kind: str, extra: str) -> None:
    warnings.warn(
        exceptions.FailedOptionalImportWarning(
            f'{kind} is not installed, so the default trackers go without '
            f"it; install it with `pip install 'drytorch[{extra}]'`."
        ),
        stacklevel=3,
    )


def init_trackers(mode: InitMode = 'standard') -> None:
    """Replace the default trackers with those of ``mode``.

    Modes:
        standard: log to stderr; a tqdm progress bar when tqdm is installed
            (epoch headers then go to the bar, not the log); YAML metadata.
        hydra: log to stdout and pass records on to the root logger, where
            Hydra's file handler collects them; YAML metadata; no bar.
        minimal: only training and test outcomes are logged; no metadata.
        none: no default tracker.
    """
    if mode not in get_args(InitMode):
        valid = ', '.join(repr(m) for m in get_args(InitMode))
        raise ValueError(
            f'Unknown drytorch init mode {mode!r}; valid modes are {valid} '
            f'(set by init_trackers(mode) or ${INIT_MODE_VARIABLE}).'
        )
    tracking.remove_all_default_trackers()
    if mode == 'none':
        builtin_logging.logger.setLevel(InfoLevels.test + 1)
        return
    trackers: list[tracking.Tracker] = []
    if mode == 'minimal':
        trackers.append(BuiltinLogger(InfoLevels.training))
    elif mode == 'hydra':
        trackers.append(
            BuiltinLogger(InfoLevels.epoch, to_stdout=True, propagate=True)
        )
    else:
        from drytorch.trackers import tqdm as tqdm_tracker

        if tqdm_tracker.is_available():
            trackers.append(BuiltinLogger(InfoLevels.metrics))
            # an epoch bar over batch bars that leave no trace
            trackers.append(
                tqdm_tracker.TqdmLogger(leave=False, enable_training_bar=True)
            )
        else:
            _optional('tqdm', 'recommended')
            trackers.append(BuiltinLogger(InfoLevels.epoch))
    if mode in ('standard', 'hydra'):
        from drytorch.trackers import yaml as yaml_tracker

        if yaml_tracker.is_available():
            trackers.append(yaml_tracker.YamlDumper())
        else:
            _optional('PyYAML', 'recommended')
    tracking.extend_default_trackers(trackers)


def init_from_environment() -> None:
    """Initialise the default trackers from ``$DRYTORCH_INIT_MODE``."""
    mode = os.environ.get(INIT_MODE_VARIABLE, 'standard') or 'standard'
    init_trackers(mode)  # type: ignore[arg-type]
