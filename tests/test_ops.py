"""The fused primitives and the diffusion ops on every available backend.

Each backend is checked against an oracle written here (independent of
``ddm_fast.backends.reference``, with the noise of ``reference.randn``, which
tests/test_randn.py checks against NumPy): values, input gradients and
coefficient gradients, masked and unmasked, odd sizes, rows = B and B*C,
noise on/off, bias, the second output, non-contiguous inputs, offsets that
are not multiples of 4. The high-level ops are compared with the reference
backend. On CPU the ``triton`` backend runs through Triton's interpreter, so
shapes stay small.
"""
from __future__ import annotations

import pytest
import torch

from ddm_fast.loss import diffusion_loss

import ddm_fast
from ddm_fast import backends, ops
from ddm_fast.backends import reference
from conftest import HAS_CUDA, TOLERANCES, assert_close

# ------------------------------------------------------------------ oracle


def oracle_combination(inputs, coeffs, seed, offset, bias):
    """sum_j coeffs[r, j] column_j over the rows of the flat tensor."""
    shape = inputs[0].shape
    rows = coeffs.shape[0]
    math = torch.float64 if any(t.dtype == torch.float64
                                for t in list(inputs) + [coeffs]) else torch.float32
    columns = [t.to(math).reshape(rows, -1) for t in inputs]
    if seed is not None:
        noise = reference.randn(shape, seed, offset, device=inputs[0].device)
        columns.append(noise.to(math).reshape(rows, -1))
    if bias:
        columns.append(torch.ones_like(columns[0]))
    coeffs = coeffs.to(math)
    total = coeffs[:, :1] * columns[0]
    for j in range(1, len(columns)):
        total = total + coeffs[:, j:j + 1] * columns[j]
    return total.reshape(shape)


def oracle_valid(mask, shape):
    return None if mask is None else (mask != 0).expand(shape)


def oracle_affine(inputs, coeffs, mask, seed, offset, bias):
    value = oracle_combination(inputs, coeffs, seed, offset, bias)
    valid = oracle_valid(mask, value.shape)
    if valid is not None:
        value = torch.where(valid, value, torch.zeros_like(value))
    return value.to(inputs[0].dtype)


def oracle_affine_sum(inputs, coeffs, mask, seed, offset, power, bias):
    value = oracle_combination(inputs, coeffs, seed, offset, bias) ** power
    valid = oracle_valid(mask, value.shape)
    if valid is not None:
        value = torch.where(valid, value, torch.zeros_like(value))
    return value.reshape(coeffs.shape[0], -1).sum(dim=1)


# ------------------------------------------------------------------- cases


def make_mask(kind, pattern, shape, device, generator):
    """A random mask of ``pattern`` ('none', 'hw' = (1,1,H,W), 'bhw' =
    (B,1,H,W), 'chw' = (1,C,H,W), 'bc' = (B,C,1,1), 'full', 'fallback' =
    (B,1,H,1), '2d' = (H,W)) and dtype ``kind`` (bool, uint8, float)."""
    if pattern == "none":
        return None
    b, c, h, w = shape
    mshape = {"hw": (1, 1, h, w), "bhw": (b, 1, h, w), "chw": (1, c, h, w),
              "bc": (b, c, 1, 1), "full": shape, "fallback": (b, 1, h, 1),
              "2d": (h, w)}[pattern]
    valid = torch.rand(mshape, generator=generator) > 0.35
    mask = {"bool": valid, "uint8": valid.to(torch.uint8),
            "float": valid.to(torch.float32)}[kind]
    return mask.to(device)


def random_inputs(shape, count, dtype, device, generator, noncontiguous=False):
    out = []
    for _ in range(count):
        if noncontiguous:  # transposed storage, same logical values
            t = torch.randn(tuple(reversed(shape)), generator=generator)
            t = t.permute(*reversed(range(len(shape))))
        else:
            t = torch.randn(shape, generator=generator)
        out.append(t.to(device=device, dtype=dtype))
    assert not noncontiguous or not out[0].is_contiguous()
    return out


def n_columns(n_inputs, seed, bias):
    return n_inputs + (seed is not None) + bool(bias)


