"""The diffusion loss and the noising (docs/math.md, "The diffusion loss"
and "Conventions") and DiffusionLoss, checked on the active default backend
against formulas written out here."""
import pytest
import torch

from ddm_fast.loss import diffusion_loss

from ddm_fast import ops
from ddm_fast.loss import DiffusionLoss
from ddm_fast.parameterization import get_param
from ddm_fast.weighting import ExponentialWeighting, SigmoidWeighting


def _spec_target_and_weight(name, x, eps, gamma):
    """f* and w straight from the table of docs/math.md, "The table"
    (float64)."""
    alpha = torch.sigmoid(gamma).sqrt()
    sigma = torch.sigmoid(-gamma).sqrt()
    s_t = torch.exp(-gamma / 2)
    if name == "eps":
        return eps, torch.ones_like(gamma)
    if name == "v":
        return alpha * eps - sigma * x, alpha ** 2
    if name == "data":
        return x, alpha ** 2 / sigma ** 2
    if name == "score":
        return -eps / sigma, sigma ** 2
    if name == "flow":
        t_f = torch.sigmoid(-gamma / 2)
        return eps - x, (1 - t_f) ** 2
    if name == "edm":
        c_skip = 1 / (s_t ** 2 + 1)
        c_out = s_t / (s_t ** 2 + 1).sqrt()
        x_e = x + s_t * eps
        return (x - c_skip * x_e) / c_out, c_skip
    raise KeyError(name)


def _view(v, like):
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


@pytest.mark.parametrize("name", ["eps", "v", "data", "score", "flow", "edm"])
@pytest.mark.parametrize("masked", [False, True])
def test_diffusion_loss_matches_spec(name, masked):
    gen = torch.Generator().manual_seed(1)
    shape = (4, 3, 5, 6)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    f = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    gamma = torch.tensor([-6.0, -1.0, 2.5, 7.0], dtype=torch.float64)
    mask = (torch.rand(1, 1, 5, 6, generator=gen) > 0.3) if masked else None
    lam = SigmoidWeighting()(gamma)
    dens = torch.tensor([0.1, 0.2, 0.05, 0.3], dtype=torch.float64)
    seed, offset = 1234, 6

    loss, per_sample = diffusion_loss(f, x, gamma, seed, mask=mask, param=name,
                                          weighting=SigmoidWeighting(),
                                          density=dens, offset=offset)
    eps = ops.randn(shape, seed, offset, dtype=torch.float64)
    target, w = _spec_target_and_weight(name, x, eps, _view(gamma, x))
    err = _view(lam * w.flatten(), x) * (f - target) ** 2
    m = torch.ones(shape, dtype=torch.float64) if mask is None else \
        mask.expand(shape).double()
    want_loss = (err / _view(dens, x) * m).sum() / (m.sum() + 1e-9)
    want_ps = (err * m).sum((1, 2, 3)) / (m.sum((1, 2, 3)) + 1e-9)
    torch.testing.assert_close(loss, want_loss, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(per_sample, want_ps, rtol=1e-7, atol=1e-10)
    grad, = torch.autograd.grad(loss, f)
    want_grad, = torch.autograd.grad(want_loss, f)
    torch.testing.assert_close(grad, want_grad, rtol=1e-7, atol=1e-12)


def test_diffuse_matches_formula_and_masks():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 4, 5, generator=gen)
    gamma = torch.tensor([-3.0, 0.0, 5.0])
    mask = torch.rand(3, 1, 4, 5, generator=gen) > 0.5
    z = ops.diffuse(x, gamma, seed=77, mask=mask, offset=3)
    eps = ops.randn(x.shape, 77, 3)
    alpha, sigma = torch.sigmoid(gamma).sqrt(), torch.sigmoid(-gamma).sqrt()
    want = (_view(alpha, x) * x + _view(sigma, x) * eps) * mask
    torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-6)
    assert (z[~mask.expand_as(z)] == 0).all()


def test_diffuse_fused_encoding():
    gen = torch.Generator().manual_seed(3)
    raw = torch.randn(2, 3, 4, generator=gen) * 5 + 10
    mean = torch.tensor([9.0, 10.0, 11.0])
    std = torch.tensor([4.0, 5.0, 6.0])
    gamma = torch.tensor([1.0, -2.0])
    z = ops.diffuse(raw, gamma, seed=9, mean=mean, std=std)
    encoded = (raw - mean[None, :, None]) / std[None, :, None]
    torch.testing.assert_close(z, ops.diffuse(encoded, gamma, seed=9),
                               rtol=1e-5, atol=1e-5)


