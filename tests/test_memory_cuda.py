"""Peak GPU memory of a training step: the fused ops keep no noise tensor
(docs/math.md, "Counter-based noise"), so a step built from diffuse +
diffusion_loss peaks at least one data-sized tensor below the eager chain
that stores eps for the backward."""
import pytest
import torch

from ddm_fast.loss import diffusion_loss

from ddm_fast import backends, ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SHAPE = (16, 8, 256, 256)


def _peak_extra(step):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def test_fused_step_peaks_below_eager_step():
    device = torch.device("cuda")
    latent = torch.randn(SHAPE, device=device)
    mask = torch.rand(1, 1, *SHAPE[2:], device=device) > 0.3
    gamma = torch.linspace(-5, 5, SHAPE[0], device=device)
    shift = torch.zeros((), device=device, requires_grad=True)
    view = (SHAPE[0], 1, 1, 1)

    def eager_step():
        alpha, sigma = torch.sigmoid(gamma).sqrt(), torch.sigmoid(-gamma).sqrt()
        noise = torch.randn_like(latent)
        z = (alpha.view(view) * latent + sigma.view(view) * noise) * mask
        prediction = z + shift
        loss = ((prediction - noise) ** 2 * mask).sum() / mask.expand_as(z).sum()
        loss.backward()

    def fused_step():
        z = ops.diffuse(latent, gamma, 17, mask=mask)
        prediction = z + shift
        loss, _ = diffusion_loss(prediction, latent, gamma, 17, mask=mask)
        loss.backward()

    with backends.use("triton"):
        fused_step()  # compile and autotune outside the measurement
        fused = _peak_extra(fused_step)
    eager_step()
    eager = _peak_extra(eager_step)
    tensor_bytes = latent.numel() * latent.element_size()
    assert fused <= eager - tensor_bytes, (fused / tensor_bytes, eager / tensor_bytes)
