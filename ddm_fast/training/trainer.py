"""The training loop: :class:`Trainer`.

What one step does: draw the batch's stratified pseudo-times and its noise
seed from the trainer's own generator, evaluate the batch's loss through
:func:`~ddm_fast.training.batch.batch_loss` (shared with validation; the
network under bf16 autocast on CUDA), back-prop, and check, in the step's
one host synchronisation, that the loss, the gradient norm and the weights
the previous update produced are finite. Only then is the update kept: clip
the gradient norm, take an AdamW step, advance the learning-rate schedule
(linear warm-up, cosine decay), update the EMA of the weights and feed the
per-sample statistic to the (adaptive) noise scheduler. A non-finite value
stops training with :class:`FloatingPointError` before the update, and no
checkpoint is ever written holding a non-finite value.

Reproducibility: the data order, the batch transforms, the times and the
noise seeds are functions of (seed, step) and of the trainer's generator,
which the checkpoint stores with every other RNG state, so
:meth:`Trainer.resume` continues bit for bit where an uninterrupted run
would be. The checkpoint also stores the configuration's fingerprint
(:mod:`.fingerprint`) and a checksum (:mod:`.checkpoint`): a resume under
another configuration, or from a damaged file, is refused with a sentence
saying why, and leaves the trainer as it was.

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

import copy
import math
import os
import time as _time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO, Union

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .._validation import check_positive_int, check_seed
from ..loss import DiffusionLoss
from ..ops import MASKED_MEAN_EPS
from ..seeds import (TAG_LOADER, TAG_TRANSFORM, TAG_VALIDATION, derive_seed,
                     draw_seed)
from ..utils import mask_count, sample_time
from .batch import batch_loss
from .checkpoint import (CheckpointError, load_checkpoint_file,
                         remove_orphaned_temporaries, save_checkpoint_file)
from .data import (Batch, DataSource, StepBatchSampler, as_dataset, collate,
                   fetch)
from .ema import ExponentialMovingAverage
from .fingerprint import configuration_differences, trainer_configuration
from .logger import MetricLogger, Progress
from .rng import check_rng_states, rng_states, set_rng_states
from .schedule import warmup_cosine_schedule

__all__ = ["Trainer", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"

# What a checkpoint's state must hold (``encoder`` only with a module encoder).
_STATE_KEYS = ("step", "configuration", "model", "loss_fn", "optimizer",
               "lr_scheduler", "ema", "rng")


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
    progress : show the training progress (rank 0): a redrawn bar on a
        terminal, else one plain line every ``log_every`` steps.
    progress_stream : where the progress goes (default ``sys.stderr``).
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
                 progress: bool = True,
                 progress_stream: Optional[TextIO] = None):
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got "
                            f"{type(network).__name__}")
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
        if progress_stream is not None and not callable(
                getattr(progress_stream, "write", None)):
            raise TypeError("progress_stream must be a text stream with a "
                            f"write method, got {type(progress_stream).__name__}")
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
        _check_number("lr", lr, "> 0", lambda v: v > 0)
        _check_number("weight_decay", weight_decay, ">= 0", lambda v: v >= 0)
        _check_number("min_lr_ratio", min_lr_ratio, "in [0, 1]",
                      lambda v: 0.0 <= v <= 1.0)
        if grad_clip is not None:
            _check_number("grad_clip", grad_clip, "> 0 or None", lambda v: v > 0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        for index, beta in enumerate(betas):
            _check_number(f"betas[{index}]", beta, "in [0, 1)",
                          lambda v: 0.0 <= v < 1.0)
        if ema_decay is not None:
            _check_number("ema_decay", ema_decay, "in [0, 1) or None",
                          lambda v: 0.0 <= v < 1.0)

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
        self.val_batch_size = batch_size if val_batch_size is None \
            else check_positive_int("val_batch_size", val_batch_size)

        self.train_dataset = as_dataset("train_data", train_data)
        if len(self.train_dataset) < batch_size:
            raise ValueError(f"train_data holds {len(self.train_dataset)} "
                             f"samples, fewer than batch_size ({batch_size})")
        self.val_dataset = None if val_data is None else \
            as_dataset("val_data", val_data)

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
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = float(min_lr_ratio)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.val_every = val_every
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.seed = seed
        self.batch_transform = batch_transform
        self.callbacks = list(callbacks)
        self.num_workers = num_workers
        self.progress = progress and self.rank == 0
        self.progress_stream = progress_stream
        self.out_dir = os.fspath(out_dir)
        self.checkpoint_path = os.path.join(self.out_dir, CHECKPOINT_NAME)
        if self.rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)
            # A writer killed mid-save leaves its temporary file behind.
            remove_orphaned_temporaries(self.checkpoint_path)

        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.last_val_metrics: Dict[str, float] = {}
        # The step of the last checkpoint this trainer wrote or resumed from
        # (None: none yet), so that an error can say truthfully what is safe.
        self.checkpoint_step: Optional[int] = None
        # The norm of the weights after the last update, checked (with the
        # next step's loss and gradient) in that step's one synchronisation.
        self._weight_norm: Optional[torch.Tensor] = None
        # Taken now, before training changes any learnable value.
        self.configuration = trainer_configuration(self)

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
        # the Denoiser records the network's gamma range through __wrapped__
        # (ddm_fast/denoiser.py): the record must reach the model, not this
        # per-step closure
        call.__wrapped__ = network
        return call

    def _to_device(self, batch: Batch) -> Batch:
        if not isinstance(batch, Mapping) or "data" not in batch:
            raise ValueError("every batch must be a dict with a 'data' tensor")
        return {k: v.to(self.device, non_blocking=True) if
                isinstance(v, torch.Tensor) else v for k, v in batch.items()}

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
        sampler = StepBatchSampler(len(self.train_dataset), self.batch_size,
                                    self.rank, self.world_size, self.seed,
                                    self.step, end_step)
        # The loader draws its workers' base seed from ``generator``: from
        # torch's global RNG it would shift dropout & co. after a resume.
        loader_gen = torch.Generator().manual_seed(
            derive_seed(self.seed, TAG_LOADER, self.step))
        return DataLoader(self.train_dataset, batch_sampler=sampler,
                          collate_fn=collate,
                          num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda",
                          generator=loader_gen)

    def _checkpoint_note(self) -> str:
        """What is safe on disk, for error messages (always true: no
        checkpoint holding a non-finite value is ever written)."""
        if self.checkpoint_step is None:
            return "This run has written no checkpoint yet"
        return (f"The last checkpoint, {self.checkpoint_path} (step "
                f"{self.checkpoint_step}), holds only finite values and was "
                "not touched")

    def _parameter_norm(self) -> torch.Tensor:
        if not self.trainable_parameters:
            return torch.zeros((), device=self.device)
        norms = torch._foreach_norm(self.trainable_parameters)
        return torch.linalg.vector_norm(torch.stack(norms).float())

    def _gradient_norm(self) -> torch.Tensor:
        """The total gradient norm, clipping it to ``grad_clip`` when set."""
        grads = [p.grad for p in self.trainable_parameters if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        if self.grad_clip is not None:
            return torch.nn.utils.clip_grad_norm_(self.trainable_parameters,
                                                  self.grad_clip)
        return torch.nn.utils.get_total_norm(grads)

    def _train_step(self, batch: Batch) -> Dict[str, Any]:
        if self.batch_transform is not None:
            transform_gen = torch.Generator().manual_seed(
                derive_seed(self.seed, TAG_TRANSFORM, self.step, self.rank))
            batch = self.batch_transform(batch, transform_gen)
        batch = self._to_device(batch)
        # Times and seed of the *global* batch from the shared generator; this
        # rank keeps its slice and the noise of its members' global indices.
        start = self.rank * self.local_batch_size
        global_times = sample_time(torch.empty(self.batch_size),
                                   generator=self.generator)
        times = global_times[start:start + batch["data"].shape[0]].to(self.device)
        seed = draw_seed(generator=self.generator)

        self.model.train()
        output, latent, mask = batch_loss(
            self.loss_fn, self._run_network(self.model), self.encoder, batch,
            times, seed, offset=start * batch["data"][0].numel())
        loss = output.loss
        reported = loss.detach()
        if self.distributed:
            loss = loss * self._global_normaliser(latent, mask)
            reported = loss.detach().clone()
            dist.all_reduce(reported)
            reported = reported / self.world_size

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_extra_gradients()
        grad_norm = self._gradient_norm()
        # The step's one host synchronisation: the loss, the gradient norm
        # and the weights of the previous update, all finite, or no update.
        health = [reported.float().reshape(()), grad_norm.float().reshape(())]
        if self._weight_norm is not None:
            health.append(self._weight_norm)
        values = torch.stack(health).tolist()
        loss_value, grad_value = values[0], values[1]
        if len(values) > 2 and not math.isfinite(values[2]):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"the weights became non-finite (norm {values[2]}) in the "
                f"update of step {self.step}; training stopped and the "
                f"trainer's weights are unusable. {self._checkpoint_note()}; "
                "lower the learning rate or check the data")
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"non-finite loss ({loss_value}) at step {self.step + 1}: "
                f"training stopped before this update, so the weights are "
                f"those after step {self.step}. {self._checkpoint_note()}")
        if not math.isfinite(grad_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"non-finite gradient (norm {grad_value}) with a finite loss "
                f"({loss_value}) at step {self.step + 1}: training stopped "
                f"before this update, so the weights are those after step "
                f"{self.step}. {self._checkpoint_note()}")

        self.optimizer.step()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update(self.network)
        process_group = dist.group.WORLD if self.distributed else None
        self.loss_fn.update_scheduler(output, process_group=process_group)
        self._weight_norm = self._parameter_norm().detach()
        self.step += 1
        return {"loss": loss_value, "grad_norm": grad_value, "output": output}

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
            batch = self._to_device(fetch(
                self.val_dataset, list(range(batch_start + lo, batch_start + hi))))
            out, latent, mask = batch_loss(
                self.loss_fn, self._run_network(network), self.encoder, batch,
                global_times[lo:hi].to(self.device), seed,
                offset=lo * batch["data"][0].numel())
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
        """Everything needed to continue the run bit for bit, with the
        configuration's fingerprint."""
        state = {
            "step": self.step,
            "configuration": dict(self.configuration),
            "model": self.network.state_dict(),
            "loss_fn": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_states(self.generator),
        }
        if isinstance(self.encoder, torch.nn.Module):
            state["encoder"] = self.encoder.state_dict()
        return state

    def _check_finite_state(self, state: Mapping[str, Any]) -> None:
        """Raise FloatingPointError naming the first non-finite tensor of
        the state (one synchronisation for all of them)."""
        named: List = []

        def collect(prefix: str, value: Any) -> None:
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    named.append((prefix, value))
            elif isinstance(value, Mapping):
                for key, sub in value.items():
                    collect(f"{prefix}.{key}", sub)

        for part in ("model", "loss_fn", "optimizer", "ema", "encoder"):
            collect(part, state.get(part))
        if not named:
            return
        finite = torch.stack([t.detach().isfinite().all().to(self.device)
                              for _, t in named])
        if bool(finite.all()):
            return
        first = named[int((~finite).nonzero()[0])][0]
        raise FloatingPointError(
            f"refusing to write a checkpoint at step {self.step}: {first} "
            f"holds non-finite values. {self._checkpoint_note()}")

    def save_checkpoint(self, path: Union[str, os.PathLike, None] = None) -> str:
        """Write the checkpoint atomically (rank 0 only; all ranks wait),
        after checking that every value in it is finite."""
        path = os.fspath(path) if path is not None else self.checkpoint_path
        state = self.state_dict()
        # Every rank checks (their states are equal under DDP), so that all
        # of them stop together instead of waiting for rank 0 at the barrier.
        self._check_finite_state(state)
        if self.rank == 0:
            save_checkpoint_file(state, path)
            if os.path.abspath(path) == os.path.abspath(self.checkpoint_path):
                self.checkpoint_step = self.step
        if self.distributed:
            dist.barrier()
        return path

    def _check_restorable(self, path: str, state: Mapping[str, Any]) -> None:
        """Everything about ``state`` that can be checked before touching
        the trainer: its pieces and the configuration it was written with."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks {missing}; it was "
                                  "not written by Trainer.save_checkpoint")
        stored = state["configuration"]
        if not isinstance(stored, Mapping):
            raise CheckpointError(f"checkpoint {path} holds no configuration "
                                  "fingerprint")
        differences = configuration_differences(stored, self.configuration)
        if differences:
            raise CheckpointError(
                f"checkpoint {path} was written under another configuration; "
                "resume with the same one. Differences: "
                + "; ".join(differences))
        if isinstance(self.encoder, torch.nn.Module) and "encoder" not in state:
            raise CheckpointError(f"checkpoint {path} holds no encoder state but "
                                  "this trainer has an encoder module")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or \
                not 0 <= step <= self.max_steps:
            raise CheckpointError(f"checkpoint {path} holds step {step!r}; "
                                  f"expected an int in [0, {self.max_steps}]")
        try:
            check_rng_states(state["rng"])
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}") from None

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss_fn"])
        if isinstance(self.encoder, torch.nn.Module):
            self.encoder.load_state_dict(state["encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_states(state["rng"], self.generator)
        self.step = int(state["step"])

    def resume(self, path: Union[str, os.PathLike, None] = None) -> int:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this
        trainer (built with the same configuration); returns the step.

        All or nothing: a damaged file, another configuration or a state
        that does not fit raises (``FileNotFoundError`` without a file,
        :class:`~ddm_fast.training.CheckpointError` otherwise) and leaves
        the trainer exactly as it was."""
        path = os.fspath(path) if path is not None else self.checkpoint_path
        state = load_checkpoint_file(path)
        self._check_restorable(path, state)
        backup = copy.deepcopy(self.state_dict())
        try:
            self._load_state(state)
        except Exception as exc:
            self._load_state(backup)
            raise CheckpointError(
                f"checkpoint {path} does not fit this trainer "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "nothing was restored") from exc
        self._weight_norm = None
        if os.path.abspath(path) == os.path.abspath(self.checkpoint_path):
            self.checkpoint_step = self.step
        return self.step

    def fit(self, until: Optional[int] = None) -> Dict[str, float]:
        """Train from the current step to ``until`` (default ``max_steps``),
        validating, logging and checkpointing on the way; a checkpoint is
        written at the end. Returns the last logged metrics. Log rows of
        steps after the current one (left by a run that went on past its
        last checkpoint and was killed) are dropped first, so the logs hold
        each step once."""
        end_step = self.max_steps if until is None else until
        check_positive_int("until", end_step, minimum=0)
        if end_step > self.max_steps:
            raise ValueError(f"until ({end_step}) exceeds max_steps ({self.max_steps})")
        self._call_hooks("on_train_start")
        logger = MetricLogger(self.out_dir, enabled=self.rank == 0,
                              keep_until=self.step)
        progress = Progress(end_step, self.step, self.log_every,
                            self.progress_stream) if self.progress else None
        loss_sum = 0.0
        interval_steps, interval_start = 0, _time.perf_counter()
        metrics: Dict[str, float] = {}
        try:
            for batch in self._train_loader(end_step):
                result = self._train_step(batch)
                loss_sum += result["loss"]
                interval_steps += 1
                step = self.step
                self._call_hooks("on_train_batch_end", step, result["output"])
                if step % self.log_every == 0 or step == end_step:
                    elapsed = _time.perf_counter() - interval_start
                    metrics = {
                        "loss": loss_sum / interval_steps,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "grad_norm": result["grad_norm"],
                        "samples_per_s": interval_steps * self.batch_size / max(elapsed, 1e-9),
                    }
                    logger.write(step, "train", metrics)
                    if progress is not None:
                        progress.update(step, loss=f"{metrics['loss']:.4f}",
                                        samples_per_s=f"{metrics['samples_per_s']:.0f}")
                    loss_sum = 0.0
                    interval_steps, interval_start = 0, _time.perf_counter()
                elif progress is not None:
                    progress.update(step)
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
            if progress is not None:
                progress.close()
            logger.close()
        self._call_hooks("on_train_end")
        return metrics


def _check_number(name: str, value: Any, expected: str,
                  accept: Callable[[float], bool]) -> float:
    """``value`` as a float when it is a finite real number satisfying
    ``accept``; else an error naming ``name`` and ``expected``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number {expected}, got "
                        f"{type(value).__name__}")
    if not (math.isfinite(value) and accept(float(value))):
        raise ValueError(f"{name} must be a finite number {expected}, got {value!r}")
    return float(value)
