"""A plain-PyTorch training loop for denoising diffusion models.

    loss_fn = DiffusionLoss(BinarizedScheduler(gamma_min=-10, gamma_max=10),
                            param="v")
    trainer = Trainer(network, loss_fn, {"data": x_train, "mask": m_train},
                      val_data={"data": x_val}, batch_size=256,
                      max_steps=5000, out_dir="runs/l96")
    trainer.fit()
    ema_network = trainer.ema_model

What one step does: draw the batch's stratified pseudo-times and its noise
seed from the trainer's own generator, encode the data, evaluate the fused
:class:`~ddm_fast.loss.DiffusionLoss` (the network under bf16 autocast on
CUDA), stop with :class:`FloatingPointError` on a non-finite loss, back-prop,
clip the gradient norm, take an AdamW step, advance the learning-rate
schedule (linear warm-up, cosine decay), update the EMA of the weights and
feed the per-sample statistic to the (adaptive) noise scheduler.

Reproducibility: the data order, the batch transforms, the times and the
noise seeds are functions of (seed, step) and of the trainer's generator,
which the checkpoint stores with every other RNG state, so
:meth:`Trainer.resume` continues bit for bit where an uninterrupted run
would be.

Data parallelism: when ``torch.distributed`` is initialised the network is
wrapped in DistributedDataParallel and every rank draws the *global* batch's
indices, times and seed from the same generator and keeps its slice; the
noise offset is the slice's global position, so the noise equals that of one
process training on the whole batch. The loss is normalised by the global
number of valid elements (see :meth:`Trainer._global_normaliser`), and the
noise scheduler's statistics are reduced over ranks. Launch with
``torchrun --nproc_per_node=N script.py`` and call
``torch.distributed.init_process_group("nccl")`` (``"gloo"`` on CPU) before
building the trainer; ``batch_size`` stays the global batch size. Only rank 0
writes logs and checkpoints.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import random
import time as _time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ._validation import check_positive_int, check_seed
from .loss import DiffusionLoss
from .seeds import (TAG_LOADER, TAG_PERMUTATION, TAG_TRANSFORM,
                    TAG_VALIDATION, derive_seed, draw_seed)
from .ops import MASKED_MEAN_EPS
from .utils import mask_count, sample_time

__all__ = ["Trainer", "ExponentialMovingAverage", "atomic_save",
           "warmup_cosine_schedule"]

Batch = Dict[str, torch.Tensor]
DataSource = Union[Mapping[str, torch.Tensor], Dataset]

CHECKPOINT_NAME = "checkpoint.pt"


# ------------------------------------------------------------ checkpoint IO
def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save`` to ``path`` atomically: write a temporary file in the
    same directory, fsync it, then ``os.replace`` it over ``path``. A failure
    at any point leaves a previous file at ``path`` untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_path = os.path.join(
        directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp_path, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    # Make the rename itself durable (POSIX only; harmless to skip elsewhere).
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _rng_states(generator: torch.Generator) -> Dict[str, Any]:
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "cached_gaussian": float(np_gauss)},
        "python": random.getstate(),
        "trainer": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"].cpu())
    np_state = states["numpy"]
    np.random.set_state((np_state["kind"],
                         np_state["keys"].cpu().numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"],
                         np_state["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    generator.set_state(states["trainer"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


# ----------------------------------------------------------------------- EMA
class ExponentialMovingAverage:
    """EMA of a module's parameters (buffers are copied).

    ``decay`` is reached after a warm-up: the effective rate of update n is
    min(decay, (1 + n) / (10 + n)), so short runs are not dominated by the
    random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got "
                            f"{type(model).__name__}")
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.module.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        rate = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        ema_params = [p for p in self.module.parameters()]
        new_params = [p.detach() for p in model.parameters()]
        if ema_params:
            torch._foreach_lerp_(ema_params, new_params, 1.0 - rate)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"module": self.module.state_dict(),
                "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])


def warmup_cosine_schedule(warmup_steps: int, total_steps: int,
                           min_ratio: float = 0.1) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup_steps`` to 1, then a
    cosine decay to ``min_ratio`` at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


