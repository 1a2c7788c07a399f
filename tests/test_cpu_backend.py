"""What is specific to the C++ ``cpu`` backend (its values and gradients are
covered with every other backend in test_ops.py, test_randn.py, ...):
thread-count independence, both SIMD paths, the pointer boundary, the
recorded build configuration and tensors over 2**31 elements."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ddm_fast import backends, ops
from ddm_fast.backends import reference
from conftest import BACKENDS, assert_close

pytestmark = pytest.mark.skipif("cpu" not in BACKENDS,
                                reason="the cpu backend is neither built nor "
                                       "required here")


@pytest.fixture
def extension():
    import ddm_fast._C as module
    return module


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _problem(dtype=torch.float32):
    gen = torch.Generator().manual_seed(3)
    shape = (3, 4, 129, 131)  # ~200k elements: several threads, odd rows
    xs = [torch.randn(shape, generator=gen).to(dtype) for _ in range(3)]
    mask = torch.rand(1, 1, 129, 131, generator=gen) > 0.3
    coeffs = torch.randn(12, 5, generator=gen)
    return xs, mask, coeffs


def _all_ops(xs, mask, coeffs):
    with backends.use("cpu"):
        return [
            ops.randn((5, 40001), seed=9, offset=3),
            ops.affine(xs, coeffs, mask, seed=7, offset=5, bias=True),
            ops.affine_sum(xs, coeffs, mask, seed=7, offset=5, bias=True),
            ops.affine_sum(xs, coeffs, mask, seed=7, offset=5, bias=True, power=1),
            ops.affine_dots(xs, coeffs, mask, seed=7, offset=5, bias=True,
                            weight="combination"),
            ops.affine_dots(xs, coeffs, mask, seed=7, offset=5, bias=True,
                            weight=xs[0] * 0.5),
        ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_identical_for_any_thread_count(threads, dtype):
    xs, mask, coeffs = _problem(dtype)
    results = []
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        results.append(_all_ops(xs, mask, coeffs))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_few_rows_sum_is_thread_independent(threads):
    """Fewer rows than threads: the row is split in fixed blocks, so the
    summation order does not follow the thread count."""
    x = torch.randn(1, 300_001, generator=torch.Generator().manual_seed(1))
    sums = []
    for n in (1, 2):
        torch.set_num_threads(n)
        with backends.use("cpu"):
            sums.append(ops.masked_mean(x, dim=1))
    assert torch.equal(sums[0], sums[1])


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
def test_every_simd_path_matches_reference(extension, level):
    """Each SIMD path this CPU can run against the reference; the noise
    within 8 float32 ulps of max(|n|, 1), the rest at float32 tolerance."""
    if not extension.set_simd_level(level):
        pytest.skip(f"this CPU or build has no {level} path")
    try:
        gen = torch.Generator().manual_seed(4)
        shape = (3, 2, 37, 41)
        xs = [torch.randn(shape, generator=gen) for _ in range(2)]
        mask = torch.rand(3, 1, 37, 41, generator=gen) > 0.4
        coeffs = torch.randn(6, 4, generator=gen)
        with backends.use("cpu"):
            noise = ops.randn(shape, seed=2 ** 40 + 1, offset=7)
            out = ops.affine(xs, coeffs, mask, seed=5, offset=3, bias=True)
            sums = ops.affine_sum(xs, coeffs, mask, seed=5, offset=3, bias=True)
        want_noise = reference.randn(shape, 2 ** 40 + 1, 7)
        bound = 8 * torch.finfo(torch.float32).eps * want_noise.abs().clamp(min=1)
        assert ((noise - want_noise).abs() <= bound).all()
        with backends.use("reference"):
            want = ops.affine(xs, coeffs, mask, seed=5, offset=3, bias=True)
            want_sums = ops.affine_sum(xs, coeffs, mask, seed=5, offset=3,
                                       bias=True)
        assert_close(out, want, scale=4)
        torch.testing.assert_close(sums, want_sums, rtol=2e-5, atol=1e-4)
    finally:
        extension.set_simd_level("auto")


def test_simd_level_is_reported(extension):
    assert extension.simd_level() in ("scalar", "avx2", "avx512")


def test_pointer_boundary_rejects_bad_arguments(extension):
    """The binding checks what it is given: a clear ValueError, no crash."""
    x = torch.zeros(8)
    c = torch.ones(2, 1)
    out = torch.empty(8)
    good = dict(n_inputs=1, rows=2, threads=1)

    def call(n_inputs=1, rows=2, threads=1, x_ptr=x.data_ptr(), numel=8):
        extension.affine((x_ptr, 0, 0), (0, 0, 0), n_inputs, c.data_ptr(), 0,
                         0, 0, 1, 1, -1, 0, 0, False, numel, rows,
                         out.data_ptr(), 0, 0, threads)

    call(**good)
    assert torch.equal(out, x)
    for bad, match in [(dict(n_inputs=4), "n_inputs"), (dict(rows=3), "rows"),
                       (dict(threads=0), "threads"), (dict(x_ptr=0), "x"),
                       (dict(rows=0), "rows")]:
        with pytest.raises(ValueError, match=match):
            call(**{**good, **bad})
    with pytest.raises(ValueError, match="dtype"):
        extension.randn(out.data_ptr(), 9, 8, 1, 0, 0, 1)
    with pytest.raises(ValueError, match="seed"):
        extension.randn(out.data_ptr(), 0, 8, -1, 0, 0, 1)  # no seed at all
    with pytest.raises(ValueError, match="power"):
        extension.affine_sum((x.data_ptr(), 0, 0), (0, 0, 0), 1, c.data_ptr(), 0,
                             0, 1, 1, -1, 0, 0, False, 8, 2, 3, out.data_ptr(), 1)


def test_ops_layer_rejects_what_the_kernels_cannot_take():
    """The Python side validates every tensor before a pointer crosses."""
    from ddm_fast.backends import extension as ext
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="contiguous"):
        ext.affine(x.t(), None, None, torch.ones(2, 1), None, None, -1, 0,
                   False, torch.float32)
    with pytest.raises(TypeError, match="x0 must have dtype"):
        ext.affine(x.to(torch.int32), None, None, torch.ones(2, 1), None, None,
                   -1, 0, False, torch.float32)
    with pytest.raises(ValueError, match="coeffs"):
        ext.affine(x, None, None, torch.ones(3, 1), None, None, -1, 0, False,
                   torch.float32)


def test_build_configuration_is_recorded(extension):
    """setup.py records how the extensions were built; the module's own
    report agrees, and the backend checks the kernel API version."""
    from ddm_fast.backends import extension as ext
    import ddm_fast
    path = os.path.join(os.path.dirname(ddm_fast.__file__), "_build_config.json")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    info = dict(extension.build_info())
    assert info["api_version"] == extension.API_VERSION == ext.API_VERSION
    assert config["cpu"]["built"]
    assert set(info["simd_units"]) == set(config["cpu"]["simd_units"])


@pytest.mark.slow
def test_more_than_2_pow_31_elements():
    """64-bit indexing: an affine step with noise over 2**31 + 12 bfloat16
    elements (rows and mask lookups beyond int32); the last elements hold
    what the reference computes for them alone."""
    numel = 2 ** 31 + 12
    rows = 4
    per_row = numel // rows
    x = torch.ones(rows, per_row, dtype=torch.bfloat16)
    mask = torch.ones(1, per_row, dtype=torch.bool)
    mask[0, -3] = False
    coeffs = torch.tensor([[0.5, 1.0], [1.0, 1.0], [2.0, 1.0], [-1.0, 0.25]])
    with backends.use("cpu"):
        out = ops.affine([x], coeffs, mask, seed=11, offset=5)
    tail = 64
    noise = reference.randn(tail, 11, 5 + numel - tail)
    want = (-1.0 + 0.25 * noise).to(torch.bfloat16)
    want[-3] = 0.0
    # bf16 rounding of values that differ by float32 ulps may differ by one
    # bf16 ulp; a wrong index would give unrelated noise (errors ~ 0.25)
    bf16 = dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(out[-1, -tail:], want, **bf16)
    assert out[-1, -3] == 0
    head_noise = reference.randn(16, 11, 5)
    torch.testing.assert_close(out[0, :16], (0.5 + head_noise).to(torch.bfloat16),
                               **bf16)
    del out, x
