"""Plots of a noise scheduler: log-SNR and signal over time, density over
log-SNR (the port of ddm_dynamical's Lightning ``EvaluateSchedulerCallback``,
usable from ddm_fast's plain loop and, as the toolbox's was, from a Lightning
``Trainer``).

The figures are built with matplotlib's object-oriented API on the Agg
canvas (``matplotlib.figure.Figure``), never through pyplot: nothing is
registered in pyplot's global figure list, so nothing leaks across calls and
there is nothing to close. matplotlib is imported on first use only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from .._compat import warn_ignored_kwargs
from .._validation import check_positive_int
from ..utils import alpha_sigma
from .base import Callback, is_lightning_trainer

__all__ = ["EvaluateSchedulerCallback"]

# name of each figure -> file stem
_FILE_STEMS = {"logsnr": "scheduler_logsnr",
               "density": "scheduler_density",
               "signal": "scheduler_signal"}


def _check_scheduler(scheduler: Any) -> None:
    if not callable(scheduler) or not callable(
            getattr(scheduler, "get_density", None)):
        raise TypeError(
            "scheduler must be a noise scheduler (callable t -> gamma with "
            f"get_density), got {type(scheduler).__name__}")


def _scheduler_placement(scheduler: Any):
    """(device, dtype) of the scheduler's parameters or buffers; CPU float32
    for a scheduler without any."""
    if isinstance(scheduler, torch.nn.Module):
        for tensor in list(scheduler.parameters()) + list(scheduler.buffers()):
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


# Lightning: figure name -> the key ddm_dynamical logged it under
LIGHTNING_KEYS = {"logsnr": "scheduler/logSNR",
                  "density": "scheduler/density",
                  "signal": "scheduler/signal"}


class EvaluateSchedulerCallback(Callback):
    """Plot the training noise scheduler after validations.

    Parameters
    ----------
    n_steps : number of times in linspace(0, 1, n_steps) at which the
        scheduler is evaluated (>= 2).
    every : write the figures at every ``every``-th validation (>= 1).
    **kwargs : accepted and ignored, with a warning naming them.

    From ddm_fast's training loop, ``on_validation_end`` writes
    ``scheduler_{logsnr,density,signal}_step{step:06d}.png`` into
    ``trainer.out_dir / "scheduler"`` (on rank 0 only, and nothing when
    ``trainer.out_dir`` is None).

    From a Lightning ``Trainer`` it does what ddm_dynamical's callback did:
    after each validation (the sanity check included), when the trainer has
    a logger and the LightningModule a ``scheduler`` attribute, it plots
    ``pl_module.scheduler`` and hands each figure to every logger that has
    ``log_image`` (Weights & Biases) as ``logger.log_image(key, [figure])``
    with the toolbox's keys ``scheduler/logSNR``, ``scheduler/density`` and
    ``scheduler/signal``. The toolbox failed with a logger lacking
    ``log_image`` (CSV, TensorBoard); here the figures are then written as
    PNGs (step = ``trainer.global_step``) into ``trainer.log_dir /
    "scheduler"``. Only the global-zero rank draws.

    Without a trainer, call :meth:`save` or :meth:`figures` directly.
    """

    def __init__(self, n_steps: int = 1001, every: int = 1, **kwargs):
        super().__init__()
        warn_ignored_kwargs(self, kwargs)
        self.n_steps = check_positive_int("n_steps", n_steps, minimum=2)
        self.every = check_positive_int("every", every)
        self._validations_seen = 0

    @property
    def timesteps(self) -> torch.Tensor:
        """The evaluation times, linspace(0, 1, n_steps) (the toolbox's
        attribute)."""
        return torch.linspace(0, 1, self.n_steps)

    def evaluate(self, scheduler: Any) -> Dict[str, torch.Tensor]:
        """Scheduler values on the time grid, as CPU float64 tensors:
        ``time``, ``gamma``, ``density`` and ``alpha`` (the signal)."""
        _check_scheduler(scheduler)
        device, dtype = _scheduler_placement(scheduler)
        time = torch.linspace(0, 1, self.n_steps, device=device, dtype=dtype)
        with torch.no_grad():
            gamma = scheduler(time)
            density = scheduler.get_density(gamma)
            alpha, _ = alpha_sigma(gamma)
        return {name: value.detach().to("cpu", torch.float64)
                for name, value in (("time", time), ("gamma", gamma),
                                    ("density", density), ("alpha", alpha))}

    def figures(self, scheduler: Any,
                step: Optional[int] = None) -> Dict[str, Any]:
        """``{"logsnr", "density", "signal"}`` -> matplotlib Figure:
        log-SNR vs time, density vs log-SNR, signal alpha vs time, each
        titled with what it shows and, when given, the training ``step``."""
        if step is not None:
            check_positive_int("step", step, minimum=0)
        from matplotlib.figure import Figure

        values = self.evaluate(scheduler)
        time = values["time"].numpy()
        gamma = values["gamma"].numpy()
        panels = {
            "logsnr": (time, gamma, "Time", "log SNR", (0, 1), None,
                       "log-SNR over time"),
            "density": (gamma, values["density"].numpy(), "log SNR",
                        "Density", None, None, "Density of the log-SNR"),
            "signal": (time, values["alpha"].numpy(), "Time", "Signal",
                       (0, 1), (0, 1), "Signal over time"),
        }
        at_step = "" if step is None else f", training step {step}"
        figures = {}
        for name, (x, y, xlabel, ylabel, xlim, ylim, what) in panels.items():
            figure = Figure(figsize=(5, 3.5), layout="constrained")
            axes = figure.add_subplot()
            axes.set_title(what + at_step)
            axes.plot(x, y)
            axes.set_xlabel(xlabel)
            axes.set_ylabel(ylabel)
            if xlim is not None:
                axes.set_xlim(*xlim)
            if ylim is not None:
                axes.set_ylim(*ylim)
            figures[name] = figure
        return figures

    def save(self, scheduler: Any, out_dir: Union[str, os.PathLike],
             step: Optional[int] = None) -> List[Path]:
        """Write the three figures as PNGs into ``out_dir`` (created if
        needed), with the suffix ``_step{step:06d}`` when ``step`` is given.
        Returns the paths written."""
        if not isinstance(out_dir, (str, os.PathLike)):
            raise TypeError("out_dir must be a str or os.PathLike, got "
                            f"{type(out_dir).__name__}")
        if step is not None:
            check_positive_int("step", step, minimum=0)
        suffix = "" if step is None else f"_step{step:06d}"
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, figure in self.figures(scheduler, step=step).items():
            path = out_dir / f"{_FILE_STEMS[name]}{suffix}.png"
            figure.savefig(path, dpi=100)
            paths.append(path)
        return paths

    def _is_due(self) -> bool:
        """Count a validation; True at every ``every``-th one (1st, 1+every,
        ...)."""
        self._validations_seen += 1
        return (self._validations_seen - 1) % self.every == 0

    def on_validation_end(self, trainer: Any, *args: Any) -> None:
        """Plain loop: ``(trainer, step, metrics)``; Lightning:
        ``(trainer, pl_module)`` (see the class docstring)."""
        if is_lightning_trainer(trainer):
            self._lightning_validation_end(trainer, *args)
        else:
            self._plain_validation_end(trainer, *args)

    def _plain_validation_end(self, trainer: Any, step: int,
                              metrics: Mapping[str, float]) -> None:
        if not self._is_due():
            return
        out_dir = getattr(trainer, "out_dir", None)
        if out_dir is None or getattr(trainer, "rank", 0) != 0:
            return
        self.save(trainer.scheduler, Path(out_dir) / "scheduler", step=step)

    def _lightning_validation_end(self, trainer: Any, pl_module: Any) -> None:
        scheduler = getattr(pl_module, "scheduler", None)
        if trainer.logger is None or scheduler is None:
            return
        if not self._is_due() or not trainer.is_global_zero:
            return
        image_loggers = [logger for logger in trainer.loggers
                         if callable(getattr(logger, "log_image", None))]
        if not image_loggers:
            self.save(scheduler, Path(trainer.log_dir) / "scheduler",
                      step=trainer.global_step)
            return
        for name, figure in self.figures(scheduler).items():
            for logger in image_loggers:
                logger.log_image(LIGHTNING_KEYS[name], [figure])