# (shape, rows, n_inputs, seed, offset, bias, mask pattern, mask dtype)
AFFINE_CASES = [
    ((3, 2, 5, 7), 3, 1, 11, 0, False, "none", "bool"),
    ((3, 2, 5, 7), 6, 1, 11, 3, True, "hw", "bool"),          # rows = B*C
    ((3, 2, 5, 7), 3, 2, 2 ** 40 + 7, 5, False, "bhw", "uint8"),
    ((3, 2, 5, 7), 3, 3, 5, 6, True, "full", "float"),
    ((3, 2, 5, 7), 6, 2, None, 0, True, "chw", "bool"),
    ((3, 2, 5, 7), 3, 2, 9, 1, False, "bc", "uint8"),
    ((3, 2, 5, 7), 3, 1, 9, 2, False, "fallback", "float"),
    ((3, 2, 5, 7), 3, 2, 9, 7, True, "2d", "bool"),
    ((1, 13), 1, 2, 3, 2 ** 32 * 4 - 5, False, "none", "bool"),  # counter 2**32
    ((5, 1, 3, 3), 5, 3, None, 0, False, "bhw", "float"),
]


def _case_id(case):
    shape, rows, k, seed, offset, bias, pattern, kind = case
    return (f"{'x'.join(map(str, shape))}-r{rows}-k{k}-"
            f"{'noise' if seed is not None else 'nonoise'}-o{offset}-"
            f"{'bias' if bias else 'nobias'}-{pattern}-{kind}")


def _mask_for(shape, pattern, kind, device, generator):
    if len(shape) != 4:
        if pattern == "none":
            return None
        return (torch.rand(shape, generator=generator) > 0.4).to(device)
    return make_mask(kind, pattern, shape, device, generator)


@pytest.mark.parametrize("case", AFFINE_CASES, ids=_case_id)
@pytest.mark.parametrize("second_output", [False, True])
def test_affine_values_and_gradients(backend, device, case, second_output):
    shape, rows, k, seed, offset, bias, pattern, kind = case
    gen = torch.Generator().manual_seed(AFFINE_CASES.index(case))
    xs = random_inputs(shape, k, torch.float32, device, gen)
    mask = _mask_for(shape, pattern, kind, device, gen)
    cols = n_columns(k, seed, bias)
    coeffs = torch.randn(rows, cols, generator=gen).to(device)
    coeffs2 = torch.randn(rows, cols, generator=gen).to(device) \
        if second_output else None
    leaves = [t.clone().requires_grad_() for t in xs + [coeffs] +
              ([coeffs2] if second_output else [])]
    out = ops.affine(leaves[:k], leaves[k], mask, seed, offset,
                     coeffs2=leaves[k + 1] if second_output else None, bias=bias)
    outs = list(out) if second_output else [out]

    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    expected = [oracle_affine(ref_leaves[:k], c, mask, seed, offset, bias)
                for c in ref_leaves[k:]]
    for got, want in zip(outs, expected):
        assert got.dtype == torch.float32 and got.shape == shape
        assert_close(got, want)
        if mask is not None:  # masked positions are exactly 0
            assert torch.all(got[~(mask != 0).expand(shape)] == 0)

    weights = [torch.randn(shape, generator=gen).to(device) for _ in outs]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)),
                                leaves)
    ref_grads = torch.autograd.grad(
        sum((o * w).sum() for o, w in zip(expected, weights)), ref_leaves)
    for name, got, want in zip(["x0", "x1", "x2"][:k] + ["coeffs", "coeffs2"],
                               grads, ref_grads):
        assert_close(got, want, scale=10.0, msg=lambda m: f"grad {name}: {m}")


# (shape, rows, n_inputs, seed, power, offset, bias, mask pattern, mask dtype)
SUM_CASES = [
    ((3, 2, 5, 7), 3, 2, 4, 1, 2, False, "none", "bool"),
    ((3, 2, 5, 7), 3, 2, 4, 2, 3, True, "hw", "float"),
    ((3, 2, 5, 7), 6, 1, None, 1, 0, False, "bhw", "bool"),
    ((3, 2, 5, 7), 6, 3, 8, 1, 2, True, "fallback", "uint8"),
    ((3, 2, 5, 7), 3, 1, 8, 2, 2, False, "bc", "bool"),
    ((1, 13), 1, 1, 2 ** 62 + 1, 2, 9, False, "none", "bool"),
    ((5, 1, 3, 3), 5, 2, 6, 2, 0, False, "full", "float"),
]


