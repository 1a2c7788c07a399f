"""Sampling loops as CUDA graphs (``graph=True``, ddm_fast/graphs.py).

On CPU: the loop a capture would record, run with a seed table instead of
per-step seeds, gives the eager loop's samples bitwise (a stand-in replaces
the capture), and the arguments are checked. On CUDA: a replay with a new
seed equals the eager loop with that seed bitwise and differs from the
previous replay, and a network that cannot be captured is named.
"""
import pytest
import torch

from ddm_fast import graphs, sampling
from ddm_fast.sampler import (DDIMSampler, DDPMSampler, DPMSolverPP2MSampler,
                              HeunSampler)
from test_sampler import MU, SAMPLE_SHAPE, STD, exploding_grid, make, start_z
from test_sampling import k_model

SHAPE = (3,) + SAMPLE_SHAPE


def _stochastic_samplers():
    return [make(HeunSampler, S_churn=1.), make(DDPMSampler),
            make(DDIMSampler, eta=0.5), make(DPMSolverPP2MSampler)]


def test_captured_loop_equals_eager_loop(monkeypatch):
    """What the graph records: the loop with its seeds read from a table."""
    calls = []

    def run_without_capture(owner, key, loop, tensors, seeds):
        calls.append(len(seeds))
        table = torch.tensor(list(seeds) or [0], dtype=torch.int64)
        static = {name: t.clone() for name, t in tensors.items()}
        return loop(static, table)

    monkeypatch.setattr(graphs, "run_graphed", run_without_capture)
    mask = (torch.rand((1,) + SAMPLE_SHAPE,
                       generator=torch.Generator().manual_seed(3)) > 0.3).float()
    for sampler in _stochastic_samplers():
        for seed in (5, 6):
            eager = sampler.sample(SHAPE, mask=mask, seed=seed, member_offset=2)
            graphed = sampler.sample(SHAPE, mask=mask, seed=seed,
                                     member_offset=2, graph=True)
            assert torch.equal(graphed, eager), type(sampler).__name__
    assert 7 in calls and 0 in calls  # 6 steps + prior; DPM-Solver: no noise


def _k_calls(x, sigmas, mask):
    """Each k-diffusion-style function with its noise switched on."""
    return {
        "euler": lambda **kw: sampling.sample_euler(
            k_model, x, sigmas, s_churn=2., mask=mask, **kw),
        "heun": lambda **kw: sampling.sample_heun(
            k_model, x, sigmas, s_churn=2., mask=mask, **kw),
        "euler_ancestral": lambda **kw: sampling.sample_euler_ancestral(
            k_model, x, sigmas, eta=0.7, mask=mask, **kw),
        "dpmpp_2m": lambda **kw: sampling.sample_dpmpp_2m(
            k_model, x, sigmas, mask=mask, **{k: v for k, v in kw.items()
                                             if k == "graph"}),
    }


def test_captured_sampling_functions_equal_eager(monkeypatch):
    def run_without_capture(owner, key, loop, tensors, seeds):
        table = torch.tensor(list(seeds) or [0], dtype=torch.int64)
        return loop({name: t.clone() for name, t in tensors.items()}, table)

    monkeypatch.setattr(graphs, "run_graphed", run_without_capture)
    sigmas = exploding_grid(6, 6)[0]
    x = 3 * start_z()  # an exploding-form state at sigma_0
    mask = torch.ones((1,) + SAMPLE_SHAPE, dtype=torch.float64)
    mask[..., 1] = 0
    for name, call in _k_calls(x, sigmas, mask).items():
        eager = call(seed=4) if name != "dpmpp_2m" else call()
        graphed = call(seed=4, graph=True) if name != "dpmpp_2m" \
            else call(graph=True)
        assert torch.equal(graphed, eager), name
    with pytest.raises(ValueError, match="noise_sampler"):
        sampling.sample_euler_ancestral(k_model, x, sigmas, graph=True,
                                        noise_sampler=lambda s, t: x)


def test_graph_arguments_are_checked():
    sampler = make(HeunSampler, S_churn=1.)
    with pytest.raises(ValueError, match="CUDA"):
        sampler.sample(SHAPE, seed=1, graph=True)
    with pytest.raises(ValueError, match="callback"):
        sampler.sample(SHAPE, seed=1, graph=True, callback=lambda info: None)
    with pytest.raises(TypeError, match="graph must be a bool"):
        sampler.sample(SHAPE, seed=1, graph="yes")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_replay_with_new_seed_equals_eager_loop(monkeypatch):
    import test_sampling
    monkeypatch.setattr(test_sampling, "MU", MU.cuda())
    monkeypatch.setattr(test_sampling, "STD", STD.cuda())
    mask = torch.ones((1,) + SAMPLE_SHAPE, device="cuda")
    mask[..., 0] = 0
    for sampler in _stochastic_samplers():
        sampler.cuda()
        previous = None
        for seed in (11, 12, 13):
            graphed = sampler.sample(SHAPE, mask=mask, seed=seed, graph=True)
            eager = sampler.sample(SHAPE, mask=mask, seed=seed)
            assert torch.equal(graphed, eager), (type(sampler).__name__, seed)
            if previous is not None:
                assert not torch.equal(graphed, previous)
            previous = graphed
        graphs.clear(sampler)


@cuda
def test_sampling_function_replays_equal_eager(monkeypatch):
    import test_sampling
    monkeypatch.setattr(test_sampling, "MU", MU.cuda())
    monkeypatch.setattr(test_sampling, "STD", STD.cuda())
    sigmas = exploding_grid(6, 6)[0]  # a CPU grid, as k-diffusion users pass
    x = start_z().cuda()
    for name, call in _k_calls(x, sigmas, None).items():
        kwargs = [{"seed": s} for s in (1, 2)] if name != "dpmpp_2m" else [{}]
        for kw in kwargs:
            assert torch.equal(call(graph=True, **kw), call(**kw)), name
    graphs.clear(k_model)


@cuda
def test_uncapturable_network_is_named(monkeypatch):
    import test_sampling
    monkeypatch.setattr(test_sampling, "MU", MU.cuda())
    monkeypatch.setattr(test_sampling, "STD", STD.cuda())
    sampler = make(HeunSampler).cuda()
    network = sampler.denoising_network
    original = network.forward

    def syncing_forward(in_tensor, normalized_gamma, mask=None, **kw):
        if float(in_tensor.abs().max()) > 1e9:  # a host synchronisation
            raise AssertionError("unreachable")
        return original(in_tensor, normalized_gamma, mask, **kw)

    monkeypatch.setattr(network, "forward", syncing_forward)
    with pytest.raises(graphs.GraphCaptureError, match="could not be captured"):
        sampler.sample(SHAPE, seed=1, graph=True)
