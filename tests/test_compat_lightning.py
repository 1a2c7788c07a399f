"""ddm_fast inside PyTorch Lightning, as the toolbox's users run it.

Two LightningModules written here in the style of the toolbox's users (our
own code): an unconditional model like the toolbox's Lorenz-96 example,
and a sea-ice-style residual model built from hydra-style configurations
like diffusion-nextsim-regional's. Each trains two steps with a real
``lightning.Trainer`` on tiny CPU data, with the toolbox's
``EvaluateSchedulerCallback``; the sea-ice model then samples with a land
mask. Lightning is a test dependency; without it this module is skipped.
"""
from __future__ import annotations

import importlib
import math
import warnings

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from ddm_fast import utils                                       # noqa: E402
from ddm_fast.callbacks import Callback, EvaluateSchedulerCallback  # noqa
from ddm_fast.scheduler import LinearScheduler                  # noqa: E402
from ddm_fast.weighting import ELBOWeighting                    # noqa: E402

TOOLBOX_KEYS = ["scheduler/logSNR", "scheduler/density", "scheduler/signal"]
PNG_NAMES = ("scheduler_logsnr", "scheduler_density", "scheduler_signal")


def instantiate(config, **overrides):
    """A minimal hydra ``instantiate`` (recursive on ``_target_`` dicts);
    ddm_dynamical targets resolve in ddm_fast after the one-line swap."""
    def build(value):
        if isinstance(value, dict) and "_target_" in value:
            return instantiate(value)
        return value
    config = {key: build(value) for key, value in config.items()}
    config.update(overrides)
    module_name, _, class_name = config.pop("_target_").rpartition(".")
    module_name = module_name.replace("ddm_dynamical", "ddm_fast", 1)
    return getattr(importlib.import_module(module_name), class_name)(**config)


class ImageLogger(pl.loggers.Logger):
    """A logger with ``log_image`` (like Weights & Biases) that records."""

    def __init__(self):
        super().__init__()
        self.images = []

    @property
    def name(self):
        return "images"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images))


def fit(module, data, tmp_path, logger, callbacks, max_steps=2):
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=logger,
        callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
        val_check_interval=1, limit_val_batches=1, num_sanity_val_steps=1,
        default_root_dir=str(tmp_path), deterministic=True)
    with warnings.catch_warnings():
        # Lightning's advice on worker counts and logging intervals
        warnings.filterwarnings("ignore", module="lightning")
        trainer.fit(module, loader, loader)
    return trainer


# ------------------------------------------ the Lorenz-96-style module
class TinyDenoiser(torch.nn.Module):
    """Conv over a 1-D state, conditioned on the embedded noise level."""

    def __init__(self, channels=1, hidden=8, extra_in=0):
        super().__init__()
        from ddm_fast.layers import SinusoidalEmbedding
        self.embedding = SinusoidalEmbedding(16)
        self.film = torch.nn.Linear(16, hidden)
        self.conv_in = torch.nn.Conv1d(channels + extra_in, hidden, 3,
                                       padding=1)
        self.conv_out = torch.nn.Conv1d(hidden, channels, 3, padding=1)

    def forward(self, in_tensor, normalized_gamma, mask=None, **kwargs):
        shape = in_tensor.shape
        flat = in_tensor.reshape(shape[0], shape[1], -1)
        hidden = torch.relu(self.conv_in(flat) +
                            self.film(self.embedding(normalized_gamma))[..., None])
        out = self.conv_out(hidden)
        return out.reshape(shape[0], -1, *shape[2:])


class UnconditionalModel(pl.LightningModule):
    """The toolbox example's training logic (its Lorenz-96 module)."""

    def __init__(self, scheduler, encoder, weighting=None):
        super().__init__()
        self.network = TinyDenoiser()
        self.scheduler = scheduler
        self.encoder = encoder
        self.weighting = weighting or ELBOWeighting()
        self.gamma_min = scheduler.gamma_min
        self.gamma_max = scheduler.gamma_max

    def estimate_loss(self, batch, prefix):
        data, mask = batch["data"], batch["mask"]
        noise = torch.randn_like(data)
        gamma = self.scheduler(utils.sample_time(data))
        noise_var = torch.sigmoid(-gamma)
        latent = self.encoder(data, mask=mask)
        noised = (1 - noise_var).sqrt() * latent + noise_var.sqrt() * noise
        norm_gamma = utils.normalize_gamma(gamma.detach(), self.gamma_min,
                                           self.gamma_max)
        prediction = self.network(noised, normalized_gamma=norm_gamma.view(
            -1, 1), mask=mask)
        weighted_error = self.weighting(gamma) * (prediction - noise).pow(2)
        loss = utils.masked_average(
            weighted_error / self.scheduler.get_density(gamma), mask)
        self.log(f"{prefix}/loss", loss, batch_size=data.size(0))
        return {"loss": loss, "gamma": gamma,
                "weighted_error": weighted_error}

    def training_step(self, batch, batch_idx):
        return self.estimate_loss(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self.estimate_loss(batch, "val")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        target = utils.masked_average(
            outputs["weighted_error"].detach(), batch["mask"],
            dim=tuple(range(1, outputs["weighted_error"].dim())))
        self.scheduler.update(outputs["gamma"].squeeze(), target)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class DictData(torch.utils.data.Dataset):
    def __init__(self, **tensors):
        self.tensors = tensors

    def __len__(self):
        return next(iter(self.tensors.values())).shape[0]

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.tensors.items()}