def _sum_case_id(case):
    shape, rows, k, seed, power, offset, bias, pattern, kind = case
    return _case_id((shape, rows, k, seed, offset, bias, pattern, kind)) + f"-p{power}"


@pytest.mark.parametrize("case", SUM_CASES, ids=_sum_case_id)
def test_affine_sum_values_and_gradients(backend, device, case):
    shape, rows, k, seed, power, offset, bias, pattern, kind = case
    gen = torch.Generator().manual_seed(1000 + SUM_CASES.index(case))
    xs = random_inputs(shape, k, torch.float32, device, gen)
    mask = _mask_for(shape, pattern, kind, device, gen)
    coeffs = torch.randn(rows, n_columns(k, seed, bias), generator=gen).to(device)
    leaves = [t.clone().requires_grad_() for t in xs + [coeffs]]
    got = ops.affine_sum(leaves[:k], leaves[k], mask, seed, offset, power=power,
                         bias=bias)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    want = oracle_affine_sum(ref_leaves[:k], ref_leaves[k], mask, seed, offset,
                             power, bias)
    assert got.shape == (rows,) and got.dtype == torch.float32
    scale = float(want.detach().abs().max()) + 1.0
    torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=1e-5)
    row_weights = torch.randn(rows, generator=gen).to(device)
    grads = torch.autograd.grad((got * row_weights).sum(), leaves)
    ref_grads = torch.autograd.grad((want * row_weights).sum(), ref_leaves)
    for got_g, want_g in zip(grads, ref_grads):
        g_scale = float(want_g.abs().max()) + 1.0
        torch.testing.assert_close(got_g, want_g, atol=1e-5 * g_scale, rtol=1e-5)


def _dtypes_for(backend_name):
    dtypes = [torch.float32, torch.float16, torch.float64]
    if backend_name != "triton" or HAS_CUDA:
        dtypes.append(torch.bfloat16)  # the interpreter's bfloat16 is unreliable
    return dtypes


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "float64", "bfloat16"])
def test_dtypes(backend, device, dtype_name):
    dtype = getattr(torch, dtype_name)
    if dtype not in _dtypes_for(backend):
        pytest.skip(f"{dtype_name} is not tested in the Triton interpreter")
    gen = torch.Generator().manual_seed(7)
    shape = (2, 3, 4, 5)
    xs = random_inputs(shape, 2, dtype, device, gen)
    mask = make_mask("bool", "hw", shape, device, gen)
    coeffs = torch.randn(2, 3, generator=gen).to(device)
    out = ops.affine(xs, coeffs, mask, seed=21, offset=2)
    assert out.dtype == dtype
    want = oracle_affine(xs, coeffs, mask, 21, 2, False)
    # the noise agrees within float32 ulps, so float64 results do too
    assert_close(out, want, dtype=torch.float32 if dtype == torch.float64 else dtype)
    sums = ops.affine_sum(xs, coeffs, None, seed=21, offset=2, power=2)
    assert sums.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want_sums = oracle_affine_sum(xs, coeffs, None, 21, 2, 2, False)
    torch.testing.assert_close(sums, want_sums.to(sums.dtype), rtol=1e-5, atol=1e-4)
    no_noise = ops.affine(xs, coeffs[:, :2], None)
    assert_close(no_noise, oracle_affine(xs, coeffs[:, :2], None, None, 0, False))


