"""DRYTorch's helpers that set up the ``drytorch`` logger's output."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from drytorch.trackers import logging as dt_logging
from drytorch.trackers.logging import InfoLevels

logger = logging.getLogger('drytorch')


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    """Leave the drytorch and root loggers as they were."""
    handlers, propagate, level = (
        logger.handlers[:],
        logger.propagate,
        logger.level,
    )
    root = logging.getLogger()
    root_handlers = root.handlers[:]
    dt_logging.set_verbosity(InfoLevels.internal)
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level
    root.handlers[:] = root_handlers


def test_default_handler_writes_dated_lines_to_the_stream() -> None:
    stream = io.StringIO()
    dt_logging.enable_default_handler(stream)
    logger.log(InfoLevels.experiment, 'hello')
    assert re.fullmatch(
        r'\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] - hello\n', stream.getvalue()
    )
    assert not logger.propagate


def test_progress_formatter_shortens_epoch_lines() -> None:
    stream = io.StringIO()
    dt_logging.enable_default_handler(stream)
    dt_logging.set_formatter('progress')
    logger.log(InfoLevels.epoch, 'Epoch 3/10')
    logger.log(InfoLevels.training, 'done')
    first, second = stream.getvalue().splitlines()
    assert first == 'Epoch 3/10'
    assert second.endswith('] - done')
    dt_logging.set_formatter('drytorch')
    logger.log(InfoLevels.epoch, 'Epoch 4/10')
    assert stream.getvalue().splitlines()[-1].endswith('] - Epoch 4/10')
    with pytest.raises(ValueError, match="'drytorch' or 'progress'"):
        dt_logging.set_formatter('fancy')


def test_disable_default_handler_silences_the_library() -> None:
    stream = io.StringIO()
    dt_logging.enable_default_handler(stream)
    dt_logging.disable_default_handler()
    logger.log(InfoLevels.test, 'quiet')
    assert stream.getvalue() == ''


def test_propagation_deduplicates_a_shared_stream() -> None:
    stream, other = io.StringIO(), io.StringIO()
    dt_logging.enable_default_handler(stream)
    root = logging.getLogger()
    shared, separate = (
        logging.StreamHandler(stream),
        logging.StreamHandler(other),
    )
    root.addHandler(shared)
    root.addHandler(separate)
    dt_logging.enable_propagation()
    logger.log(InfoLevels.test, 'once')
    assert stream.getvalue().count('once') == 1  # not again through root
    assert other.getvalue().count('once') == 1  # a file of Hydra's, say
    logging.getLogger('elsewhere').warning('user')
    assert 'user' in stream.getvalue()  # only the library's are filtered
    dt_logging.disable_propagation()
    assert not logger.propagate
    assert not any(
        isinstance(f, dt_logging.DryTorchFilter) for f in shared.filters
    )
    logger.log(InfoLevels.test, 'local')
    assert 'local' not in other.getvalue()