def lorenz_like_data(n=8, grid=16):
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(n, 1, grid, generator=gen) * 2 + 2.3
    mask = torch.ones(n, 1, grid)
    mask[:, :, :3] = 0
    return DictData(data=data, mask=mask)


def make_unconditional():
    from ddm_fast.encoder import GaussianEncoder
    from ddm_fast.scheduler import BinarizedScheduler
    pl.seed_everything(0, verbose=False)
    return UnconditionalModel(BinarizedScheduler(gamma_min=-10, gamma_max=10),
                              GaussianEncoder(mean=2.3, std=2.))


def test_callbacks_are_lightning_callbacks():
    assert isinstance(EvaluateSchedulerCallback(), pl.Callback)
    assert isinstance(Callback(), pl.Callback)


def test_scheduler_callback_logs_images_like_the_toolbox(tmp_path):
    module = make_unconditional()
    bins_before = module.scheduler.bin_values.clone()
    logger = ImageLogger()
    trainer = fit(module, lorenz_like_data(), tmp_path, [logger],
                  [EvaluateSchedulerCallback(n_steps=33)])
    assert trainer.global_step == 2
    # the scheduler learnt from both steps through the module's hook
    assert not torch.equal(module.scheduler.bin_values, bins_before)
    # sanity check + a validation after each of the two steps, three
    # figures each, under the toolbox's keys, one figure per call
    keys = [key for key, _ in logger.images]
    assert keys == TOOLBOX_KEYS * 3
    assert all(len(images) == 1 and hasattr(images[0], "savefig")
               for _, images in logger.images)
    density = [images[0] for key, images in logger.images
               if key == "scheduler/density"][-1]
    gamma, values = density.axes[0].lines[0].get_data()
    with torch.no_grad():
        expected = module.scheduler.get_density(
            torch.as_tensor(gamma, dtype=torch.float32))
    torch.testing.assert_close(torch.as_tensor(values, dtype=torch.float32),
                               expected.float())


def test_scheduler_callback_writes_pngs_for_a_csv_logger(tmp_path):
    module = make_unconditional()
    logger = pl.loggers.CSVLogger(str(tmp_path), name="csv")
    trainer = fit(module, lorenz_like_data(), tmp_path, logger,
                  [EvaluateSchedulerCallback(n_steps=17, every=2)])
    written = sorted(p.name for p in
                     (tmp_path / "csv" / "version_0" / "scheduler").iterdir())
    # every=2: the sanity check (step 0) and the second validation (step 2)
    assert written == sorted(f"{name}_step{step:06d}.png"
                             for name in PNG_NAMES for step in (0, 2))
    assert trainer.log_dir == str(tmp_path / "csv" / "version_0")


def test_scheduler_callback_without_logger_or_scheduler_does_nothing(tmp_path):
    module = make_unconditional()
    fit(module, lorenz_like_data(), tmp_path, False,
        [EvaluateSchedulerCallback(n_steps=9)], max_steps=1)
    assert not list(tmp_path.rglob("*.png"))


# ------------------------------------------------ the sea-ice-style module
def residual_preprocessing(in_data, alpha, sigma, gamma, mask, encoded,
                           **conditioning):
    """The sea-ice model's pre_func: it names ``mask`` explicitly."""
    return torch.cat((in_data, encoded), dim=1)


SEA_ICE_CONFIG = {
    "scheduler": {"_target_": "ddm_dynamical.scheduler.BinarizedScheduler",
                  "n_bins": 100, "gamma_min": -10, "gamma_max": 10,
                  "ema_rate": 0.999},
    "sampler": {"_target_": "ddm_dynamical.sampler.HeunSampler",
                "timesteps": 4, "grad_scale": 1., "heun": True,
                "pbar": False,
                "scheduler": {
                    "_target_": "ddm_dynamical.scheduler.EDMSamplingScheduler",
                    "rho": 7, "sigma_min": 0.002, "sigma_max": 80,
                    "gamma_min": -10, "gamma_max": 15}},
    "param": {"_target_": "ddm_dynamical.parameterization.VParam"},
    "encoder": {"_target_": "ddm_dynamical.encoder.GaussianEncoder",
                "mean": torch.tensor([1.7, 0.9]),
                "std": torch.tensor([0.75, 0.18])},
    "decoder": {"_target_": "ddm_dynamical.decoder.GaussianDecoder",
                "stochastic": False, "mean": torch.tensor([0., 0.]),
                "std": torch.tensor([0.11, 0.03]), "lower_bound": 0.},
}