def test_noncontiguous_inputs(backend, device):
    gen = torch.Generator().manual_seed(3)
    shape = (3, 2, 5, 7)
    xs = random_inputs(shape, 2, torch.float32, device, gen, noncontiguous=True)
    sliced = torch.randn(3, 4, 5, 7, generator=gen).to(device)[:, ::2]
    assert not sliced.is_contiguous()
    mask = make_mask("bool", "bhw", shape, device, gen)
    coeffs = torch.randn(3, 4, generator=gen).to(device)
    out = ops.affine(xs + [sliced], coeffs, mask, seed=5, offset=1)
    assert_close(out, oracle_affine(xs + [sliced], coeffs, mask, 5, 1, False))
    sums = ops.affine_sum(xs, coeffs[:, :3], mask, seed=5, offset=1, power=2)
    want = oracle_affine_sum(xs, coeffs[:, :3], mask, 5, 1, 2, False)
    torch.testing.assert_close(sums, want, rtol=1e-5, atol=1e-4)
    # a non-contiguous mask (a transposed view) is read correctly too
    tmask = make_mask("bool", "hw", (3, 2, 7, 5), device, gen).transpose(-1, -2)
    out = ops.affine(xs[:1], coeffs[:, :1], tmask)
    assert_close(out, oracle_affine(xs[:1], coeffs[:, :1], tmask, None, 0, False))


def test_all_masked_gives_zero_not_nan(backend, device):
    shape = (2, 1, 3, 4)
    x = torch.full(shape, float("nan"), device=device)
    mask = torch.zeros(1, 1, 3, 4, dtype=torch.bool, device=device)
    coeffs = torch.ones(2, 2, device=device)
    out = ops.affine([x], coeffs, mask, seed=1)
    assert torch.equal(out, torch.zeros_like(out))
    sums = ops.affine_sum([x], coeffs, mask, seed=1, power=2)
    assert torch.equal(sums, torch.zeros_like(sums))
    mean = ops.masked_mean(x, mask, dim=(1, 2, 3))
    assert torch.equal(mean, torch.zeros_like(mean))


def test_empty_tensor(backend, device):
    x = torch.empty(0, 3, device=device)
    out = ops.affine([x], torch.ones(1, 2, device=device), seed=1)
    assert out.shape == (0, 3)
    sums = ops.affine_sum([x], torch.ones(1, 2, device=device), seed=1)
    assert torch.equal(sums, torch.zeros(1, device=device))


def test_determinism_bitwise(backend, device):
    gen = torch.Generator().manual_seed(5)
    shape = (4, 3, 9, 11)
    latent = torch.randn(shape, generator=gen).to(device)
    pred0 = torch.randn(shape, generator=gen).to(device)
    mask = make_mask("float", "hw", shape, device, gen)
    gamma = torch.linspace(-5, 5, 4, device=device)

    def run():
        pred = pred0.clone().requires_grad_()
        x = latent.clone().requires_grad_()
        loss, per_sample = diffusion_loss(pred, x, gamma, seed=77, mask=mask,
                                              param="v")
        grads = torch.autograd.grad(loss, [pred, x])
        return [loss, per_sample, *grads]

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ---------------------------------------------------- triton-specific parts
needs_triton = pytest.mark.skipif("triton" not in backends.available(),
                                  reason="the triton backend is unavailable")