# ---------------------------------------------------------------- data order
class _StepBatchSampler(Sampler):
    """Local batch indices for steps ``start_step``, ``start_step + 1``, ...

    Epoch e is a permutation drawn from a generator seeded with (seed, e);
    step s takes global batch s mod (N // global_batch) of its epoch
    (incomplete batches are dropped) and rank r keeps the r-th contiguous
    slice of it. Everything is a function of (seed, step): resumable.
    """

    def __init__(self, n_items: int, global_batch: int, rank: int,
                 world_size: int, seed: int, start_step: int, end_step: int):
        self.n_items = n_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.start_step = start_step
        self.end_step = end_step
        self.batches_per_epoch = n_items // global_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(
            derive_seed(self.seed, TAG_PERMUTATION, epoch))
        return torch.randperm(self.n_items, generator=gen)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[List[int]]:
        epoch, perm = None, None
        for step in range(self.start_step, self.end_step):
            step_epoch, position = divmod(step, self.batches_per_epoch)
            if step_epoch != epoch:
                epoch, perm = step_epoch, self.permutation(step_epoch)
            start = position * self.global_batch + self.rank * self.local_batch
            yield perm[start:start + self.local_batch].tolist()


class _TensorDictDataset(Dataset):
    """A mapping of tensors sharing their first dimension, as a dataset whose
    ``__getitems__`` slices all of them at once (no per-item collation)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.tensors = dict(tensors)

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __getitem__(self, index: int) -> Batch:
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: List[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}


def _identity_collate(batch):
    return batch if isinstance(batch, dict) else default_collate(batch)


def _as_dataset(name: str, data: DataSource) -> Dataset:
    if isinstance(data, Mapping):
        if "data" not in data:
            raise ValueError(f"{name} must hold a 'data' tensor, got keys "
                             f"{sorted(data)}")
        lengths = set()
        for key, value in data.items():
            if not isinstance(value, torch.Tensor) or value.ndim < 1:
                raise TypeError(f"{name}[{key!r}] must be a tensor with a "
                                f"sample dimension, got {type(value).__name__}")
            lengths.add(value.shape[0])
        if len(lengths) != 1:
            raise ValueError(f"the tensors of {name} must share their first "
                             f"(sample) dimension, got lengths {sorted(lengths)}")
        return _TensorDictDataset(data)
    if isinstance(data, Dataset):
        return data
    raise TypeError(f"{name} must be a mapping of tensors or a "
                    f"torch.utils.data.Dataset of dicts, got {type(data).__name__}")


# -------------------------------------------------------------------- trainer
class Trainer:
    """Train ``network`` on the diffusion loss ``loss_fn``.

    Parameters
    ----------
    network : the denoising network, called as
        ``network(z, normalized_gamma=(B, 1), mask=mask, **conditioning)``.
    loss_fn : :class:`~ddm_fast.loss.DiffusionLoss` (scheduler,
        parameterization, weighting).
    train_data : a mapping ``{"data": (N, ...), "mask": (N, ...) optional,
        other keys: conditioning}`` of tensors, or a Dataset of such dicts.
    encoder : optional module ``encoder(data, mask=mask)`` -> latent (e.g.
        ``GaussianEncoder``); its parameters are trained with the network.
    val_data : optional, like ``train_data``; validated every ``val_every``
        steps with the EMA weights.
    batch_size : the *global* batch size (split over ranks under DDP).
    max_steps : length of the run (the learning-rate schedule spans it).
    lr, weight_decay, betas : AdamW; ``warmup_steps`` of linear warm-up, then
        a cosine decay to ``min_lr_ratio * lr``.
    grad_clip : max gradient norm (None: no clipping).
    ema_decay : decay of the EMA of the weights (None: no EMA).
    batch_transform : optional ``f(batch, generator) -> batch`` applied to each
        local batch after loading (e.g. random masks) with a generator seeded
        from (seed, step, rank).
    callbacks : objects with any of the hooks ``on_train_start(trainer)``,
        ``on_train_batch_end(trainer, step, output)``,
        ``on_validation_end(trainer, step, metrics)``, ``on_train_end(trainer)``.
    out_dir : logs (``train_log.csv``, ``train_log.jsonl``) and the
        checkpoint ``checkpoint.pt`` go there.
    device : default CUDA if available; ``amp``: bf16 autocast of the network
        (default: on for CUDA; never on CPU).
    """

    def __init__(self, network: torch.nn.Module, loss_fn: DiffusionLoss,
                 train_data: DataSource, *,
                 encoder: Optional[torch.nn.Module] = None,
                 val_data: Optional[DataSource] = None,
                 batch_size: int = 64, val_batch_size: Optional[int] = None,
                 max_steps: int = 1000, lr: float = 1e-3,
                 weight_decay: float = 0.01, betas=(0.9, 0.99),
                 warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 grad_clip: Optional[float] = 1.0,
                 ema_decay: Optional[float] = 0.999,
                 val_every: int = 500, checkpoint_every: int = 1000,
                 log_every: int = 50, seed: int = 0,
                 batch_transform: Optional[Callable[[Batch, torch.Generator], Batch]] = None,
                 callbacks: Sequence[Any] = (),
                 out_dir: Union[str, os.PathLike] = "runs/ddm_fast",
                 device: Union[str, torch.device, None] = None,
                 amp: Optional[bool] = None, num_workers: int = 0,
                 progress: bool = True):
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got "
                            f"{type(network).__name__}")
        if not isinstance(loss_fn, DiffusionLoss):
            raise TypeError(f"loss_fn must be a ddm_fast.loss.DiffusionLoss, "
                            f"got {type(loss_fn).__name__}")
        if encoder is not None and not callable(encoder):
            raise TypeError(f"encoder must be callable, got {type(encoder).__name__}")
        if batch_transform is not None and not callable(batch_transform):
            raise TypeError("batch_transform must be callable f(batch, generator)")
        check_positive_int("batch_size", batch_size)
        check_positive_int("max_steps", max_steps)
        check_positive_int("warmup_steps", warmup_steps, minimum=0)
        for name, value in (("val_every", val_every),
                            ("checkpoint_every", checkpoint_every),
                            ("log_every", log_every)):
            check_positive_int(name, value)
        check_positive_int("num_workers", num_workers, minimum=0)
        check_seed("seed", seed)
        if not float(lr) > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if float(weight_decay) < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 <= float(min_lr_ratio) <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")
        if grad_clip is not None and not float(grad_clip) > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")

        self.device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if amp and self.device.type != "cuda":
            raise ValueError("amp (bf16 autocast) is only supported on CUDA; "
                             f"device is {self.device}")
        self.amp = self.device.type == "cuda" if amp is None else bool(amp)

        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        if self.distributed and self.device.type == "cuda" and self.device.index is None:
            # One GPU per process (torchrun sets LOCAL_RANK).
            self.device = torch.device(
                "cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
            torch.cuda.set_device(self.device)
        if batch_size % self.world_size != 0:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by "
                             f"the world size ({self.world_size})")
        self.batch_size = batch_size
        self.local_batch_size = batch_size // self.world_size
        self.val_batch_size = val_batch_size or batch_size
        check_positive_int("val_batch_size", self.val_batch_size)

        self.train_dataset = _as_dataset("train_data", train_data)
        if len(self.train_dataset) < batch_size:
            raise ValueError(f"train_data holds {len(self.train_dataset)} "
                             f"samples, fewer than batch_size ({batch_size})")
        self.val_dataset = None if val_data is None else \
            _as_dataset("val_data", val_data)

        self.network = network.to(self.device)
        self.encoder = encoder.to(self.device) if isinstance(
            encoder, torch.nn.Module) else encoder
        self.loss_fn = loss_fn.to(self.device)
        self.model = self.network
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel
            device_ids = [self.device.index] if self.device.type == "cuda" \
                and self.device.index is not None else None
            self.model = DistributedDataParallel(self.network, device_ids=device_ids)

        self.trainable_parameters = [p for p in self.network.parameters() if p.requires_grad]
        if isinstance(self.encoder, torch.nn.Module):
            self.trainable_parameters += [p for p in self.encoder.parameters()
                                          if p.requires_grad]
        # Learnable scheduler bounds (``learnable=True``) train with the rest.
        self.trainable_parameters += [p for p in self.loss_fn.parameters()
                                      if p.requires_grad]
        # DDP averages the network's gradients; the encoder's and the
        # scheduler's are averaged by hand (_sync_extra_gradients).
        network_ids = {id(p) for p in self.network.parameters()}
        self._extra_parameters = [p for p in self.trainable_parameters
                                  if id(p) not in network_ids]
        self.optimizer = torch.optim.AdamW(self.trainable_parameters, lr=float(lr),
                                           betas=tuple(betas),
                                           weight_decay=float(weight_decay))
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine_schedule(
                min(warmup_steps, max_steps), max_steps, float(min_lr_ratio)))
        self.ema = ExponentialMovingAverage(self.network, ema_decay) \
            if ema_decay is not None else None

        self.max_steps = max_steps
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.val_every = val_every
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.seed = seed
        self.batch_transform = batch_transform
        self.callbacks = list(callbacks)
        self.num_workers = num_workers
        self.progress = progress and self.rank == 0
        self.out_dir = os.fspath(out_dir)
        self.checkpoint_path = os.path.join(self.out_dir, CHECKPOINT_NAME)
        if self.rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)

        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.last_val_metrics: Dict[str, float] = {}

    # ---------------------------------------------------------- properties
    @property
    def scheduler(self) -> torch.nn.Module:
        """The noise scheduler being trained (part of ``loss_fn``)."""
        return self.loss_fn.scheduler

    @property
    def ema_model(self) -> torch.nn.Module:
        """The EMA of the network (the network itself without EMA)."""
        return self.ema.module if self.ema is not None else self.network

    # ----------------------------------------------------------- internals
    def _run_network(self, network: Callable) -> Callable:
        """The network as the loss calls it, under bf16 autocast on CUDA; the
        output is cast back to float32 so the loss reductions stay exact."""
        if not self.amp:
            return network

        def call(z, **kwargs):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                out = network(z, **kwargs)
            return out.float()
        return call

    def _to_device(self, batch: Batch) -> Batch:
        if not isinstance(batch, Mapping) or "data" not in batch:
            raise ValueError("every batch must be a dict with a 'data' tensor")
        return {k: v.to(self.device, non_blocking=True) if
                isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _encode(self, data: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        return data if self.encoder is None else self.encoder(data, mask=mask)

    def _global_normaliser(self, latent: torch.Tensor,
                           mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Factor turning the rank's loss (normalised by its own valid count
        N_r) into world_size * (its sum / global count N): DDP averages the
        gradients over ranks, so the objective is the masked mean over the
        global batch however it is split."""
        local = mask_count(mask, latent.shape, dtype=torch.float64,
                           device=latent.device).reshape(())
        total = local.clone()
        dist.all_reduce(total)
        return (self.world_size * (local + MASKED_MEAN_EPS) /
                (total + MASKED_MEAN_EPS)).to(torch.float32)

    def _sync_extra_gradients(self) -> None:
        """Average over ranks the gradients DDP does not see (a learnable
        encoder, learnable scheduler bounds), as DDP does for the network, so
        every rank takes the same update."""
        if not (self.distributed and self._extra_parameters):
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p)
                 for p in self._extra_parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for p, chunk in zip(self._extra_parameters,
                            flat.split([g.numel() for g in grads])):
            p.grad = chunk.view_as(p).clone()

    def _call_hooks(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self, *args)

    def _train_loader(self, end_step: int) -> DataLoader:
        sampler = _StepBatchSampler(len(self.train_dataset), self.batch_size,
                                    self.rank, self.world_size, self.seed,
                                    self.step, end_step)
        # The loader draws its workers' base seed from ``generator``: from
        # torch's global RNG it would shift dropout & co. after a resume.
        loader_gen = torch.Generator().manual_seed(
            derive_seed(self.seed, TAG_LOADER, self.step))
        return DataLoader(self.train_dataset, batch_sampler=sampler,
                          collate_fn=_identity_collate,
                          num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda",
                          generator=loader_gen)

    def _train_step(self, batch: Batch) -> Dict[str, Any]:
        if self.batch_transform is not None:
            transform_gen = torch.Generator().manual_seed(
                derive_seed(self.seed, TAG_TRANSFORM, self.step, self.rank))
            batch = self.batch_transform(batch, transform_gen)
        batch = self._to_device(batch)
        data = batch["data"]
        mask = batch.get("mask")
        conditioning = {k: v for k, v in batch.items() if k not in ("data", "mask")}
        # Times and seed of the *global* batch from the shared generator; this
        # rank keeps its slice and the noise of its members' global indices.
        start = self.rank * self.local_batch_size
        global_times = sample_time(torch.empty(self.batch_size),
                                   generator=self.generator)
        times = global_times[start:start + data.shape[0]].to(self.device)
        seed = draw_seed(generator=self.generator)

        self.model.train()
        latent = self._encode(data, mask)
        output = self.loss_fn(self._run_network(self.model), latent, mask=mask,
                              seed=seed, offset=start * latent[0].numel(),
                              time=times, **conditioning)
        loss = output.loss
        reported = loss.detach()
        if self.distributed:
            loss = loss * self._global_normaliser(latent, mask)
            reported = loss.detach().clone()
            dist.all_reduce(reported)
            reported = reported / self.world_size
        # The one host synchronisation per step: stop before a bad update.
        if not bool(torch.isfinite(reported)):
            raise FloatingPointError(
                f"non-finite loss ({float(reported)}) at step {self.step + 1} "
                f"(after {self.step} completed updates); training stopped "
                f"before this update. The last good checkpoint "
                f"({self.checkpoint_path if os.path.exists(self.checkpoint_path) else 'none written yet'}) "
                f"is intact")

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_extra_gradients()
        grad_norm = None
        if self.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters, self.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update(self.network)
        process_group = dist.group.WORLD if self.distributed else None
        self.loss_fn.update_scheduler(output, process_group=process_group)
        self.step += 1
        return {"loss": reported, "grad_norm": grad_norm, "output": output}

    # -------------------------------------------------------------- public
    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Masked diffusion loss on ``val_data`` with the EMA weights, with
        fixed times and noise (the same at every validation), reduced over
        ranks. Returns ``{"val_loss": ...}`` (empty without val_data)."""
        if self.val_dataset is None:
            return {}
        network = self.ema_model
        was_training = network.training
        network.eval()
        generator = torch.Generator().manual_seed(
            derive_seed(self.seed, TAG_VALIDATION))
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        n_items = len(self.val_dataset)
        local = -(-self.val_batch_size // self.world_size)
        for batch_start in range(0, n_items, self.val_batch_size):
            global_size = min(self.val_batch_size, n_items - batch_start)
            global_times = sample_time(torch.empty(global_size), generator=generator)
            seed = draw_seed(generator=generator)
            lo = min(global_size, self.rank * local)
            hi = min(global_size, lo + local)
            if hi <= lo:
                continue
            indices = list(range(batch_start + lo, batch_start + hi))
            batch = _identity_collate(
                self.val_dataset.__getitems__(indices)
                if hasattr(self.val_dataset, "__getitems__")
                else [self.val_dataset[i] for i in indices])
            batch = self._to_device(batch)
            mask = batch.get("mask")
            conditioning = {k: v for k, v in batch.items()
                            if k not in ("data", "mask")}
            latent = self._encode(batch["data"], mask)
            out = self.loss_fn(self._run_network(network), latent, mask=mask,
                               seed=seed, offset=lo * latent[0].numel(),
                               time=global_times[lo:hi].to(self.device),
                               **conditioning)
            count = mask_count(mask, latent.shape, dtype=torch.float64,
                               device=self.device).reshape(())
            total += torch.stack((out.loss.double() * (count + MASKED_MEAN_EPS),
                                  count))
        if self.distributed:
            dist.all_reduce(total)
        network.train(was_training)
        loss_sum, count = total.tolist()
        metrics = {"val_loss": loss_sum / (count + MASKED_MEAN_EPS)}
        self.last_val_metrics = metrics
        return metrics

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue the run bit for bit."""
        state = {
            "step": self.step,
            "seed": self.seed,
            "world_size": self.world_size,
            "max_steps": self.max_steps,
            "model": self.network.state_dict(),
            "loss_fn": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": _rng_states(self.generator),
        }
        if isinstance(self.encoder, torch.nn.Module):
            state["encoder"] = self.encoder.state_dict()
        return state

    def save_checkpoint(self, path: Union[str, os.PathLike, None] = None) -> str:
        """Write the checkpoint atomically (rank 0 only; all ranks wait)."""
        path = os.fspath(path) if path is not None else self.checkpoint_path
        if self.rank == 0:
            atomic_save(self.state_dict(), path)
        if self.distributed:
            dist.barrier()
        return path

    def resume(self, path: Union[str, os.PathLike, None] = None) -> int:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this
        trainer (built with the same configuration); returns the step."""
        path = os.fspath(path) if path is not None else self.checkpoint_path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint at {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key, expected in (("seed", self.seed), ("world_size", self.world_size),
                              ("max_steps", self.max_steps)):
            if state[key] != expected:
                raise ValueError(f"checkpoint {path} was written with {key}="
                                 f"{state[key]}, this trainer has {expected}; "
                                 "resume with the same configuration")
        self.network.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss_fn"])
        if "encoder" in state and isinstance(self.encoder, torch.nn.Module):
            self.encoder.load_state_dict(state["encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError(f"checkpoint {path} holds no EMA but this "
                                 "trainer has ema_decay set")
            self.ema.load_state_dict(state["ema"])
        _set_rng_states(state["rng"], self.generator)
        self.step = int(state["step"])
        return self.step

    def fit(self, until: Optional[int] = None) -> Dict[str, float]:
        """Train from the current step to ``until`` (default ``max_steps``),
        validating, logging and checkpointing on the way; a checkpoint is
        written at the end. Returns the last logged metrics."""
        end_step = self.max_steps if until is None else until
        check_positive_int("until", end_step, minimum=0)
        if end_step > self.max_steps:
            raise ValueError(f"until ({end_step}) exceeds max_steps ({self.max_steps})")
        self._call_hooks("on_train_start")
        logger = _MetricLogger(self.out_dir, enabled=self.rank == 0)
        pbar = None
        if self.progress:
            from tqdm.auto import tqdm
            pbar = tqdm(total=end_step, initial=self.step, desc="train",
                        dynamic_ncols=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        interval_steps, interval_start = 0, _time.perf_counter()
        metrics: Dict[str, float] = {}
        try:
            for batch in self._train_loader(end_step):
                result = self._train_step(batch)
                loss_sum += result["loss"].double()
                interval_steps += 1
                step = self.step
                self._call_hooks("on_train_batch_end", step, result["output"])
                if pbar is not None:
                    pbar.update(1)
                if step % self.log_every == 0 or step == end_step:
                    elapsed = _time.perf_counter() - interval_start
                    metrics = {
                        "loss": float(loss_sum) / interval_steps,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "grad_norm": float(result["grad_norm"])
                        if result["grad_norm"] is not None else float("nan"),
                        "samples_per_s": interval_steps * self.batch_size / max(elapsed, 1e-9),
                    }
                    logger.write(step, "train", metrics)
                    if pbar is not None:
                        pbar.set_postfix(loss=f"{metrics['loss']:.4f}",
                                         samples_per_s=f"{metrics['samples_per_s']:.0f}")
                    loss_sum.zero_()
                    interval_steps, interval_start = 0, _time.perf_counter()
                if self.val_dataset is not None and (
                        step % self.val_every == 0 or step == end_step):
                    val_metrics = self.validate()
                    logger.write(step, "val", val_metrics)
                    metrics.update(val_metrics)
                    self._call_hooks("on_validation_end", step, val_metrics)
                if step % self.checkpoint_every == 0 and step != end_step:
                    self.save_checkpoint()
            self.save_checkpoint()
        finally:
            if pbar is not None:
                pbar.close()
            logger.close()
        self._call_hooks("on_train_end")
        return metrics


class _MetricLogger:
    """Rows of (step, split, metrics) to ``train_log.csv`` and
    ``train_log.jsonl``, appended (a resumed run continues the files)."""

    COLUMNS = ("step", "split", "loss", "val_loss", "lr", "grad_norm",
               "samples_per_s", "wall_time")

    def __init__(self, out_dir: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        csv_path = os.path.join(out_dir, "train_log.csv")
        new_file = not os.path.exists(csv_path)
        self.csv_file = open(csv_path, "a", newline="")
        self.csv = csv.DictWriter(self.csv_file, fieldnames=self.COLUMNS,
                                  extrasaction="ignore")
        if new_file:
            self.csv.writeheader()
        self.json_file = open(os.path.join(out_dir, "train_log.jsonl"), "a")

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, "wall_time": _time.time(), **metrics}
        self.csv.writerow(row)
        self.csv_file.flush()
        self.json_file.write(json.dumps(row) + "\n")
        self.json_file.flush()

    def close(self) -> None:
        if self.enabled:
            self.csv_file.close()
            self.json_file.close()
