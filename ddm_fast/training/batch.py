"""From a batch to its diffusion loss: the one path that training and
validation share."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..loss import DiffusionLoss, DiffusionLossOutput
from .data import Batch

__all__ = ["batch_loss", "split_batch"]


def split_batch(batch: Batch):
    """(data, mask or None, conditioning) of a batch dict."""
    if not isinstance(batch, dict) or "data" not in batch:
        raise ValueError("every batch must be a dict with a 'data' tensor, got "
                         f"{type(batch).__name__}"
                         f"{' with keys ' + str(sorted(batch)) if isinstance(batch, dict) else ''}")
    conditioning = {k: v for k, v in batch.items() if k not in ("data", "mask")}
    return batch["data"], batch.get("mask"), conditioning


def _checked_network(network: Callable) -> Callable:
    """``network`` with its output checked: a wrong shape is reported as the
    network's fault, not as a mismatch deep inside the loss."""
    def call(z, **kwargs):
        out = network(z, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the network's output must be a tensor, got "
                            f"{type(out).__name__}")
        if out.shape != z.shape:
            raise ValueError(f"the network's output has shape "
                             f"{tuple(out.shape)}; it must have the shape of "
                             f"its input z {tuple(z.shape)}")
        return out
    return call


def batch_loss(loss_fn: DiffusionLoss, network: Callable,
               encoder: Optional[Callable], batch: Batch,
               times: torch.Tensor, seed: int, offset: int
               ) -> tuple:
    """(loss output, latent, mask) of ``batch``: encode the data (when an
    encoder is given), noise it with stream ``seed`` from element ``offset``
    at pseudo-times ``times`` and evaluate ``loss_fn`` around ``network``."""
    data, mask, conditioning = split_batch(batch)
    latent = data if encoder is None else encoder(data, mask=mask)
    output: DiffusionLossOutput = loss_fn(
        _checked_network(network), latent, mask=mask, seed=seed, offset=offset,
        time=times, **conditioning)
    return output, latent, mask