@pytest.mark.parametrize("mask_shape,data_shape,expected", [
    ((1, 1, 4, 5), (2, 3, 4, 5), (20, 120)),    # (O, M, I) = (1, 6, 20)
    ((2, 1, 4, 5), (2, 3, 4, 5), (20, 60)),     # (2, 3, 20)
    ((1, 3, 4, 5), (2, 3, 4, 5), (60, 120)),    # (1, 2, 60)
    ((2, 3, 1, 1), (2, 3, 4, 5), (1, 20)),      # (6, 20, 1)
    ((2, 3, 4, 5), (2, 3, 4, 5), (1, 1)),       # full: mask index = i
    ((4, 5), (2, 3, 4, 5), (20, 120)),          # fewer dims
    ((1, 1, 4, 5), (1, 1, 4, 5), (1, 1)),       # size-1 dims fit anywhere
    ((2, 1, 4, 1), (2, 3, 4, 5), None),         # needs the fallback
])
def test_mask_layout(mask_shape, data_shape, expected):
    from ddm_fast.backends.layout import mask_layout
    assert mask_layout(mask_shape, data_shape) == expected
    if expected is not None:  # the index formula reproduces the broadcast
        inner, period = expected
        numel = torch.Size(data_shape).numel()
        mask = torch.arange(torch.Size(mask_shape).numel()).reshape(mask_shape)
        idx = torch.arange(numel)
        gathered = mask.reshape(-1)[(idx // period) * inner + idx % inner]
        assert torch.equal(gathered, mask.expand(data_shape).reshape(-1))


@needs_triton
def test_triton_rejects_cpu_tensors_without_interpreter(monkeypatch):
    from ddm_fast.backends import triton_kernels
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(2, 3)
    args = (x, None, None, torch.ones(2, 1), None, None, -1, 0, False, x.dtype)
    if HAS_CUDA:
        with pytest.raises(backends.BackendUnavailableError, match="CPU|cpu"):
            triton_kernels.affine(*args)
    else:
        assert "TRITON_INTERPRET" in triton_kernels.why_unavailable("triton")
        with pytest.raises(backends.BackendUnavailableError,
                           match="TRITON_INTERPRET"):
            triton_kernels.affine(*args)


def _holds_noise(saved, noise):
    return saved.numel() == noise.numel() and torch.allclose(
        saved.detach().float().reshape(noise.shape), noise, atol=1e-4)


def test_noise_detector_sees_eager_chain_saving_noise():
    """The check of the next test can fail: the eager chain a user writes,
    alpha * x + sigma * noise with gamma requiring grad, leaves the noise to
    autograd."""
    shape = (2, 3, 4)
    latent = torch.randn(shape)
    gamma = torch.tensor([0.0, 1.0], requires_grad=True)
    noise = reference.randn(shape, 5, 0)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        alpha = torch.sigmoid(gamma).sqrt().reshape(2, 1, 1)
        sigma = torch.sigmoid(-gamma).sqrt().reshape(2, 1, 1)
        alpha * latent + sigma * noise.clone()
    assert any(_holds_noise(t, noise) for t in saved)


def test_training_step_saves_no_noise(backend, device):
    """Autograd keeps no noise-sized tensor between diffuse and the loss, on
    every backend: the noise is regenerated from (seed, offset) in both
    backward passes."""
    gen = torch.Generator().manual_seed(11)
    shape = (3, 2, 6, 5)
    seed, offset = 1234, 6
    latent = torch.randn(shape, generator=gen).to(device).requires_grad_()
    weight = torch.tensor(0.7, device=device, requires_grad=True)
    gamma = torch.tensor([-3.0, 0.5, 4.0], device=device, requires_grad=True)
    mask = make_mask("bool", "hw", shape, device, gen)
    noise = ops.randn(shape, seed, offset, device=device)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = ops.diffuse(latent, gamma, seed, mask, offset=offset)
        prediction = z * weight  # the "network": saves z and weight
        loss, _ = diffusion_loss(prediction, latent, gamma, seed, mask,
                                     param="eps", offset=offset)
    data_sized = [t for t in saved if t.numel() == latent.numel()]
    for t in data_sized:
        assert not _holds_noise(t, noise)
    # z (by the network), then prediction and latent (by the loss, to
    # recompute the residual); diffuse saves latent (its coefficients need it)
    assert len(data_sized) == 4, [tuple(t.shape) for t in data_sized]
    loss.backward()
    assert latent.grad is not None and gamma.grad is not None


# ------------------------------------------------------ high-level ops
PARAMS = ["eps", "v", "data", "score", "flow", "edm"]
WEIGHTINGS = ["elbo", "sigmoid", "exponential", "edm"]


def _loss_inputs(device, masked, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (3, 2, 5, 6)
    latent = torch.randn(shape, generator=gen).to(device)
    pred = torch.randn(shape, generator=gen).to(device)
    gamma = torch.tensor([-6.0, 0.3, 7.0], device=device)
    density = torch.rand(3, generator=gen).to(device) + 0.2
    mask = make_mask("bool", "bhw", shape, device, gen) if masked else None
    return latent, pred, gamma, density, mask


def _with_backend(name, fn):
    with backends.use(name):
        return fn()


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_diffusion_loss_matches_reference(fast_backend, device, param, weighting):
    masked = (PARAMS.index(param) + WEIGHTINGS.index(weighting)) % 2 == 0
    latent, pred, gamma, density, mask = _loss_inputs(device, masked)
    weight_module = ddm_fast.weighting.get_weighting(weighting)

    def run():
        p = pred.clone().requires_grad_()
        x = latent.clone().requires_grad_()
        loss, per_sample = diffusion_loss(
            p, x, gamma, seed=99, mask=mask, param=param,
            weighting=weight_module, density=density, offset=3)
        grads = torch.autograd.grad(loss, [p, x])
        return loss, per_sample, grads

    loss, per_sample, grads = run()
    ref_loss, ref_per_sample, ref_grads = _with_backend("reference", run)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(per_sample, ref_per_sample, rtol=2e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=2e-5,
                                   atol=1e-6 * (float(r.abs().max()) + 1))


@pytest.mark.parametrize("encoding", [False, True])
def test_diffuse_matches_reference(fast_backend, device, encoding):
    latent, _, gamma, _, mask = _loss_inputs(device, masked=True, seed=4)
    kwargs = dict(mean=torch.tensor([0.5, -1.0], device=device),
                  std=torch.tensor([2.0, 0.5], device=device)) if encoding else {}
    gamma = gamma.clone().requires_grad_()
    x = latent.clone().requires_grad_()
    z = ops.diffuse(x, gamma, seed=2 ** 35 + 1, mask=mask, offset=5, **kwargs)
    upstream = torch.randn_like(z)
    grads = torch.autograd.grad((z * upstream).sum(), [x, gamma])
    gamma_ref = gamma.detach().clone().requires_grad_()
    x_ref = latent.clone().requires_grad_()
    with backends.use("reference"):
        z_ref = ops.diffuse(x_ref, gamma_ref, seed=2 ** 35 + 1, mask=mask,
                            offset=5, **kwargs)
    ref_grads = torch.autograd.grad((z_ref * upstream).sum(), [x_ref, gamma_ref])
    assert_close(z, z_ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [None, (1, 2, 3), (2, 3), 3, (0, 2)])
@pytest.mark.parametrize("mask_pattern", ["none", "hw", "full"])
def test_masked_mean_matches_reference(fast_backend, device, dim, mask_pattern):
    gen = torch.Generator().manual_seed(8)
    shape = (3, 2, 4, 5)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    mask = make_mask("uint8", mask_pattern, shape, device, gen)
    got = ops.masked_mean(x, mask, dim=dim)
    grad = torch.autograd.grad(got.sum(), x)[0]
    x_ref = x.detach().clone().requires_grad_()
    with backends.use("reference"):
        want = ops.masked_mean(x_ref, mask, dim=dim)
    ref_grad = torch.autograd.grad(want.sum(), x_ref)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


@needs_triton
def test_int64_index_path_matches_int32(monkeypatch):
    """Tensors over 2**31 elements switch the kernels to int64 element
    indices; forced on a small tensor, that path gives the same bits."""
    from ddm_fast.backends import triton_kernels
    device = torch.device("cuda" if HAS_CUDA else "cpu")
    gen = torch.Generator().manual_seed(2)
    shape = (2, 3, 5, 7)
    xs = random_inputs(shape, 2, torch.float32, device, gen)
    mask = make_mask("bool", "bhw", shape, device, gen)
    coeffs = torch.randn(6, 4, generator=gen).to(device)

    def run():
        with backends.use("triton"):
            return (ops.affine(xs, coeffs, mask, seed=3, offset=2 ** 33 + 1,
                               bias=True),
                    ops.affine_sum(xs, coeffs, mask, seed=3, offset=5, bias=True))

    narrow = run()
    monkeypatch.setattr(triton_kernels, "needs_int64_index", lambda numel: True)
    wide = run()
    for a, b in zip(narrow, wide):
        assert torch.equal(a, b)


# ------------------------------------------- land never poisons the ocean
def test_nan_under_land_reaches_no_value_or_gradient(backend, device):
    """Real ocean and sea-ice fields carry NaN over land: with NaN and Inf at
    masked positions of the latent and the prediction, the noised latent,
    the loss, the per-sample statistic and every gradient stay finite, and
    the gradients are 0 under land."""
    from ddm_fast.loss import diffusion_loss
    gen = torch.Generator().manual_seed(21)
    shape = (3, 2, 6, 7)
    mask = make_mask("bool", "hw", shape, "cpu", gen).to(device)
    land = ~mask.expand(shape)
    latent = torch.randn(shape, generator=gen).to(device)
    latent[land] = float("nan")
    latent.view(-1)[land.reshape(-1).nonzero()[0]] = float("inf")
    latent.requires_grad_()
    gamma = torch.tensor([-2.0, 0.5, 3.0], device=device, requires_grad=True)
    z = ops.diffuse(latent, gamma, 5, mask)
    assert torch.isfinite(z).all() and (z[land] == 0).all()
    prediction = z * 0.5 + torch.where(land, float("nan"), 0.0)
    loss, per_sample = diffusion_loss(prediction, latent, gamma, 5, mask,
                                      param="v")
    mean = ops.masked_mean(latent, mask, dim=(1, 2, 3))
    grads = torch.autograd.grad(loss + mean.sum(), [latent, gamma])
    for value in (loss, per_sample, mean, *grads):
        assert torch.isfinite(value).all()
    assert (grads[0][land] == 0).all()


@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.float32),
                                    (torch.float32, torch.bfloat16)])
