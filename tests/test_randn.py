"""The counter-based noise of docs/math.md, "Counter-based noise".

Three independent sources must agree: an implementation of Philox4x32-10 and
Box–Muller written here in NumPy (uint64 arithmetic, float32 transforms), a
tiny Triton kernel calling ``tl.randint4x`` / ``tl.randn4x`` directly, and
``ddm_fast.ops.randn`` on every backend. Words and uniforms are compared bit
for bit, normals within a few float32 ulps (log/sin/cos differ by library).
The statistics of the reference generator are checked on 1e6 samples.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddm_fast import backends, ops
from ddm_fast.backends import reference

# ------------------------ NumPy Philox (docs/math.md, "Philox4x32-10")
_M32 = np.uint64(0xFFFFFFFF)


def numpy_philox(counters: np.ndarray, seed: int):
    """Philox4x32-10 on counters (lo, hi, 0, 0), key (seed lo, seed hi);
    four uint32 arrays."""
    counters = counters.astype(np.uint64)
    c0, c1 = counters & _M32, counters >> np.uint64(32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for _ in range(10):
        prod_b = np.uint64(0xCD9E8D57) * c2  # < 2**64: exact in uint64
        prod_a = np.uint64(0xD2511F53) * c0
        c0, c1, c2, c3 = ((prod_b >> np.uint64(32)) ^ c1 ^ k0, prod_b & _M32,
                          (prod_a >> np.uint64(32)) ^ c3 ^ k1, prod_a & _M32)
        k0 = (k0 + np.uint64(0x9E3779B9)) & _M32
        k1 = (k1 + np.uint64(0xBB67AE85)) & _M32
    return [w.astype(np.uint32) for w in (c0, c1, c2, c3)]


def numpy_uniform(words: np.ndarray) -> np.ndarray:
    signed = words.view(np.int32)
    signed = np.where(signed < 0, ~signed, signed)
    return signed.astype(np.float32) * np.float32(4.6566127342e-10)


def numpy_box_muller(u1, u2):
    u1 = np.maximum(u1, np.float32(1e-7))
    theta = np.float32(6.283185307179586) * u2
    radius = np.sqrt(np.float32(-2.0) * np.log(u1))
    return radius * np.cos(theta), radius * np.sin(theta)


def numpy_randn(numel: int, seed: int, offset: int) -> np.ndarray:
    """noise[offset + i], i < numel, float32."""
    first, last = offset // 4, (offset + numel - 1) // 4
    counters = np.arange(first, last + 1, dtype=np.uint64)
    u = [numpy_uniform(w) for w in numpy_philox(counters, seed)]
    n0, n1 = numpy_box_muller(u[0], u[1])
    n2, n3 = numpy_box_muller(u[2], u[3])
    flat = np.stack([n0, n1, n2, n3], axis=-1).reshape(-1)
    start = offset - 4 * first
    return flat[start:start + numel]


def assert_few_ulp(actual: np.ndarray, expected: np.ndarray, ulps: int = 8):
    """|a - e| <= ulps float32 ulps of max(|e|, 1): for values below 1 the
    error of sin/cos is absolute (set by theta), above it relative."""
    actual = np.asarray(actual, dtype=np.float32)
    bound = ulps * np.spacing(np.maximum(np.abs(expected), np.float32(1)))
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    assert np.all(err <= bound), f"max error {err.max()} > {bound[err.argmax()]}"


SEEDS = [0, 1, 12345, 2 ** 32 + 5, 2 ** 63 - 1]
# (offset, numel): aligned, not multiples of 4, and crossing counter 2**32
OFFSETS = [(0, 9), (1, 7), (3, 10), (6, 5), (4 * 2 ** 32 - 6, 13),
           (4 * (2 ** 40 + 3) + 2, 6)]


# ------------------------------------------ Triton's own generator, directly
def _triton_probe():
    if "triton" not in backends.available():
        pytest.skip("the triton backend is unavailable")
    import triton
    import triton.language as tl

    @triton.jit
    def probe(words_ptr, normals_ptr, seed, first_counter, n_counters,
              BLOCK: tl.constexpr):
        j = tl.arange(0, BLOCK)
        valid = j < n_counters
        counters = first_counter + j.to(tl.int64)
        w0, w1, w2, w3 = tl.randint4x(seed, counters)
        n0, n1, n2, n3 = tl.randn4x(seed, counters)
        tl.store(words_ptr + 4 * j, w0.to(tl.int32, bitcast=True), mask=valid)
        tl.store(words_ptr + 4 * j + 1, w1.to(tl.int32, bitcast=True), mask=valid)
        tl.store(words_ptr + 4 * j + 2, w2.to(tl.int32, bitcast=True), mask=valid)
        tl.store(words_ptr + 4 * j + 3, w3.to(tl.int32, bitcast=True), mask=valid)
        tl.store(normals_ptr + 4 * j, n0, mask=valid)
        tl.store(normals_ptr + 4 * j + 1, n1, mask=valid)
        tl.store(normals_ptr + 4 * j + 2, n2, mask=valid)
        tl.store(normals_ptr + 4 * j + 3, n3, mask=valid)

    def run(seed, first_counter, n_counters):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        words = torch.empty(4 * n_counters, dtype=torch.int32, device=device)
        normals = torch.empty(4 * n_counters, dtype=torch.float32, device=device)
        probe[(1,)](words, normals, seed, first_counter, n_counters, BLOCK=16)
        return (words.cpu().numpy().view(np.uint32).reshape(-1, 4),
                normals.cpu().numpy().reshape(-1, 4))
    return run


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("first_counter", [0, 7, 2 ** 32 - 2, 2 ** 45 + 1])
def test_numpy_philox_matches_triton_randn4x(seed, first_counter):
    run = _triton_probe()
    words, normals = run(seed, first_counter, 5)
    counters = np.arange(first_counter, first_counter + 5, dtype=np.uint64)
    np_words = np.stack(numpy_philox(counters, seed), axis=1)
    np.testing.assert_array_equal(words, np_words)
    u = [numpy_uniform(np_words[:, q].copy()) for q in range(4)]
    n0, n1 = numpy_box_muller(u[0], u[1])
    n2, n3 = numpy_box_muller(u[2], u[3])
    assert_few_ulp(normals, np.stack([n0, n1, n2, n3], axis=1))


@pytest.mark.parametrize("seed", SEEDS)
def test_reference_words_and_uniforms_bitwise(seed):
    counters = np.array([0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 50 + 3], dtype=np.uint64)
    np_words = numpy_philox(counters, seed)
    t_counters = torch.from_numpy(counters.astype(np.int64))
    ref_words = reference.philox4x32(t_counters & 0xFFFFFFFF, t_counters >> 32,
                                     seed)
    for mine, theirs in zip(np_words, ref_words):
        np.testing.assert_array_equal(mine.astype(np.int64), theirs.numpy())
        uniform = reference._uniform(theirs).numpy()
        np.testing.assert_array_equal(numpy_uniform(mine).view(np.uint32),
                                      uniform.view(np.uint32))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offset,numel", OFFSETS)
def test_randn_matches_numpy(backend, device, seed, offset, numel):
    got = ops.randn((numel,), seed, offset, device=device)
    assert got.dtype == torch.float32 and got.shape == (numel,)
    assert_few_ulp(got.cpu().numpy(), numpy_randn(numel, seed, offset))


def test_randn_split_invariance(backend, device):
    """noise[offset + i] does not depend on how a tensor is split: a batch
    drawn at once equals its members drawn at their offsets (bitwise)."""
    whole = ops.randn((3, 2, 5), seed=99, offset=7, device=device)
    for b in range(3):
        member = ops.randn((2, 5), seed=99, offset=7 + 10 * b, device=device)
        assert torch.equal(member, whole[b])
    shifted = ops.randn((25,), seed=99, offset=12, device=device)
    assert torch.equal(shifted, whole.reshape(-1)[5:])


@pytest.mark.parametrize("dtype_name", ["float16", "float64", "bfloat16"])
def test_randn_dtypes(backend, device, dtype_name):
    dtype = getattr(torch, dtype_name)
    if dtype == torch.bfloat16 and backend == "triton" \
            and not torch.cuda.is_available():
        pytest.skip("bfloat16 is not tested in the Triton interpreter")
    got = ops.randn((4, 5), seed=3, offset=1, dtype=dtype, device=device)
    assert got.dtype == dtype
    expected = torch.from_numpy(numpy_randn(20, 3, 1).reshape(4, 5))
    # rounding a float32 value a few ulps off may move it by one ulp of dtype
    atol = {torch.float16: 2e-3, torch.float64: 1e-6, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(got.cpu().float(), expected, atol=atol, rtol=atol)


def test_randn_empty(backend, device):
    assert ops.randn((0, 3), seed=1, device=device).shape == (0, 3)


@pytest.mark.parametrize("bad_seed,error", [(-1, ValueError), (2 ** 63, ValueError),
                                            (True, TypeError), (1.5, TypeError)])
def test_randn_rejects_bad_seed(bad_seed, error):
    with pytest.raises(error, match="seed"):
        ops.randn((3,), bad_seed)


def test_randn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="offset"):
        ops.randn((3,), 1, offset=-1)
    with pytest.raises(ValueError, match="shape"):
        ops.randn((3, -1), 1)
    with pytest.raises(TypeError, match="dtype"):
        ops.randn((3,), 1, dtype=torch.int32)


# ------------------------------------------------------------- statistics
N_STAT = 1_000_000


@pytest.fixture(scope="module")
def reference_noise():
    return reference.randn((N_STAT,), seed=20240601, offset=3).double().numpy()


def test_randn_moments(reference_noise):
    x = reference_noise
    n = x.size
    assert abs(x.mean()) < 5 / np.sqrt(n)
    assert abs(x.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs((x ** 3).mean()) < 5 * np.sqrt(15 / n)
    assert abs((x ** 4).mean() - 3) < 5 * np.sqrt(96 / n)


def test_randn_kolmogorov_smirnov(reference_noise):
    from scipy import stats
    assert stats.kstest(reference_noise, "norm").pvalue > 1e-3
    # each Box-Muller component separately (cos and sin halves)
    for q in range(4):
        assert stats.kstest(reference_noise[q::4], "norm").pvalue > 1e-3


@pytest.mark.parametrize("lag", [1, 2, 3, 4])
def test_randn_neighbours_uncorrelated(reference_noise, lag):
    x = reference_noise
    r = np.corrcoef(x[:-lag], x[lag:])[0, 1]
    assert abs(r) < 5 / np.sqrt(x.size)
    # squares too: the two members of a Box-Muller pair share their radius
    r2 = np.corrcoef(x[:-lag] ** 2, x[lag:] ** 2)[0, 1]
    assert abs(r2) < 5 / np.sqrt(x.size)


def test_randn_seeds_uncorrelated(reference_noise):
    for other_seed in (20240602, 20240601 + 2 ** 32):
        other = reference.randn((N_STAT,), seed=other_seed, offset=3).double().numpy()
        assert abs(np.corrcoef(reference_noise, other)[0, 1]) < 5 / np.sqrt(N_STAT)
