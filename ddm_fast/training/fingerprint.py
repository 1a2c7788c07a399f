"""The configuration a checkpoint belongs to, and the sentence that says how
another configuration differs from it.

A resume continues bit for bit only under the configuration the run
started with; the pieces that decide it (batch size, data set size, seed,
the optimiser and its schedule, the network's architecture, the
parameterization, the weighting, the noise scheduler's class and options,
the encoder) are described as plain strings and numbers, taken when the
trainer is built (before any training changes a learnable value).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch

__all__ = ["describe_module", "configuration_differences",
           "trainer_configuration"]

_SIMPLE = (bool, int, float, str, type(None))


def _simple(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_simple(v) for v in value)
    return isinstance(value, _SIMPLE)


def describe_module(module: Optional[Any], attributes: bool = True
                    ) -> Optional[str]:
    """A string that changes when ``module``'s architecture or options do:
    for every submodule its class, its ``extra_repr`` and (``attributes``)
    its public number/string attributes, and the name, shape and dtype of
    every parameter and buffer (never their values, which training
    changes). A user's network is described without its attributes, which
    may be anything (counters, paths); its layers' ``extra_repr`` carry the
    architecture."""
    if module is None:
        return None
    if not isinstance(module, torch.nn.Module):
        return type(module).__qualname__
    parts: List[str] = []
    for name, sub in module.named_modules():
        options = sorted((k, v) for k, v in vars(sub).items()
                         if attributes and not k.startswith("_")
                         and k != "training" and _simple(v))
        parts.append(f"{name or '.'}: {type(sub).__module__}."
                     f"{type(sub).__qualname__}({sub.extra_repr()}) {options}")
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        parts.append(f"{name}: {tuple(tensor.shape)} {tensor.dtype}"
                     f"{' trainable' if tensor.requires_grad else ''}")
    return "; ".join(parts)


def configuration_differences(stored: Mapping[str, Any],
                              current: Mapping[str, Any]) -> List[str]:
    """One phrase per entry in which ``stored`` and ``current`` differ."""
    differences = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            if isinstance(old, str) and isinstance(new, str) and \
                    max(len(old), len(new)) > 120:
                old, new = _first_difference(old, new)
            differences.append(f"{key}: checkpoint {old!r}, this trainer {new!r}")
    return differences


def _first_difference(old: str, new: str) -> tuple:
    """The parts of two long descriptions around where they first differ."""
    old_parts, new_parts = old.split("; "), new.split("; ")
    for a, b in zip(old_parts, new_parts):
        if a != b:
            return a, b
    longer = old_parts if len(old_parts) > len(new_parts) else new_parts
    extra = longer[min(len(old_parts), len(new_parts))]
    return (extra, "<absent>") if longer is old_parts else ("<absent>", extra)


def trainer_configuration(trainer) -> Dict[str, Any]:
    """The fingerprint of a :class:`~ddm_fast.training.Trainer`."""
    loss_fn = trainer.loss_fn
    return {
        "batch_size": trainer.batch_size,
        "world_size": trainer.world_size,
        "train_samples": len(trainer.train_dataset),
        "seed": trainer.seed,
        "max_steps": trainer.max_steps,
        "optimizer": repr(sorted((k, v) for k, v in
                                 trainer.optimizer.defaults.items()
                                 if _simple(v))),
        "warmup_steps": trainer.warmup_steps,
        "min_lr_ratio": trainer.min_lr_ratio,
        "grad_clip": trainer.grad_clip,
        "ema_decay": trainer.ema.decay if trainer.ema is not None else None,
        "amp": trainer.amp,
        "network": describe_module(trainer.network, attributes=False),
        "encoder": describe_module(trainer.encoder),
        "parameterization": describe_module(loss_fn.param),
        "weighting": describe_module(loss_fn.weighting),
        "scheduler": describe_module(loss_fn.scheduler),
        "gamma_range": repr((loss_fn._gamma_min, loss_fn._gamma_max)),
    }
