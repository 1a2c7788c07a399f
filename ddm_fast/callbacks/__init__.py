"""Callbacks for ddm_fast's plain training loop (:mod:`ddm_fast.training`)
and, when Lightning is installed, for a Lightning ``Trainer`` (as the
toolbox's were).

``Callback`` defines the hooks (all no-ops); ``EvaluateSchedulerCallback``
plots the noise scheduler (matplotlib is imported only when it draws).
"""
from .base import Callback, is_lightning_trainer
from .scheduler import EvaluateSchedulerCallback

__all__ = ["Callback", "EvaluateSchedulerCallback", "is_lightning_trainer"]
