"""Encoders and decoders: round trips, masks, stochastic scale, EMA, losses."""
import math

import pytest
import torch
from torch.distributions import Laplace, Normal

from ddm_fast import ops
from ddm_fast.decoder import (CombinedDecoder, GaussianDecoder, LaplaceDecoder,
                              NeuralDecoder, delta_prediction, state_prediction)
from ddm_fast.encoder import CombinedEncoder, GaussianEncoder, NeuralEncoder

DECODERS = [GaussianDecoder, LaplaceDecoder]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5),
       torch.float64: dict(atol=1e-12, rtol=1e-12)}


def _land(shape=(1, 1, 4, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=gen) > 0.3
    mask[..., 0, 0] = False
    return mask


# ------------------------------------------------------------------ encoders
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_channel", [False, True])
def test_gaussian_encoder_standardises_and_masks(dtype, per_channel):
    gen = torch.Generator().manual_seed(1)
    raw = torch.randn(3, 2, 4, 5, generator=gen, dtype=dtype) * 3 + 10
    mask = _land()
    raw[:, :, 0, 0] = float("nan")        # NaN under land must become 0
    if per_channel:
        mean, std = torch.tensor([10.0, 9.0]), torch.tensor([[[3.0]], [[2.0]]])
        expected_mean = torch.tensor([10.0, 9.0], dtype=dtype).view(1, 2, 1, 1)
        expected_std = torch.tensor([3.0, 2.0], dtype=dtype).view(1, 2, 1, 1)
    else:
        mean, std = 10.0, 3.0
        expected_mean, expected_std = 10.0, 3.0
    encoder = GaussianEncoder(mean, std)
    out = encoder(raw, mask)
    expected = torch.where(mask, (raw - expected_mean) / (expected_std + 1e-9),
                           torch.zeros((), dtype=dtype))
    torch.testing.assert_close(out, expected, **TOL[dtype])
    assert out.dtype == dtype
    assert not out.isnan().any()
    # Without a mask: nothing is zeroed.
    clean = raw.nan_to_num()
    torch.testing.assert_close(encoder(clean),
                               (clean - expected_mean) / (expected_std + 1e-9),
                               **TOL[dtype])


def test_gaussian_encoder_buffers_and_fused_diffuse():
    encoder = GaussianEncoder(torch.tensor([1.0, -2.0, 0.5]),
                              torch.tensor([2.0, 0.5, 1.5]), eps=0.0)
    # mean and std are configuration, not state (ddm_dynamical's layout)
    assert set(encoder.state_dict()) == set()
    assert encoder.to(torch.float64).mean.dtype == torch.float64
    encoder = encoder.to(torch.float32)
    gen = torch.Generator().manual_seed(2)
    raw = torch.randn(2, 3, 4, 5, generator=gen) * 2 + 1
    mask = _land()
    gamma = torch.tensor([-1.0, 2.0])
    fused = ops.diffuse(raw, gamma, seed=7, mask=mask,
                        mean=encoder.mean, std=encoder.std)
    unfused = ops.diffuse(encoder(raw, mask), gamma, seed=7, mask=mask)
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)


def test_gaussian_encoder_errors():
    with pytest.raises(ValueError, match="std"):
        GaussianEncoder(0.0, -1.0)
    with pytest.raises(ValueError, match="eps"):
        GaussianEncoder(0.0, 1.0, eps=-1.0)
    with pytest.raises(ValueError, match="mean"):
        GaussianEncoder(torch.zeros(2, 3), 1.0)      # not per-channel
    with pytest.raises(ValueError, match="channels"):
        GaussianEncoder(torch.zeros(2), torch.ones(3))
    with pytest.raises(TypeError, match="mean"):
        GaussianEncoder(torch.zeros(2, dtype=torch.long), 1.0)
    encoder = GaussianEncoder(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="mean"):
        encoder(torch.zeros(2, 2, 4, 5))
    with pytest.raises(ValueError, match="mask"):
        encoder(torch.zeros(2, 3, 4, 5), torch.ones(1, 1, 4, 6))
    with pytest.raises(TypeError, match="in_tensor"):
        encoder(torch.zeros(2, 3, 4, 5, dtype=torch.long))


