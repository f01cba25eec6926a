"""Trainer, data path, optimizer/schedule, checkpoints and run directories.

``reproscope.launch.train`` is ``reproscope train`` in Python (the Trainer with the standard
instruments); this package is the layer below it and imports nothing of the instruments.
"""

from .callbacks import EVENTS, Callback
from .guard import StepDecision, StepGuard
from .trainer import Trainer, evaluate

__all__ = ["EVENTS", "Callback", "StepDecision", "StepGuard", "Trainer", "evaluate"]
