"""Trainer, optimizer/schedule, step guard, EMA, checkpoints and run directories.

The data it trains on comes from ``reproscope.data``, the layer below.

``reproscope.launch.train`` is ``reproscope train`` in Python (the Trainer with the standard
instruments); this package is the layer below it and imports nothing of the instruments.
"""

from .callbacks import EVENTS, Callback, TrainerView
from .guard import StepDecision, StepGuard
from .trainer import Trainer, evaluate

__all__ = ["EVENTS", "Callback", "StepDecision", "StepGuard", "Trainer", "TrainerView", "evaluate"]