class _Scale(torch.nn.Module):
    """A 'network' with the toolbox call convention network(x, mask)."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor
        self.seen_mask = "unset"

    def forward(self, x, mask):
        self.seen_mask = mask
        return x * self.factor + 1.0


def test_neural_encoder():
    mask = _land()
    raw = torch.randn(2, 1, 4, 5) * 2 + 3
    network = _Scale(2.0)
    encoder = NeuralEncoder(network, GaussianEncoder(3.0, 2.0, eps=0.0))
    out = encoder(raw, mask)
    expected = torch.where(mask, (raw - 3.0) / 2.0 * 2.0 + 1.0, 0.0)
    torch.testing.assert_close(out, expected)
    assert network.seen_mask is mask
    # No physical encoder: raw goes to the network; mask may be None.
    bare = NeuralEncoder(_Scale(3.0))
    torch.testing.assert_close(bare(raw), raw * 3.0 + 1.0)
    with pytest.raises(TypeError, match="network"):
        NeuralEncoder("not a network")


def test_combined_encoder_splits_and_concatenates():
    gen = torch.Generator().manual_seed(3)
    raw = torch.randn(2, 4, 4, 5, generator=gen)
    first = GaussianEncoder(1.0, 2.0, eps=0.0)                        # 1 channel
    second = GaussianEncoder(torch.tensor([0.0, 3.0]), 4.0, eps=0.0)  # 2 channels
    third = GaussianEncoder(-1.0, 0.5, eps=0.0)                       # 1 channel
    combined = CombinedEncoder({"a": first, "b": second, "c": third})
    assert combined.splits == [1, 2, 1]
    mask = _land()
    expected = torch.cat([first(raw[:, :1], mask), second(raw[:, 1:3], mask),
                          third(raw[:, 3:], mask)], dim=1)
    torch.testing.assert_close(combined(raw, mask), expected)
    # A per-channel mask is split like the data.
    channel_mask = _land((2, 4, 4, 5), seed=4)
    out = combined(raw, channel_mask)
    assert torch.all(out[~channel_mask] == 0)
    torch.testing.assert_close(out[:, 1:3], second(raw[:, 1:3], channel_mask[:, 1:3]))
    with pytest.raises(ValueError, match="channels"):
        combined(raw[:, :3])
    with pytest.raises(ValueError, match="base_encoders"):
        CombinedEncoder({})


# ------------------------------------------------------------------ decoders
@pytest.mark.parametrize("decoder_cls", DECODERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_state_prediction(decoder_cls, dtype):
    gen = torch.Generator().manual_seed(5)
    mean, std = torch.tensor([280.0, 35.0]), torch.tensor([5.0, 0.5])
    raw = (torch.randn(3, 2, 4, 5, generator=gen, dtype=dtype)
           * std.view(1, 2, 1, 1) + mean.view(1, 2, 1, 1)).to(dtype)
    mask = _land()
    encoder = GaussianEncoder(mean, std, eps=0.0)
    decoder = decoder_cls(mean, std, prediction_func=state_prediction)
    decoded = decoder(encoder(raw, mask), None, mask)
    assert decoded.dtype == dtype
    torch.testing.assert_close(decoded[mask.expand_as(raw)],
                               raw[mask.expand_as(raw)], **TOL[dtype])
    assert torch.all(decoded[~mask.expand_as(raw)] == 0)


@pytest.mark.parametrize("decoder_cls", DECODERS)
def test_delta_prediction_adds_first_guess(decoder_cls):
    gen = torch.Generator().manual_seed(6)
    latent = torch.randn(2, 1, 4, 5, generator=gen)
    first_guess = torch.randn(2, 1, 4, 5, generator=gen)
    mask = _land()
    first_guess[:, :, 0, 0] = float("nan")
    decoder = decoder_cls(0.5, 2.0)                 # delta is the default
    explicit = decoder_cls(0.5, 2.0, prediction_func=delta_prediction)
    out = decoder(latent, first_guess, mask)
    expected = torch.where(mask, first_guess + latent * 2.0 + 0.5, 0.0)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(explicit(latent, first_guess, mask), expected)
    assert not out.isnan().any()
    with pytest.raises(ValueError, match="first_guess"):
        decoder(latent, None, mask)
    with pytest.raises(ValueError, match="first_guess"):
        decoder(latent, first_guess[:1], mask)


@pytest.mark.parametrize("decoder_cls", DECODERS)
def test_clamp_then_mask(decoder_cls):
    latent = torch.linspace(-3, 3, 20).view(1, 1, 4, 5)
    mask = _land()
    decoder = decoder_cls(0.0, 1.0, lower_bound=-1.0, upper_bound=2.0,
                          prediction_func=state_prediction)
    out = decoder(latent, None, mask)
    expected = torch.where(mask, latent.clamp(-1.0, 2.0), 0.0)
    torch.testing.assert_close(out, expected)
    # The toolbox masked first and clamped after: land became lower_bound.
    assert torch.all(out[~mask.expand_as(out)] == 0)


@pytest.mark.parametrize("decoder_cls", DECODERS)
def test_stochastic_decoding_does_not_touch_input(decoder_cls):
    latent = torch.randn(2, 1, 4, 5)
    before = latent.clone()
    identity = lambda decoder, x, first_guess: x      # aliases the input
    decoder = decoder_cls(0.0, 1.0, stochastic=True, prediction_func=identity)
    out = decoder(latent, None, None)
    assert torch.equal(latent, before)
    assert not torch.equal(out, latent)


@pytest.mark.parametrize("decoder_cls", DECODERS)
def test_stochastic_decoding_keeps_mask_and_bounds(decoder_cls):
    torch.manual_seed(3)
    mask = _land()
    decoder = decoder_cls(0.0, 5.0, lower_bound=-1.0, upper_bound=1.0,
                          stochastic=True, prediction_func=state_prediction)
    out = decoder(torch.zeros(64, 1, 4, 5), None, mask)
    land = ~mask.expand_as(out)
    assert torch.all(out[land] == 0)
    assert out[~land].min() == -1.0 and out[~land].max() == 1.0


def _sample_spread(decoder_cls, scale, n=40000, seed=11):
    """Decode zeros stochastically; return (sample std, mean absolute dev)."""
    torch.manual_seed(seed)
    decoder = decoder_cls(torch.tensor([0.5, -1.0]), torch.tensor(scale),
                          stochastic=True, prediction_func=state_prediction)
    out = decoder(torch.zeros(n, 2), None, None) - torch.tensor([0.5, -1.0])
    return out.std(dim=0), out.abs().mean(dim=0)


def test_stochastic_gaussian_scale():
    scale = [2.0, 0.5]
    std, _ = _sample_spread(GaussianDecoder, scale)
    # Standard error of a std estimate with n = 40000 is 0.35 %: 5 % is loose
    # but fails when the scale is off by 20 % (or doubled as a variance).
    torch.testing.assert_close(std, torch.tensor(scale), rtol=0.05, atol=0)


def test_stochastic_laplace_scale():
    scale = [2.0, 0.5]
    std, mad = _sample_spread(LaplaceDecoder, scale)
    # Laplace(0, b): E|x| = b and std = sqrt(2) b.
    torch.testing.assert_close(mad, torch.tensor(scale), rtol=0.05, atol=0)
    torch.testing.assert_close(std, math.sqrt(2) * torch.tensor(scale),
                               rtol=0.05, atol=0)


def _ema_case():
    """Zero prediction (mean 0, state), target errors 1, 2, 6 on valid points
    and NaN under the mask."""
    latent = torch.zeros(1, 1, 1, 4)
    target = torch.tensor([1.0, -2.0, 6.0, float("nan")]).view(1, 1, 1, 4)
    mask = torch.tensor([True, True, True, False]).view(1, 1, 1, 4)
    return latent, target, mask


def test_gaussian_ema_update_hand_values():
    latent, target, mask = _ema_case()
    decoder = GaussianDecoder(0.0, 2.0, ema_rate=0.25,
                              prediction_func=state_prediction)
    storage = decoder.scale.data_ptr()
    decoder.update(latent, None, target, mask)
    # scale^2 = 0.25 * 2^2 + 0.75 * (1 + 4 + 36) / 3 = 1 + 10.25
    expected = math.sqrt(11.25)
    torch.testing.assert_close(decoder.scale, torch.tensor([expected]))
    assert decoder.scale.data_ptr() == storage            # updated in place
    assert decoder.state_dict()["scale"].item() == pytest.approx(expected)
    decoder.update(latent, None, target, mask)
    torch.testing.assert_close(
        decoder.scale, torch.tensor([math.sqrt(0.25 * 11.25 + 0.75 * 41 / 3)]))


def test_laplace_ema_update_hand_values():
    latent, target, mask = _ema_case()
    decoder = LaplaceDecoder(0.0, 2.0, ema_rate=0.25,
                             prediction_func=state_prediction)
    decoder.update(latent, None, target, mask)
    # scale = 0.25 * 2 + 0.75 * (1 + 2 + 6) / 3 = 0.5 + 2.25
    torch.testing.assert_close(decoder.scale, torch.tensor([2.75]))


@pytest.mark.parametrize("decoder_cls", DECODERS)
def test_ema_update_per_channel_and_default_rate(decoder_cls):
    latent = torch.zeros(2, 2, 3)
    target = torch.stack([torch.full((2, 3), 1.0), torch.full((2, 3), 3.0)], dim=1)
    decoder = decoder_cls(0.0, torch.tensor([1.0, 1.0]), ema_rate=0.0,
                          prediction_func=state_prediction)
    decoder.update(latent, None, target, None)
    torch.testing.assert_close(decoder.scale, torch.tensor([1.0, 3.0]))
    frozen = decoder_cls(0.0, 1.5, prediction_func=state_prediction)  # rate 1
    frozen.update(latent[:, :1], None, target[:, :1], None)
    torch.testing.assert_close(frozen.scale, torch.tensor([1.5]))


@pytest.mark.parametrize("decoder_cls,dist", [(GaussianDecoder, Normal),
                                              (LaplaceDecoder, Laplace)])
def test_loss_matches_torch_distributions(decoder_cls, dist):
    gen = torch.Generator().manual_seed(12)
    latent = torch.randn(2, 1, 4, 5, generator=gen, dtype=torch.float64)
    first_guess = torch.randn(2, 1, 4, 5, generator=gen, dtype=torch.float64)
    target = torch.randn(2, 1, 4, 5, generator=gen, dtype=torch.float64)
    mask = _land()
    target[:, :, 0, 0] = float("nan")
    # Binary-exact parameters: the buffers are float32 until .double().
    decoder = decoder_cls(0.25, 1.5, ema_rate=0.0).double()
    decoder.scale.fill_(0.75)
    nll, climatological = decoder.loss(latent, first_guess, target, mask)
    location = first_guess + 1.5 * latent + 0.25
    valid = mask.expand_as(target)
    expected_nll = -dist(location[valid], 0.75).log_prob(target[valid]).mean()
    torch.testing.assert_close(nll, expected_nll, atol=1e-9, rtol=1e-9)
    expected_clim = ((location[valid] - target[valid]) / 1.5).square().mean()
    torch.testing.assert_close(climatological, expected_clim, atol=1e-9,
                               rtol=1e-9)
    # Gradients stay finite despite the NaN target under land, and an EMA
    # update between loss and backward does not break the graph.
    latent.requires_grad_(True)
    nll, _ = decoder.loss(latent, first_guess, target, mask)
    decoder.update(latent, first_guess, target, mask)
    nll.backward()
    assert torch.isfinite(latent.grad).all()
    assert torch.all(latent.grad[~valid] == 0)


@pytest.mark.parametrize("decoder_cls", DECODERS)
def test_loss_without_mask(decoder_cls):
    latent = torch.tensor([[0.0, 1.0]])
    target = torch.tensor([[1.0, 1.0]])
    decoder = decoder_cls(0.0, 2.0, prediction_func=state_prediction)
    nll, climatological = decoder.loss(latent, None, target, None)
    # decoded = (0, 2): errors (1, -1) / std 2 -> 0.25 each.
    torch.testing.assert_close(climatological, torch.tensor(0.25))
    assert torch.isfinite(nll)


def test_neural_decoder():
    mask = _land()
    latent = torch.randn(2, 1, 4, 5)
    target = torch.randn(2, 1, 4, 5)
    network = _Scale(2.0)
    physical = GaussianDecoder(0.0, 1.0, ema_rate=0.0,
                               prediction_func=state_prediction)
    decoder = NeuralDecoder(network, physical)
    assert decoder.n_dims == 1 and decoder.n_physical_dims == 1
    torch.testing.assert_close(decoder(latent, None, mask),
                               torch.where(mask, latent * 2 + 1, 0.0))
    decoder.update(latent, None, target, mask)
    mse = ((target - latent * 2 - 1)[mask.expand_as(target)]).square().mean()
    torch.testing.assert_close(physical.scale, mse.sqrt().view(1),
                               atol=1e-6, rtol=1e-5)
    decoder.stochastic = True
    assert physical.stochastic
    nll, _ = decoder.loss(latent, None, target, mask)
    assert torch.isfinite(nll)
    with pytest.raises(TypeError, match="physical_decoder"):
        NeuralDecoder(network, torch.nn.Identity())


def test_combined_decoder_splits_channels():
    gen = torch.Generator().manual_seed(13)
    first = GaussianDecoder(1.0, 2.0, ema_rate=0.0)
    second = LaplaceDecoder(torch.tensor([0.0, -1.0]), torch.tensor([0.5, 3.0]),
                            ema_rate=0.0)
    combined = CombinedDecoder({"sst": first, "uv": second})
    assert combined.splits == [1, 2] and combined.n_dims == 3
    latent = torch.randn(2, 3, 4, 5, generator=gen)
    first_guess = torch.randn(2, 3, 4, 5, generator=gen)
    target = torch.randn(2, 3, 4, 5, generator=gen)
    mask = _land()
    out = combined(latent, first_guess, mask)
    expected = torch.cat([first(latent[:, :1], first_guess[:, :1], mask),
                          second(latent[:, 1:], first_guess[:, 1:], mask)], dim=1)
    torch.testing.assert_close(out, expected)
    nll, clim = combined.loss(latent, first_guess, target, mask)
    parts = [first.loss(latent[:, :1], first_guess[:, :1], target[:, :1], mask),
             second.loss(latent[:, 1:], first_guess[:, 1:], target[:, 1:], mask)]
    torch.testing.assert_close(nll, (parts[0][0] + parts[1][0]) / 2)
    torch.testing.assert_close(clim, (parts[0][1] + parts[1][1]) / 2)
    combined.update(latent, first_guess, target, mask)
    valid = mask.expand(2, 1, 4, 5)
    error = (target - first_guess - latent * torch.tensor([2.0, 0.5, 3.0]).view(
        1, 3, 1, 1) - torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1))
    expected_scale = [error[:, :1][valid].square().mean().sqrt(),
                      error[:, 1:2][valid].abs().mean(),
                      error[:, 2:][valid].abs().mean()]
    torch.testing.assert_close(first.scale, expected_scale[0].view(1))
    torch.testing.assert_close(second.scale, torch.stack(expected_scale[1:]))
    combined.stochastic = True
    assert first.stochastic and second.stochastic
    with pytest.raises(ValueError, match="in_tensor"):
        combined(latent[:, :2], first_guess, mask)
    with pytest.raises(ValueError, match="first_guess"):
        combined(latent, first_guess[:, :2], mask)


def test_combined_decoder_propagates_constructor_arguments():
    first, second = GaussianDecoder(), LaplaceDecoder()
    CombinedDecoder({"a": first, "b": second}, stochastic=True,
                    lower_bound=-2.0)
    assert first.stochastic and second.stochastic
    assert first.lower_bound == -2.0 and second.lower_bound == -2.0


@pytest.mark.parametrize("decoder_cls", DECODERS)
def test_decoder_errors(decoder_cls):
    with pytest.raises(ValueError, match="std"):
        decoder_cls(0.0, 0.0)
    with pytest.raises(ValueError, match="lower_bound"):
        decoder_cls(lower_bound=1.0, upper_bound=0.0)
    with pytest.raises(ValueError, match="ema_rate"):
        decoder_cls(ema_rate=1.5)
    with pytest.raises(TypeError, match="stochastic"):
        decoder_cls(stochastic=1)
    with pytest.raises(TypeError, match="prediction_func"):
        decoder_cls(prediction_func="state")
    with pytest.warns(UserWarning, match="unknown_option"):
        decoder_cls(unknown_option=3)
    decoder = decoder_cls(0.0, 1.0, prediction_func=state_prediction)
    latent = torch.zeros(2, 1, 4, 5)
    with pytest.raises(ValueError, match="target"):
        decoder.loss(latent, None, torch.zeros(2, 1, 4, 4), None)
    with pytest.raises(ValueError, match="mask"):
        decoder(latent, None, torch.ones(1, 1, 3, 5))
    with pytest.raises(TypeError, match="in_tensor"):
        decoder(torch.zeros(2, 1, 4, 5, dtype=torch.long), None, None)


# ------------------------------------------ issue 12: bad values guarded
def test_non_finite_mean_or_std_rejected_at_construction():
    for cls in (GaussianEncoder, GaussianDecoder, LaplaceDecoder):
        with pytest.raises(ValueError, match="mean must be finite"):
            cls(mean=float("nan"))
        with pytest.raises(ValueError, match="mean must be finite"):
            cls(mean=torch.tensor([0., float("inf")]), std=torch.ones(2))
        with pytest.raises(ValueError, match="std must be finite"):
            cls(std=torch.tensor([1., float("nan")]), mean=torch.zeros(2))
    with pytest.raises(ValueError, match="eps"):
        GaussianEncoder(eps=float("nan"))


@pytest.mark.parametrize("cls", [GaussianDecoder, LaplaceDecoder])
def test_decoder_update_skips_non_finite_targets(cls):
    decoder = cls(std=1.0, ema_rate=0.5, prediction_func=state_prediction)
    reference = cls(std=1.0, ema_rate=0.5, prediction_func=state_prediction)
    latent = torch.zeros(1, 1, 4)
    target = torch.tensor([[[1., float("nan"), 2., float("inf")]]])
    decoder.update(latent, None, target)
    reference.update(latent[..., [0, 2]], None, target[..., [0, 2]])
    torch.testing.assert_close(decoder.scale, reference.scale)
    # all non-finite: the scale is kept, and later clean updates work
    before = decoder.scale.clone()
    decoder.update(latent, None, torch.full((1, 1, 4), float("nan")))
    assert torch.equal(decoder.scale, before)
    decoder.update(latent, None, torch.ones(1, 1, 4))
    assert torch.isfinite(decoder.scale).all()


def test_combined_encoder_names_a_bad_member():
    with pytest.raises(TypeError, match=r"base_encoders\['b'\]"):
        CombinedEncoder({"a": GaussianEncoder(), "b": "not an encoder"})
