"""SinusoidalEmbedding and RandomFourierLayer."""
import math

import pytest
import torch

from ddm_fast.layers import RandomFourierLayer, SinusoidalEmbedding


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5),
                                       (torch.float64, 1e-6)])
def test_sinusoidal_embedding_values(dtype, tol):
    dim, scale, max_freq = 8, 2.0, 100.0
    layer = SinusoidalEmbedding(dim, scale=scale, max_freq=max_freq)
    x = torch.tensor([0.0, 0.5, -3.0, 17.0], dtype=dtype)
    out = layer(x)
    assert out.shape == (4, dim) and out.dtype == dtype
    # frequency k = max_freq^(-k / (dim/2 - 1)) / scale, written out by hand.
    freqs = [max_freq ** (-k / 3) / scale for k in range(4)]
    for b, value in enumerate(x.tolist()):
        expected = [math.sin(value * f) for f in freqs] + \
                   [math.cos(value * f) for f in freqs]
        torch.testing.assert_close(out[b], torch.tensor(expected, dtype=dtype),
                                   atol=tol, rtol=0)
    torch.testing.assert_close(layer(x[:, None]), out)


def test_sinusoidal_embedding_buffer_and_errors():
    layer = SinusoidalEmbedding(16)
    assert "frequencies" in layer.state_dict()
    assert layer.to(torch.float64).frequencies.dtype == torch.float64
    for bad_dim in (2, 7, 0):
        with pytest.raises(ValueError, match="dim"):
            SinusoidalEmbedding(bad_dim)
    with pytest.raises(TypeError, match="dim"):
        SinusoidalEmbedding(8.0)
    with pytest.raises(ValueError, match="scale"):
        SinusoidalEmbedding(8, scale=0.0)
    with pytest.raises(ValueError, match="max_freq"):
        SinusoidalEmbedding(8, max_freq=-1.0)
    with pytest.raises(ValueError, match="in_tensor"):
        layer(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="in_tensor"):
        layer(torch.zeros(3, 1, 2))
    with pytest.raises(TypeError, match="in_tensor"):
        layer(torch.zeros(3, dtype=torch.long))


def test_random_fourier_layer_values():
    gen = torch.Generator().manual_seed(4)
    layer = RandomFourierLayer(3, 10, wave_length=2.0, generator=gen)
    assert layer.weights.shape == (3, 5) and not layer.weights.requires_grad
    assert "weights" in layer.state_dict()
    coords = torch.randn(6, 3, generator=gen)
    out = layer(coords)
    assert out.shape == (6, 10)
    phase = 2 * math.pi * (coords / 2.0) @ layer.weights
    expected = math.sqrt(2 / 10) * torch.cat([phase.sin(), phase.cos()], dim=-1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # sin^2 + cos^2 = 1 per frequency: every feature vector has unit norm.
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(6))
    # Leading dimensions are kept.
    torch.testing.assert_close(layer(coords.view(2, 3, 3)), out.view(2, 3, 10))
    torch.testing.assert_close(layer.extract_features(coords), out)


def test_random_fourier_layer_generator_and_scalar_input():
    first = RandomFourierLayer(1, 8, generator=torch.Generator().manual_seed(9))
    second = RandomFourierLayer(1, 8, generator=torch.Generator().manual_seed(9))
    other = RandomFourierLayer(1, 8, generator=torch.Generator().manual_seed(10))
    assert torch.equal(first.weights, second.weights)
    assert not torch.equal(first.weights, other.weights)
    x = torch.tensor([0.1, 0.7])
    torch.testing.assert_close(first(x), first(x[:, None]))
    assert first(x).shape == (2, 8)
    assert not any(p.requires_grad for p in first.parameters())


def test_random_fourier_layer_errors():
    with pytest.raises(ValueError, match="n_neurons"):
        RandomFourierLayer(3, 7)
    with pytest.raises(ValueError, match="in_features"):
        RandomFourierLayer(0, 8)
    with pytest.raises(ValueError, match="wave_length"):
        RandomFourierLayer(3, 8, wave_length=0.0)
    with pytest.raises(TypeError, match="generator"):
        RandomFourierLayer(3, 8, generator=5)
    layer = RandomFourierLayer(3, 8)
    with pytest.raises(ValueError, match="in_features"):
        layer(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="in_features"):
        layer(torch.zeros(5))


def test_sinusoidal_embedding_broadcasts_trailing_one_like_the_toolbox():
    # A per-sample gamma kept in the data's (B, 1, 1, 1) shape embeds to
    # (B, 1, 1, dim), each sample's embedding that of its scalar.
    layer = SinusoidalEmbedding(16)
    x = torch.tensor([0.1, 0.7, -2.0])
    flat = layer(x)
    assert flat.shape == (3, 16)
    four_d = layer(x.view(3, 1, 1, 1))
    assert four_d.shape == (3, 1, 1, 16)
    torch.testing.assert_close(four_d.view(3, 16), flat, rtol=0, atol=0)
    torch.testing.assert_close(layer(x.view(3, 1, 1)).view(3, 16), flat,
                               rtol=0, atol=0)