def test_noise_independent_of_batching():
    x = torch.randn(4, 10)
    gamma = torch.linspace(-2, 2, 4)
    whole = ops.diffuse(x, gamma, seed=5)
    first = ops.diffuse(x[:2], gamma[:2], seed=5, offset=0)
    second = ops.diffuse(x[2:], gamma[2:], seed=5, offset=20)
    torch.testing.assert_close(torch.cat([first, second]), whole)


def test_loss_is_independent_of_prediction_outside_mask():
    x = torch.randn(2, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 1, 0]], dtype=torch.bool)
    f = torch.randn(2, 6, dtype=torch.float64)
    g = f.clone()
    g[:, ~mask[0]] = 1e6
    gamma = torch.tensor([0.0, 1.0])
    a = diffusion_loss(f, x, gamma, 3, mask=mask)
    b = diffusion_loss(g, x, gamma, 3, mask=mask)
    torch.testing.assert_close(a, b)


def test_diffusion_loss_errors():
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="prediction"):
        diffusion_loss(torch.randn(2, 4), x, torch.zeros(2), 1)
    with pytest.raises(ValueError, match="gamma must hold one value per sample"):
        diffusion_loss(torch.randn(2, 5), x, torch.zeros(3), 1)
    with pytest.raises(TypeError, match="seed"):
        diffusion_loss(torch.randn(2, 5), x, torch.zeros(2), 1.5)
    with pytest.raises(ValueError, match="mask of shape"):
        diffusion_loss(torch.randn(2, 5), x, torch.zeros(2), 1,
                           mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match="param must be one of"):
        diffusion_loss(torch.randn(2, 5), x, torch.zeros(2), 1, param="x0")
    with pytest.raises(TypeError, match="latent must be a floating-point"):
        ops.diffuse(torch.ones(2, 5, dtype=torch.long), torch.zeros(2), 1)
    with pytest.raises(ValueError, match="seed must lie in"):
        ops.diffuse(x, torch.zeros(2), -1)


class _LinearScheduler(torch.nn.Module):
    """Minimal scheduler so this test does not depend on ddm_fast.scheduler."""

    gamma_min, gamma_max = -10.0, 10.0

    def forward(self, t):
        return self.gamma_max - t * (self.gamma_max - self.gamma_min)

    def get_density(self, gamma):
        return torch.full_like(gamma, 1 / (self.gamma_max - self.gamma_min))

    def update(self, gamma, target, process_group=None):
        self.last = (gamma, target)


def test_diffusion_loss_module_end_to_end():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8))

    def network(z, normalized_gamma, mask=None):
        assert normalized_gamma.shape == (z.shape[0], 1)
        assert ((normalized_gamma >= 0) & (normalized_gamma <= 1)).all()
        return net(z)

    sched = _LinearScheduler()
    loss_fn = DiffusionLoss(sched, param="v", weighting=ExponentialWeighting())
    x = torch.randn(6, 8)
    mask = torch.rand(1, 8) > 0.2
    t = torch.linspace(0.05, 0.95, 6)
    out = loss_fn(network, x, mask=mask, seed=11, time=t)
    gamma = sched(t)
    z = ops.diffuse(x, gamma, 11, mask=mask)
    torch.testing.assert_close(out.noised, z)
    want, want_ps = diffusion_loss(net(z), x, gamma, 11, mask=mask, param="v",
                                       weighting=ExponentialWeighting(),
                                       density=sched.get_density(gamma))
    torch.testing.assert_close(out.loss, want)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in net.parameters())
    loss_fn.update_scheduler(out)
    torch.testing.assert_close(sched.last[1], want_ps.detach())


def test_diffusion_loss_module_errors():
    with pytest.raises(TypeError, match="scheduler"):
        DiffusionLoss(torch.nn.Identity())
    loss_fn = DiffusionLoss(_LinearScheduler())
    with pytest.raises(ValueError, match="denoising_network .*must return"):
        loss_fn(lambda z, normalized_gamma, mask=None: z[:, :3], torch.randn(2, 5),
                seed=1)


def test_low_precision_latent_keeps_float32_times():
    seen = {}

    class Recorder(_LinearScheduler):
        def forward(self, t):
            seen["dtype"] = t.dtype
            return super().forward(t)

    x = torch.randn(4, 6).to(torch.bfloat16)
    out = DiffusionLoss(Recorder())(lambda z, normalized_gamma, mask=None: z, x, seed=3)
    assert seen["dtype"] == torch.float32
    assert out.gamma.dtype == torch.float32 and torch.isfinite(out.loss)
