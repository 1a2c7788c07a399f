"""Robustness of the ops, the loss and the weightings: land never poisons
the ocean, reductions do not depend on the thread count, and bad arguments
are refused at the boundary with an error that names them.

1. NaN, +Inf and -Inf under land (masked positions) of the latent and the
   prediction reach no value and no gradient, on every backend and for every
   mask layout: the results equal, bit for bit, those with 0 under land.
2. The loss, its gradients and the masked means are bitwise equal under 1
   and 2 threads, with fewer rows than threads.
3. A table of bad arguments, each with the error type and the argument name
   the message must carry.
"""
from __future__ import annotations

import pytest
import torch

from ddm_fast import backends, ops
from ddm_fast.loss import DiffusionLoss, diffusion_loss
from ddm_fast.scheduler import LinearScheduler
from ddm_fast.training import ExponentialMovingAverage, Trainer, warmup_cosine_schedule
from ddm_fast.training.batch import batch_loss
from ddm_fast.utils import masked_average
from ddm_fast.weighting import (EDMWeighting, ELBOWeighting,
                                ExponentialWeighting, SigmoidWeighting)
from conftest import BACKENDS, HAS_CUDA, device_for

SHAPE = (3, 2, 5, 6)
MASK_SHAPES = {
    "full": SHAPE,
    "(1,1,H,W)": (1, 1, 5, 6),
    "(B,1,H,W)": (3, 1, 5, 6),
    "(B,1,H,1)": (3, 1, 5, 1),   # not a kernel layout: expanded once
}


LAND_VALUES = torch.tensor([float("nan"), float("inf"), float("-inf")])


def _land_case(mask_name, device):
    """(latent, prediction, mask, land) with NaN, +Inf and -Inf (in turn)
    under land; the (B,1,H,1) mask also masks whole rows of the grid."""
    gen = torch.Generator().manual_seed(11)
    mask = torch.rand(MASK_SHAPES[mask_name], generator=gen) > 0.35
    mask.view(-1)[0] = False
    land = ~mask.expand(SHAPE)
    poison = LAND_VALUES[torch.arange(land.numel()) % 3].reshape(SHAPE)
    latent = torch.where(land, poison, torch.randn(SHAPE, generator=gen))
    prediction = torch.where(land, poison.roll(1), torch.randn(SHAPE, generator=gen))
    return latent.to(device), prediction.to(device), mask.to(device), land.to(device)


def _everything(latent, prediction, mask, device):
    """Values and gradients of every op that reads masked data."""
    latent = latent.clone().requires_grad_()
    prediction = prediction.clone().requires_grad_()
    gamma = torch.tensor([-3.0, 0.5, 4.0], device=device, requires_grad=True)
    noised = ops.diffuse(latent, gamma, 5, mask, offset=3)
    encoded = ops.diffuse(latent, gamma, 5, mask, mean=0.5,
                          std=torch.tensor([2.0, 0.5], device=device))
    loss, per_sample = diffusion_loss(prediction, latent, gamma, 5, mask,
                                      param="v", weighting=SigmoidWeighting(),
                                      offset=3)
    mean_trailing = ops.masked_mean(latent, mask, dim=(1, 2, 3))
    mean_other = ops.masked_mean(latent, mask, dim=(0, 2))
    average = masked_average(latent, mask, dim=(2, 3))
    total = (loss + per_sample.sum() + (noised * 0.3).sum() + encoded.sum()
             + mean_trailing.sum() + mean_other.sum() + average.sum())
    grads = torch.autograd.grad(total, [latent, prediction, gamma])
    return [noised, encoded, loss, per_sample, mean_trailing, mean_other,
            average, *grads]


# Triton's interpreter is slow: on CPU it runs the two kernel mask modes
# (the data's layout, "full"; the (O, 1, I) layout, "(1,1,H,W)") and leaves
# the layouts that reduce to them ((B,1,H,W): (O, 1, I); (B,1,H,1): expanded
# to the full shape) to the GPU runs.
LAND_CASES = [(name, mask_name) for name in BACKENDS for mask_name in MASK_SHAPES
              if HAS_CUDA or name != "triton"
              or mask_name in ("full", "(1,1,H,W)")]


@pytest.mark.parametrize("name,mask_name", LAND_CASES)
def test_land_reaches_no_value_and_no_gradient(name, mask_name):
    device = device_for(name)
    with backends.use(name):
        _check_land_case(mask_name, device)


def _check_land_case(mask_name, device):
    latent, prediction, mask, land = _land_case(mask_name, device)
    poisoned = _everything(latent, prediction, mask, device)
    clean = _everything(latent.masked_fill(land, 0.0),
                        prediction.masked_fill(land, 0.0), mask, device)
    for name, got, want in zip(
            ["noised", "encoded", "loss", "per_sample", "masked_mean(1,2,3)",
             "masked_mean(0,2)", "masked_average", "grad latent",
             "grad prediction", "grad gamma"], poisoned, clean):
        assert torch.isfinite(got).all(), name
        assert torch.equal(got, want), name
    grad_latent, grad_prediction = poisoned[7], poisoned[8]
    assert (grad_latent[land] == 0).all() and (grad_prediction[land] == 0).all()
    assert (poisoned[0][land] == 0).all()


