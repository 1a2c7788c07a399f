"""A plain-PyTorch training loop for denoising diffusion models.

    loss_fn = DiffusionLoss(BinarizedScheduler(gamma_min=-10, gamma_max=10),
                            param="v")
    trainer = Trainer(network, loss_fn, {"data": x_train, "mask": m_train},
                      val_data={"data": x_val}, batch_size=256,
                      max_steps=5000, out_dir="runs/l96")
    trainer.fit()
    ema_network = trainer.ema_model

One module per job:

- :mod:`.trainer`      the :class:`Trainer` (the step, validation, resume);
- :mod:`.batch`        a batch to its loss, shared by training and validation;
- :mod:`.checkpoint`   atomic writes, the checksum, loading that names what
                       is wrong (:class:`CheckpointError`);
- :mod:`.fingerprint`  the configuration a checkpoint belongs to;
- :mod:`.rng`          every RNG state a run depends on;
- :mod:`.ema`          :class:`ExponentialMovingAverage`;
- :mod:`.schedule`     :func:`warmup_cosine_schedule`;
- :mod:`.data`         the data order, a function of (seed, step);
- :mod:`.logger`       the metric logs and the progress display.

Every random stream is named through :mod:`ddm_fast.seeds`.
"""
from .checkpoint import (CheckpointError, atomic_save, load_checkpoint_file,
                         save_checkpoint_file)
from .ema import ExponentialMovingAverage
from .schedule import warmup_cosine_schedule
from .trainer import CHECKPOINT_NAME, Trainer

__all__ = ["Trainer", "ExponentialMovingAverage", "atomic_save",
           "warmup_cosine_schedule", "CheckpointError", "load_checkpoint_file",
           "save_checkpoint_file", "CHECKPOINT_NAME"]
