"""One loop, one run directory, one contract for every method (see :mod:`robocl.run.loop`)."""

from robocl.run.layout import RunDir
from robocl.run.loop import (
    Algorithm,
    DataSource,
    LoopConfig,
    NonFiniteError,
    TrainingDiverged,
    TrainingInterrupted,
    fit,
    guarded_step,
    to_torch,
)

__all__ = [
    "Algorithm",
    "DataSource",
    "LoopConfig",
    "NonFiniteError",
    "RunDir",
    "TrainingDiverged",
    "TrainingInterrupted",
    "fit",
    "guarded_step",
    "to_torch",
]