def test_learnable_scheduler_gets_no_land_gradient(backend, device):
    """Through DiffusionLoss: the network's weights and the learnable
    scheduler bounds get the gradients they get with 0 under land."""
    latent, _, mask, land = _land_case("(B,1,H,W)", device)

    def run(data):
        torch.manual_seed(0)
        network = torch.nn.Conv2d(2, 2, 3, padding=1).to(device)
        loss_fn = DiffusionLoss(LinearScheduler(-6.0, 6.0, learnable=True),
                                param="eps").to(device)
        time = torch.tensor([0.1, 0.5, 0.9], device=device)
        out = loss_fn(lambda z, normalized_gamma, mask: network(z), data,
                      mask=mask, seed=3, time=time)
        params = [*network.parameters(), *loss_fn.parameters()]
        return [out.loss, *torch.autograd.grad(out.loss, params)]

    for got, want in zip(run(latent), run(latent.masked_fill(land, 0.0))):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_large_offsets_run_on_every_backend(backend, device):
    """An offset near the top of the int64 noise index works on every
    backend (no schema error) and gives the reference's noise."""
    x = torch.zeros(2, 3, device=device)
    offset = 2 ** 63 - 1 - x.numel()
    got = ops.diffuse(x, torch.zeros(2, device=device), 9, offset=offset)
    with backends.use("reference"):
        want = ops.diffuse(x.cpu(), torch.zeros(2), 9, offset=offset)
    torch.testing.assert_close(got.cpu(), want, rtol=2e-6, atol=2e-6)


# ------------------------------------------------------------ thread count
def _reductions(device):
    gen = torch.Generator().manual_seed(2)
    shape = (1, 1, 300, 400)     # one row, far more elements than a grain
    latent = torch.randn(shape, generator=gen).to(device).requires_grad_()
    prediction = torch.randn(shape, generator=gen).to(device).requires_grad_()
    mask = (torch.rand(shape, generator=gen) > 0.3).to(device)
    gamma = torch.tensor([0.7], device=device, requires_grad=True)
    loss, per_sample = diffusion_loss(prediction, latent, gamma, 4, mask,
                                      param="v")
    grads = torch.autograd.grad(loss, [prediction, latent, gamma])
    return [loss, per_sample, *grads,
            ops.masked_mean(latent.detach(), mask),
            ops.masked_mean(latent.detach(), mask, dim=(0, 2)),
            masked_average(latent.detach(), mask)]


# Backends whose reductions run on torch's CPU threads (the Triton
# interpreter runs NumPy, whatever torch.set_num_threads says).
THREADED = [name for name in BACKENDS if name in ("reference", "cpu")]


@pytest.mark.parametrize("name", THREADED)
def test_reductions_do_not_depend_on_the_thread_count(name):
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    try:
        with backends.use(name):
            torch.set_num_threads(1)
            one = _reductions(device)
            torch.set_num_threads(2)
            two = _reductions(device)
    finally:
        torch.set_num_threads(threads)
    for index, (a, b) in enumerate(zip(one, two)):
        assert torch.equal(a, b), index


# ------------------------------------------------------------ bad arguments
X = torch.randn(2, 3, 4)
G = torch.zeros(2)


class WrongShape(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)

    def forward(self, z, normalized_gamma=None, mask=None):
        return self.layer(z)


def _trainer(**changes):
    options = dict(network=torch.nn.Linear(4, 4),
                   loss_fn=DiffusionLoss(LinearScheduler()),
                   train_data={"data": torch.randn(8, 4)}, batch_size=4,
                   max_steps=2, device="cpu", progress=False, out_dir=None)
    options.update(changes)
    network, loss_fn, data = (options.pop(k) for k in
                              ("network", "loss_fn", "train_data"))
    return Trainer(network, loss_fn, data, **options)


def _fit_wrong_shape(tmp_path):
    _trainer(network=WrongShape(), train_data={"data": torch.randn(8, 2, 4)},
             out_dir=str(tmp_path)).fit()


