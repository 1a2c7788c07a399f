"""Sampling loops as CUDA graphs (``graph=True``, ddm_fast/graphs.py).

On CPU: the loop a capture would record, run with a seed table instead of
per-step seeds, gives the eager loop's samples bitwise (a stand-in replaces
the capture), and the arguments are checked. On CUDA: a replay with a new
seed equals the eager loop with that seed bitwise and differs from the
previous replay, and a network that cannot be captured is named.
"""
import pytest
import torch

from ddm_fast import graphs
from ddm_fast.sampler import (DDIMSampler, DDPMSampler, DPMSolverPP2MSampler,
                              HeunSampler)
from test_sampler import MU, SAMPLE_SHAPE, STD, make

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
