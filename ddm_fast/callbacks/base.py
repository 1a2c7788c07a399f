"""The hooks a plain training loop calls (ddm_fast has no Lightning).

:class:`ddm_fast.training.Trainer` calls, for every callback it was given,

- ``on_train_start(trainer)`` before the first step,
- ``on_train_batch_end(trainer, step, output)`` after each optimisation step
  (``step`` counts completed steps, ``output`` is the step's
  :class:`~ddm_fast.loss.DiffusionLossOutput`),
- ``on_validation_end(trainer, step, metrics)`` after each validation
  (``metrics`` a dict of floats),
- ``on_train_end(trainer)`` when training stops.

The trainer exposes ``trainer.scheduler`` (the training noise scheduler),
``trainer.out_dir`` (a path or None) and ``trainer.step``. Every hook is a
no-op here; subclasses override the ones they need.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["Callback"]


class Callback:
    """Base class of the training-loop callbacks; all hooks do nothing."""

    def on_train_start(self, trainer: Any) -> None:
        """Called once before the first training step."""

    def on_train_batch_end(self, trainer: Any, step: int, output: Any) -> None:
        """Called after every training step."""

    def on_validation_end(self, trainer: Any, step: int,
                          metrics: Mapping[str, float]) -> None:
        """Called after every validation."""

    def on_train_end(self, trainer: Any) -> None:
        """Called once when training stops."""