BAD_ARGUMENTS = {
    # values that made the result silently inf/NaN
    "diffuse std=0": (lambda: ops.diffuse(X, G, 1, std=0.0), ValueError, "std"),
    "diffuse std<0": (lambda: ops.diffuse(X, G, 1, std=-1.0), ValueError, "std"),
    "diffuse std with a zero channel": (
        lambda: ops.diffuse(X, G, 1, std=torch.tensor([1.0, 0.0, 1.0])),
        ValueError, "std"),
    "diffuse mean=nan": (lambda: ops.diffuse(X, G, 1, mean=float("nan")),
                         ValueError, "mean"),
    "diffuse std='a'": (lambda: ops.diffuse(X, G, 1, std="a"), TypeError, "std"),
    "density with a zero": (
        lambda: diffusion_loss(X, X, G, 1, density=torch.tensor([0.0, 1.0])),
        ValueError, "density"),
    "density with a NaN": (
        lambda: diffusion_loss(X, X, G, 1, density=torch.tensor([float("nan"), 1.0])),
        ValueError, "density"),
    "ExponentialWeighting(multiplier=nan)": (
        lambda: ExponentialWeighting(multiplier=float("nan")), ValueError, "multiplier"),
    "ExponentialWeighting(shift=inf)": (
        lambda: ExponentialWeighting(shift=float("inf")), ValueError, "shift"),
    "ExponentialWeighting(multiplier='a')": (
        lambda: ExponentialWeighting(multiplier="a"), TypeError, "multiplier"),
    "SigmoidWeighting(shift=nan)": (
        lambda: SigmoidWeighting(shift=float("nan")), ValueError, "shift"),
    "EDMWeighting(mean=nan)": (lambda: EDMWeighting(mean=float("nan")),
                               ValueError, "mean"),
    "EDMWeighting(scale=0)": (lambda: EDMWeighting(scale=0.0), ValueError, "scale"),
    "EDMWeighting(scale=inf)": (lambda: EDMWeighting(scale=float("inf")),
                                ValueError, "scale"),
    # errors that named the wrong thing
    "weighting(1.0)": (lambda: SigmoidWeighting()(1.0), TypeError, "gamma"),
    "weighting(integer gamma)": (lambda: ELBOWeighting()(torch.tensor([1, 2])),
                                 TypeError, "gamma"),
    "inputs=None": (lambda: ops.affine(None, torch.ones(2, 1)), TypeError, "inputs"),
    "coeffs=None": (lambda: ops.affine([X], None), TypeError, "coeffs"),
    "dim=1.0": (lambda: ops.masked_mean(X, dim=1.0), TypeError, "dim"),
    "dim='a'": (lambda: ops.masked_mean(X, dim="a"), TypeError, "dim"),
    "masked_average dim=1.0": (lambda: masked_average(X, dim=1.0), TypeError, "dim"),
    "integer gamma (diffuse)": (lambda: ops.diffuse(X, torch.tensor([1, 2]), 1),
                                TypeError, "gamma"),
    "integer gamma (loss)": (lambda: diffusion_loss(X, X, torch.tensor([1, 2]), 1),
                             TypeError, "gamma"),
    "gamma of the wrong batch size": (lambda: ops.diffuse(X, torch.zeros(3), 1),
                                      ValueError, "gamma must hold one value per sample"),
    "offset = 2**63": (lambda: ops.diffuse(X, G, 1, offset=2 ** 63), ValueError, "offset"),
    "offset + elements >= 2**63": (lambda: ops.diffuse(X, G, 1, offset=2 ** 63 - 5),
                                   ValueError, "offset"),
    "offset=-1": (lambda: ops.diffuse(X, G, 1, offset=-1), ValueError, "offset"),
    "offset=1.5": (lambda: ops.diffuse(X, G, 1, offset=1.5), ValueError, "offset"),
    "seed=None": (lambda: ops.diffuse(X, G, None), TypeError, "seed"),
    "seed=2**63": (lambda: ops.diffuse(X, G, 2 ** 63), ValueError, "seed"),
    "network=5": (lambda: _trainer(network=5), TypeError, "network"),
    "loss_fn=None": (lambda: _trainer(loss_fn=None), TypeError, "loss_fn"),
    "lr=nan": (lambda: _trainer(lr=float("nan")), ValueError, "lr"),
    "EMA decay=nan": (lambda: ExponentialMovingAverage(torch.nn.Linear(1, 1),
                                                       decay=float("nan")),
                      ValueError, "decay"),
    "schedule min_ratio=2": (lambda: warmup_cosine_schedule(1, 10, 2.0),
                             ValueError, "min_ratio"),
    "schedule total_steps=0": (lambda: warmup_cosine_schedule(1, 0),
                               ValueError, "total_steps"),
    "batch without data": (
        lambda: batch_loss(DiffusionLoss(LinearScheduler()), lambda z, **k: z,
                           None, {"x": X}, torch.rand(2), 1, 0),
        ValueError, "'data'"),
    "network output of the wrong shape": (
        lambda: batch_loss(DiffusionLoss(LinearScheduler()), WrongShape(),
                           None, {"data": torch.randn(2, 3, 4)}, torch.rand(2), 1, 0),
        ValueError, r"the network's output has shape \(2, 3, 3\)"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_argument_is_refused_with_its_name(case, tmp_path):
    call, error, pattern = BAD_ARGUMENTS[case]
    with pytest.raises(error, match=pattern):
        call()


def test_trainer_names_the_networks_wrong_output(tmp_path):
    with pytest.raises(ValueError, match="the network's output has shape"):
        _fit_wrong_shape(tmp_path)


def test_empty_batch_works_through_the_loss_module():
    """B = 0: an empty batch gives a zero loss and empty statistics, never
    an error about internal coefficient tables."""
    latent = torch.zeros(0, 2, 3, requires_grad=True)
    out = DiffusionLoss(LinearScheduler())(lambda z, **k: z * 2.0, latent)
    assert out.loss.item() == 0.0 and out.per_sample.shape == (0,)
    out.loss.backward()
    assert latent.grad.shape == latent.shape