class SeaIceModel(pl.LightningModule):
    """A residual diffusion model in the style of the sea-ice surrogate."""

    def __init__(self, config):
        super().__init__()
        self.network = TinyDenoiser(channels=2, extra_in=2)
        # the sampler samples with an EMA copy, which it freezes
        self.ema_model = torch.optim.swa_utils.AveragedModel(
            self.network, multi_avg_fn=torch.optim.swa_utils
            .get_ema_multi_avg_fn(0.999))
        self.scheduler = instantiate(config["scheduler"])
        self.clim_scheduler = LinearScheduler(
            gamma_min=self.scheduler.gamma_min,
            gamma_max=self.scheduler.gamma_max)
        self.param = instantiate(config["param"])
        self.weighting = ELBOWeighting()
        self.sampler = instantiate(
            config["sampler"], pre_func=residual_preprocessing,
            param=self.param, denoising_network=self.ema_model)
        self.sampler.gamma_min = self.gamma_min = self.scheduler.gamma_min
        self.sampler.gamma_max = self.gamma_max = self.scheduler.gamma_max
        self.sampler.requires_grad_(False)
        self.encoder = instantiate(config["encoder"])
        self.decoder = instantiate(config["decoder"])

    def forward(self, state, mask):
        encoded = self.encoder(state, mask)           # land -> 0, NaN included
        dynamics = self.sampler.sample(state.shape, encoded=encoded,
                                       mask=mask, first_guess=state)
        return self.decoder(dynamics, first_guess=state, mask=mask)

    def estimate_loss(self, batch, prefix):
        state, target, mask = batch["state"], batch["target"], batch["mask"]
        residual = (target - state - self.decoder.mean.view(1, -1, 1, 1)) / \
            self.decoder.std.view(1, -1, 1, 1)
        noise = torch.randn_like(residual)
        gamma = self.scheduler(utils.sample_time(residual))
        alpha, sigma = torch.sigmoid(gamma).sqrt(), torch.sigmoid(-gamma).sqrt()
        noised = alpha * residual + sigma * noise
        in_tensor = torch.cat((noised, self.encoder(state, mask)), dim=1)
        prediction = self.network(in_tensor, normalized_gamma=(
            (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)
        ).view(-1, 1))
        error = self.param.estimate_errors(prediction, in_data=noised,
                                           target=residual, noise=noise,
                                           alpha=alpha, sigma=sigma,
                                           gamma=gamma)
        weighted = self.weighting(gamma) * error
        loss = 0.5 * torch.mean(weighted / self.scheduler.get_density(gamma))
        self.log(f"{prefix}/loss", loss, batch_size=state.size(0))
        return {"loss": loss, "gamma": gamma, "weighted_diff_error": weighted}

    def training_step(self, batch, batch_idx):
        return self.estimate_loss(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self.estimate_loss(batch, "val")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.scheduler.update(outputs["gamma"].view(-1), torch.mean(
            outputs["weighted_diff_error"].detach(), dim=(1, 2, 3)))

    def on_before_zero_grad(self, optimizer):
        self.ema_model.update_parameters(self.network)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.network.parameters(), lr=2e-4)


def sea_ice_data(n=8, grid=6):
    gen = torch.Generator().manual_seed(1)
    state = torch.rand(n, 2, grid, grid, generator=gen) + 0.5
    target = state + 0.05 * torch.randn(n, 2, grid, grid, generator=gen)
    mask = torch.ones(n, 1, grid, grid)
    mask[:, :, :2, :2] = 0                                 # land
    return DictData(state=state, target=target, mask=mask)


def test_sea_ice_style_model_trains_two_steps_from_configs(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = SeaIceModel(SEA_ICE_CONFIG)
    logger = ImageLogger()
    trainer = fit(model, sea_ice_data(), tmp_path, [logger],
                  [EvaluateSchedulerCallback(n_steps=17)])
    assert trainer.global_step == 2
    assert [key for key, _ in logger.images] == TOOLBOX_KEYS * 3
    assert all(math.isfinite(float(v)) for v in
               trainer.callback_metrics.values())


def test_sea_ice_style_model_samples_masked(tmp_path):
    """Needs the samplers to hand ``mask`` to pre_func (issue 11, item 2)."""
    pl.seed_everything(0, verbose=False)
    model = SeaIceModel(SEA_ICE_CONFIG)
    data = sea_ice_data(n=2)
    state, mask = data.tensors["state"], data.tensors["mask"]
    state = torch.where(mask != 0, state, torch.full_like(state, math.nan))
    decoded = model(state, mask)
    assert decoded.shape == state.shape
    assert torch.isfinite(decoded).all()
    assert (decoded[:, :, :2, :2] == 0).all()               # land zeroed
    assert (decoded[mask.expand_as(decoded) != 0] >= 0).all()  # lower bound
