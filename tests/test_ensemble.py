"""sample_ensemble: members independent of the chunking, written to
netCDF/zarr chunk by chunk, resumed after an interruption."""
from __future__ import annotations

import sys

import pytest
import torch

from ddm_fast.denoiser import Denoiser
from ddm_fast.ensemble import sample_ensemble
from ddm_fast.sampler import DDPMSampler
from ddm_fast.scheduler import LinearScheduler

SHAPE = (2, 3, 4)


def net(z, normalized_gamma, mask=None):
    return 0.3 * z


def make_sampler():
    return DDPMSampler(LinearScheduler(), timesteps=3, denoising_network=net,
                       pbar=False)


MASK = torch.ones(1, 3, 4)
MASK[..., 0, :2] = 0


def test_members_do_not_depend_on_the_chunk():
    one = sample_ensemble(make_sampler(), 5, SHAPE, chunk=1, seed=7,
                          mask=MASK, progress=False)
    all_at_once = sample_ensemble(make_sampler(), 5, SHAPE, chunk=5, seed=7,
                                  mask=MASK, progress=False)
    assert one.shape == (5,) + SHAPE
    assert torch.equal(one, all_at_once)
    assert torch.all(one[:, :, 0, :2] == 0)
    from_denoiser = sample_ensemble(Denoiser(net), 5, SHAPE, chunk=2, seed=7,
                                    mask=MASK, scheduler=LinearScheduler(),
                                    timesteps=3, method=DDPMSampler,
                                    progress=False)
    assert torch.equal(from_denoiser, one)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_written_dataset_resumes_after_an_interruption(tmp_path, suffix):
    xr = pytest.importorskip("xarray")
    want = sample_ensemble(make_sampler(), 5, SHAPE, chunk=2, seed=4,
                           mask=MASK, progress=False)
    path = str(tmp_path / f"ens{suffix}")
    sampler = make_sampler()
    calls = {"n": 0}
    original = sampler.sample

    def dies_after_one_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the job is killed mid-run
        return original(*args, **kwargs)

    sampler.sample = dies_after_one_chunk
    with pytest.raises(KeyboardInterrupt):
        sample_ensemble(sampler, 5, SHAPE, chunk=2, seed=4, mask=MASK,
                        path=path, progress=False)
    resumed = make_sampler()
    seen = []
    original_resumed = resumed.sample
    resumed.sample = lambda *a, **k: seen.append(k["member_offset"]) or \
        original_resumed(*a, **k)
    with sample_ensemble(resumed, 5, SHAPE, chunk=2, seed=4, mask=MASK,
                         path=path, progress=False) as returned:
        assert torch.equal(torch.from_numpy(returned["samples"].values), want)
    assert seen == [2, 4]  # the first chunk was not sampled again
    engine = "zarr" if suffix == ".zarr" else "netcdf4"
    with xr.open_dataset(path, engine=engine) as ds:
        assert ds["samples"].dims[:2] == ("member", "channel")
        assert torch.equal(torch.from_numpy(ds["samples"].values), want)
        assert ds["mask"].values[0, 0, :2].tolist() == [0, 0]
        assert ds.attrs["seed"] == 4 and ds.attrs["steps"] == 3
        assert ds.attrs["sampler"] == "DDPMSampler"
        assert ds.attrs["scheduler"] == "LinearScheduler"
        assert "ddm_fast_version" in ds.attrs
    with pytest.raises(ValueError, match="seed"):
        sample_ensemble(make_sampler(), 5, SHAPE, chunk=2, seed=5, mask=MASK,
                        path=path, progress=False)


def test_one_dimensional_members_with_named_dims(tmp_path):
    pytest.importorskip("xarray")
    sampler = make_sampler()
    path = str(tmp_path / "l96.nc")
    with sample_ensemble(sampler, 3, (40,), chunk=2, seed=1, path=path,
                         dims=("site",), progress=False) as ds:
        assert ds["samples"].dims == ("member", "site")
        want = sample_ensemble(make_sampler(), 3, (40,), chunk=3, seed=1,
                               progress=False)
        assert torch.equal(torch.from_numpy(ds["samples"].values), want)
    with pytest.raises(ValueError, match="dims"):
        sample_ensemble(sampler, 3, (40,), dims=("member",))


def test_missing_extra_and_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r"ddm_fast\[ensemble\]"):
        sample_ensemble(make_sampler(), 2, SHAPE, path=str(tmp_path / "a.nc"),
                        progress=False)
    with pytest.raises(ValueError, match="n_members"):
        sample_ensemble(make_sampler(), 0, SHAPE)
    with pytest.raises(TypeError, match="denoiser_or_sampler"):
        sample_ensemble(net, 2, SHAPE)
    with pytest.raises(ValueError, match="scheduler"):
        sample_ensemble(Denoiser(net), 2, SHAPE)