def test_each_gradient_in_its_input_dtype(backend, device, dtypes):
    """A float32 latent next to a bf16 prediction (autocast) gets a float32
    gradient computed in float32, not a bf16-rounded one."""
    gen = torch.Generator().manual_seed(5)
    shape = (2, 3, 5, 4)
    a = torch.randn(shape, generator=gen).to(device, dtypes[0]).requires_grad_()
    b = torch.randn(shape, generator=gen).to(device, dtypes[1]).requires_grad_()
    coeffs = torch.randn(2, 3, generator=gen).to(device)
    out = ops.affine([a, b], coeffs, seed=3)
    upstream = torch.randn(shape, generator=gen).to(device, out.dtype)
    ga, gb = torch.autograd.grad((out * upstream).sum(), [a, b])
    assert ga.dtype == dtypes[0] and gb.dtype == dtypes[1]
    up = upstream.double().reshape(2, -1)
    want_b = (coeffs[:, 1:2].double() * up).reshape(shape)
    atol = 1e-5 if dtypes[1] == torch.float32 else 2e-2
    torch.testing.assert_close(gb.double(), want_b, rtol=atol, atol=atol)


def test_empty_batch(backend, device):
    """B = 0 works: empty results, a zero loss, no error about coefficients."""
    from ddm_fast.loss import diffusion_loss
    latent = torch.zeros(0, 2, 3, device=device, requires_grad=True)
    gamma = torch.zeros(0, device=device)
    z = ops.diffuse(latent, gamma, 1)
    assert z.shape == latent.shape
    loss, per_sample = diffusion_loss(z * 1.0, latent, gamma, 1)
    assert per_sample.shape == (0,) and float(loss.detach()) == 0.0
    loss.backward()
    assert ops.masked_mean(latent, dim=(1, 2)).shape == (0,)


