"""Callback base class for both ddm_fast's plain training loop and Lightning.

Plain loop. :class:`ddm_fast.training.Trainer` calls, for every callback it
was given,

- ``on_train_start(trainer)`` before the first step,
- ``on_train_batch_end(trainer, step, output)`` after each optimisation step
  (``step`` counts completed steps, ``output`` is the step's
  :class:`~ddm_fast.loss.DiffusionLossOutput`),
- ``on_validation_end(trainer, step, metrics)`` after each validation
  (``metrics`` a dict of floats),
- ``on_train_end(trainer)`` when training stops.

The trainer exposes ``trainer.scheduler`` (the training noise scheduler),
``trainer.out_dir`` (a path or None) and ``trainer.step``.

Lightning. ddm_dynamical's callbacks were Lightning callbacks, and its users
pass them to ``lightning.Trainer(callbacks=[...])``. When ``lightning`` (or,
failing that, ``pytorch_lightning``) is installed, :class:`Callback` is
therefore also a subclass of that package's ``Callback``: Lightning then
calls the same hook names with its own arguments,
``hook(trainer, pl_module, ...)``. The two callers are told apart by the
trainer (:func:`is_lightning_trainer`); the hooks here accept both argument
lists and do nothing, and a subclass that serves both overrides a hook with
``(self, trainer, *args)`` and dispatches. Without either package installed
everything imports and the plain hooks work as before.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Tuple

__all__ = ["Callback", "LIGHTNING_CALLBACK_BASES", "is_lightning_trainer"]


def _lightning_package() -> Any:
    """``lightning.pytorch`` or ``pytorch_lightning`` (in that order of
    preference, the toolbox imported the first), or None when neither is
    installed. Looked up with find_spec first so that a missing package costs
    no failed import."""
    for name, parent in (("lightning.pytorch", "lightning"),
                         ("pytorch_lightning", "pytorch_lightning")):
        if importlib.util.find_spec(parent) is None:
            continue
        try:
            return importlib.import_module(name)
        except ImportError:        # installed but broken: try the next one
            continue
    return None


_LIGHTNING = _lightning_package()

#: The Lightning base classes of :class:`Callback` (empty without Lightning).
LIGHTNING_CALLBACK_BASES: Tuple[type, ...] = () if _LIGHTNING is None else \
    (_LIGHTNING.Callback,)
_LIGHTNING_TRAINERS: Tuple[type, ...] = () if _LIGHTNING is None else \
    (_LIGHTNING.Trainer,)


def is_lightning_trainer(trainer: Any) -> bool:
    """Whether ``trainer`` is a Lightning ``Trainer`` (so the hook was called
    by Lightning, with ``pl_module`` as its second argument)."""
    return bool(_LIGHTNING_TRAINERS) and isinstance(trainer,
                                                    _LIGHTNING_TRAINERS)


class Callback(*LIGHTNING_CALLBACK_BASES):
    """Base class of ddm_fast's callbacks; every hook does nothing.

    Each hook takes the plain loop's arguments or Lightning's (see the
    module docstring); the remaining Lightning hooks (``setup``,
    ``state_dict``, ...) are inherited from Lightning's ``Callback``.
    """

    def on_train_start(self, trainer: Any, *args: Any) -> None:
        """Plain loop: ``(trainer)``; Lightning: ``(trainer, pl_module)``."""

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        """Plain loop: ``(trainer, step, output)``; Lightning:
        ``(trainer, pl_module, outputs, batch, batch_idx)``."""

    def on_validation_end(self, trainer: Any, *args: Any) -> None:
        """Plain loop: ``(trainer, step, metrics)``; Lightning:
        ``(trainer, pl_module)``."""

    def on_train_end(self, trainer: Any, *args: Any) -> None:
        """Plain loop: ``(trainer)``; Lightning: ``(trainer, pl_module)``."""
