"""Seeds held on the device (``ddm_fast.seeds.seed_word``).

Every backend's four primitives take the seed of their noise by value or as
a seed word, a one-element int64 tensor the kernel reads when it runs: what
lets one captured CUDA graph draw fresh noise on every replay. The same seed
must give the same noise bitwise either way, and an in-place update of the
word must change the noise of the next call.
"""
import pytest
import torch

from ddm_fast import backends
from ddm_fast.seeds import kernel_seed, seed_word

from conftest import BACKENDS, device_for

SEED = 2 ** 40 + 12345


def _primitives(module, device, seed):
    x = torch.randn(3, 37, generator=torch.Generator().manual_seed(0)).to(device)
    mask = (torch.arange(37, device=device) % 5 != 0).to(torch.uint8).expand(3, 37).contiguous()
    coeffs = torch.tensor([[1.0, 0.5], [0.0, 2.0], [-1.0, 1.0]], device=device)
    return {
        "randn": module.randn(203, seed, 6, torch.float32, device),
        "affine": module.affine(x, None, None, coeffs, None, mask, seed, 6,
                                False, torch.float32)[0],
        "affine_sum": module.affine_sum(x, None, None, coeffs, mask, seed, 6, 2,
                                        False),
        "affine_dots": module.affine_dots(x, None, None, None, coeffs, mask,
                                          seed, 6, False, 2),
    }


@pytest.mark.parametrize("name", BACKENDS)
def test_seed_word_gives_the_noise_of_its_seed(name):
    module, device = backends._module(name), device_for(name)
    by_value = _primitives(module, device, SEED)
    word = seed_word(SEED, device)
    in_memory = _primitives(module, device, word)
    for primitive, expected in by_value.items():
        assert torch.equal(in_memory[primitive], expected), primitive
    # an in-place update is what a graph replay sees: new seed, new noise
    word.fill_(SEED + 1)
    updated = _primitives(module, device, word)
    expected = _primitives(module, device, SEED + 1)
    for primitive in by_value:
        assert torch.equal(updated[primitive], expected[primitive]), primitive
        assert not torch.equal(updated[primitive], by_value[primitive]), primitive


def test_seed_word_is_checked():
    cpu = torch.device("cpu")
    assert kernel_seed(7, cpu) == (7, None)
    with pytest.raises(ValueError, match="one-element int64"):
        kernel_seed(torch.tensor([7], dtype=torch.int32), cpu)
    with pytest.raises(ValueError, match="one-element int64"):
        kernel_seed(torch.tensor([7, 8]), cpu)
    with pytest.raises(ValueError, match="the seed word is on"):
        kernel_seed(torch.tensor([7], device="meta"), cpu)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        seed_word(-1)


def test_public_ops_take_a_seed_word_outside_autograd():
    from ddm_fast import ops
    x = torch.randn(4, 33)
    coeffs = torch.randn(4, 2)
    word = seed_word(SEED)
    assert torch.equal(ops.randn((4, 33), word, 5), ops.randn((4, 33), SEED, 5))
    assert torch.equal(ops.affine([x], coeffs, seed=word, offset=5),
                       ops.affine([x], coeffs, seed=SEED, offset=5))
    with torch.no_grad():
        assert torch.equal(ops.affine_sum([x.requires_grad_()], coeffs, seed=word),
                           ops.affine_sum([x], coeffs, seed=SEED))
    with pytest.raises(ValueError, match="where gradients flow"):
        ops.affine([x], coeffs, seed=word)  # x requires grad
    with pytest.raises(ValueError, match="seed word"):
        ops.affine([x.detach()], coeffs, seed=torch.tensor([1.0]))
