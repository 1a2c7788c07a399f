"""Callbacks for ddm_fast's plain training loop (:mod:`ddm_fast.training`).

``Callback`` defines the hooks (all no-ops); ``EvaluateSchedulerCallback``
plots the noise scheduler (matplotlib is imported only when it draws).
"""
from .base import Callback
from .scheduler import EvaluateSchedulerCallback

__all__ = ["Callback", "EvaluateSchedulerCallback"]
