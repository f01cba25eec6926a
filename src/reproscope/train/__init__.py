"""Trainer, data path, optimizer/schedule, checkpoints and run directories."""

from .trainer import EVENTS, Trainer, evaluate
from .run import train

__all__ = ["EVENTS", "Trainer", "evaluate", "train"]
