"""drytorch: reproducible, documented PyTorch experiments, laptop to cluster.

Importing the package sets up the default trackers of the mode named by
``$DRYTORCH_INIT_MODE`` (``standard`` when unset).
"""

from drytorch.core.exceptions import PreemptedExit
from drytorch.core.experimenting import Experiment, Run
from drytorch.core.tracking import (
    Tracker,
    extend_default_trackers,
    remove_all_default_trackers,
)
from drytorch.lib.checkpoints import LocalCheckpoint
from drytorch.lib.evaluations import Diagnostic, Test, Validation
from drytorch.lib.learning import LearningSchema
from drytorch.lib.loading import DataLoader
from drytorch.lib.models import Model
from drytorch.lib.objectives import Loss, Metric, MetricCollection
from drytorch.lib.training import Trainer
from drytorch.trackers.defaults import init_from_environment, init_trackers

__all__ = [
    'DataLoader',
    'Diagnostic',
    'Experiment',
    'LearningSchema',
    'LocalCheckpoint',
    'Loss',
    'Metric',
    'MetricCollection',
    'Model',
    'PreemptedExit',
    'Run',
    'Test',
    'Tracker',
    'Trainer',
    'Validation',
    'extend_default_trackers',
    'init_trackers',
    'remove_all_default_trackers',
]

__version__ = '0.1.0'

init_from_environment()