@needs_triton
def test_triton_reductions_over_several_blocks(monkeypatch):
    """Rows spanning several blocks (stage 2 summing the partials) and rows
    of one block (no second launch) give the reference's sums."""
    from ddm_fast.backends import triton_kernels
    device = torch.device("cuda" if HAS_CUDA else "cpu")
    gen = torch.Generator().manual_seed(6)
    shape = (3, 2, 11, 13)
    xs = random_inputs(shape, 2, torch.float32, device, gen)
    mask = make_mask("bool", "hw", shape, device, gen)
    coeffs = torch.randn(3, 4, generator=gen).to(device)
    with backends.use("reference"):
        want = ops.affine_sum(xs, coeffs, mask, seed=4, offset=3, bias=True)
        want_dots = ops.affine_dots(xs, coeffs, mask, seed=4, offset=3,
                                    bias=True, weight="combination")
    for counters in (16, 1024):
        monkeypatch.setattr(triton_kernels, "reduction_launch",
                            lambda n, c=counters: (c, 4))
        with backends.use("triton"):
            got = ops.affine_sum(xs, coeffs, mask, seed=4, offset=3, bias=True)
            dots = ops.affine_dots(xs, coeffs, mask, seed=4, offset=3,
                                   bias=True, weight="combination")
        torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-4)
        torch.testing.assert_close(dots, want_dots, rtol=2e-5, atol=1e-4)
