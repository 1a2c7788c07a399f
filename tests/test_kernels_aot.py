"""The Triton kernels without a GPU: ahead-of-time compilation of every
launch variant class to sm_80/sm_90 cubins (registers, spills, occupancy),
the SASS model behind kernels/README.md's ceilings, the noise's sine and
cosine against float64, and every tile path of the kernels (aligned or
general, coefficient row pairs, mask modes, loops of several sub-tiles)
against the reference backend through the interpreter.

The compile test runs ``python -m ddm_fast.kernels.aot`` in a subprocess
with ``TRITON_INTERPRET`` unset: this session sets it (conftest.py), and
under it ``triton.jit`` returns interpreter functions that cannot compile.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddm_fast import backends, ops

pytestmark = pytest.mark.skipif(
    "triton" not in backends.available() and "triton" not in backends.required(),
    reason="the triton backend is unavailable")


# ------------------------------------------------------------ AOT compile
@pytest.mark.slow
def test_aot_compile_every_variant_class():
    """Every representative variant compiles for sm_80 and sm_90 without
    spills and with registers for at least 50 % occupancy (the table is
    printed; run ``python -m ddm_fast.kernels.aot`` to see it)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.pop("TRITON_CACHE_DIR", None)  # a fresh temporary cache
    proc = subprocess.run([sys.executable, "-m", "ddm_fast.kernels.aot"],
                          env=env, capture_output=True, text=True, timeout=1800)
    print(proc.stdout[-20000:])
    print(proc.stderr[-5000:], file=sys.stderr)
    assert proc.returncode == 0, (
        "AOT compile check failed:\n"
        + "\n".join(l for l in proc.stdout.splitlines()
                    if l.startswith("FAIL"))[-8000:] + proc.stderr[-3000:])


def test_variant_space_matches_kernels_and_launchers():
    """The AOT variant space names every argument of every kernel, covers
    every value of every factor, and its launch configurations are the ones
    the launch functions return."""
    from ddm_fast.kernels import aot, common
    variants = aot.representative_variants()
    for kernel in ("randn", "affine", "row_reduce", "sum_partials"):
        names = set(aot._kernel_fn(kernel).arg_names)
        for v in (v for v in variants if v.kernel == kernel):
            given = {n for n, _ in v.signature} | {n for n, _ in v.constexprs}
            assert given == names, (kernel, names ^ given)
    def values(kernel, name):
        return {dict(v.constexprs).get(name) for v in variants
                if v.kernel == kernel}

    for kernel in ("affine", "row_reduce"):
        assert values(kernel, "MASK_MODE") == {0, 1, 2, 3, 4}
        assert values(kernel, "N_INPUTS") == {1, 2, 3}
        assert values(kernel, "HAS_NOISE") == {0, 1}
        assert values(kernel, "HAS_BIAS") == {0, 1}
    for kernel in ("randn", "affine", "row_reduce"):
        assert values(kernel, "ALIGNED") == {0, 1}
        assert values(kernel, "INDEX_64") == {0, 1}
    assert values("affine", "ROW_PAIR") == {0, 1, 2}
    assert values("affine", "HAS_OUT2") == {0, 1}
    assert {(dict(v.constexprs)["RESULT"], dict(v.constexprs)["POWER"],
             dict(v.constexprs)["WEIGHT"]) for v in variants
            if v.kernel == "row_reduce"} == {(0, 1, 0), (0, 2, 0), (1, 1, 0),
                                             (1, 1, 1), (1, 1, 2)}
    elementwise, reduction = aot._launch_configs()
    for kernel, launches in (("randn", elementwise), ("affine", elementwise),
                             ("row_reduce", reduction)):
        built = {(dict(v.constexprs)["COUNTERS"], v.num_warps) for v in variants
                 if v.kernel == kernel}
        # every launch, except single-iteration reductions between the
        # smallest and the biggest (the same code with another tile size)
        needed = {(c, w) for c, w, sub in launches
                  if kernel != "row_reduce" or sub != c
                  or (c, w, sub) in (launches[0], launches[-1])
                  or c == max(c2 for c2, _, s2 in launches if s2 == c2)}
        assert needed <= built <= {(c, w) for c, w, _ in launches}, kernel
    saved = common.INTERPRETING
    common.INTERPRETING = False
    try:
        assert (common.elementwise_launch(10 ** 7)
                in [(c, w) for c, w, _ in elementwise])
        assert (common.reduction_launch(3000)
                in [(c, w) for c, w, _ in reduction])
        for c, w, s in elementwise + reduction:
            assert s == common.sub_counters(c, w) and c % s == 0
            assert s >= 32 * w or s == c  # whole counters per thread
    finally:
        common.INTERPRETING = saved


def test_pairwise_covers_every_pair():
    from ddm_fast.kernels.aot import pairwise
    factors = dict(a=[0, 1, 2], b=["x", "y"], c=[True, False], d=[1, 2, 3])

    def repair(a):  # (a=2, b="y") is unreachable
        if a["a"] == 2 and a["b"] == "y":
            a = dict(a, b="x")
        return a
    rows = pairwise(factors, repair)
    names = list(factors)
    for i, f in enumerate(names):
        for g in names[i + 1:]:
            for u in factors[f]:
                for v in factors[g]:
                    if {f: u, g: v} == {"a": 2, "b": "y"}:
                        continue
                    assert any(r[f] == u and r[g] == v for r in rows), (f, u, g, v)
    assert len(rows) < 3 * 2 * 2 * 3


# ------------------------------------------------------------ SASS model
_SASS = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   BSSY B0, 0x90 ;
        /*0020*/                   FSETP.GE.AND P0, PT, R0, 105615, PT ;
        /*0030*/              @!P0 BRA 0x80 ;
        /*0040*/                   LDG.E.CONSTANT R2, desc[UR4][R4.64] ;
        /*0050*/                   IMAD R3, R2, R2, RZ ;
        /*0060*/               @P1 BRA 0x40 ;
        /*0070*/                   DMUL R6, R6, R6 ;
        /*0080*/                   FFMA R1, R1, R1, R1 ;
        /*0090*/                   BSYNC B0 ;
        /*00a0*/                   IADD3 R7, R7, 0x1, RZ ;
        /*00b0*/                   ISETP.GE.AND P2, PT, R7, 0x4, PT ;
        /*00c0*/               @P2 BRA 0x100 ;
        /*00d0*/                   FMUL R8, R8, R8 ;
        /*00e0*/                   MUFU.RSQ R9, R8 ;
        /*00f0*/                   BRA 0xa0 ;
        /*0100*/                   STG.E desc[UR4][R10.64], R8 ;
        /*0110*/                   EXIT ;
        /*0120*/                   BRA 0x120;
"""


def test_hot_path_skips_slow_paths_and_runs_loops_once():
    from ddm_fast.kernels import aot
    path = aot.hot_path(aot.parse_sass(_SASS))
    ops_ = [i.base for i in path]
    assert "DMUL" not in ops_ and "LDG" not in ops_  # the Payne-Hanek path
    assert ops_ == ["S2R", "BSSY", "FSETP", "BRA", "FFMA", "BSYNC", "IADD3",
                    "ISETP", "BRA", "FMUL", "MUFU", "BRA", "STG", "EXIT"]
    body = aot.loop_body(path)
    assert [i.base for i in body] == ["IADD3", "ISETP", "BRA", "FMUL", "MUFU", "BRA"]
    counts = aot.pipe_counts(path)
    assert counts["xu"] == 1 and counts["fma"] == 2 and counts["alu"] == 3
    cycles = aot.warp_cycles(counts)
    assert cycles["xu"] == 8 and cycles["alu"] == 6


def test_ceiling_model():
    from ddm_fast.kernels import aot
    per_elem = dict(issue=40.0, alu=10.0, fma=10.0, fmaheavy=5.0, xu=1.0,
                    fp64=0.0)
    clocks, fraction, bound = aot.ceiling(per_elem, 4.0)
    assert bound == "issue" and clocks == 40.0
    # 132 SMs x 4 schedulers x 32 lanes x 1.98 GHz / 40 clocks x 4 B / 3.35 TB/s
    assert fraction == pytest.approx(132 * 4 * 32 * 1.98e9 / 40 * 4 / 3.35e12)
    assert aot.ceiling(dict(per_elem, issue=4.0, alu=1.0, fma=1.0,
                            fmaheavy=0.0, xu=0.0), 4.0)[1] == 1.0


def test_occupancy_model():
    from ddm_fast.kernels.aot import occupancy
    assert occupancy(64, 0, 4, 90)[0] == 0.5      # 8 blocks of 128 threads
    assert occupancy(65, 0, 4, 90)[0] < 0.5       # 72 per thread after rounding
    assert occupancy(32, 0, 8, 90)[0] == 1.0
    assert occupancy(128, 0, 8, 80)[0] == 0.25
    assert occupancy(32, 100 * 1024, 4, 80)[1] == 0.0625  # one block per SM


# ------------------------------------------------------------ the noise
try:  # the probe must be a module-level JIT function (its globals)
    import triton
    import triton.language as tl
    from ddm_fast.kernels.common import sincos

    @triton.jit
    def _sincos_probe(x_ptr, s_ptr, c_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        s, c = sincos(tl.load(x_ptr + i, mask=i < n, other=0.0))
        tl.store(s_ptr + i, s, mask=i < n)
        tl.store(c_ptr + i, c, mask=i < n)
except ImportError:  # no triton: the tests skip
    _sincos_probe = None


def _run_sincos(x: np.ndarray):
    xt = torch.from_numpy(x)
    s, c = torch.empty_like(xt), torch.empty_like(xt)
    block = 1 << 20
    _sincos_probe[(triton.cdiv(len(x), block),)](xt, s, c, len(x), BLOCK=block)
    return s.numpy(), c.numpy()


def test_sincos_accurate_on_box_muller_angles():
    """sin/cos of the angles Box-Muller produces (theta = float32(2 pi) u,
    u the uniforms of docs/math.md, "Words to uniforms to normals"), 2**20
    random ones plus the quadrant edges, through the interpreter: within
    1.5 float32 ulp of 1 of float64
    (kernels/README.md has the exhaustive bound)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernel in the interpreter")
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2 ** 31, size=1 << 20, dtype=np.int64)
    u = words.astype(np.float32) * np.float32(4.6566127342e-10)
    edges = np.concatenate([
        np.arange(k * (1 << 29) - 64, k * (1 << 29) + 64) for k in range(5)])
    u = np.concatenate([u, np.clip(edges, 0, 2 ** 31 - 1).astype(np.float32)
                        * np.float32(4.6566127342e-10)])
    theta = (np.float32(6.283185307179586) * u).astype(np.float32)
    s, c = _run_sincos(theta)
    t = theta.astype(np.float64)
    bound = 1.5 * np.spacing(np.float32(1.0))
    assert np.abs(s - np.sin(t)).max() <= bound
    assert np.abs(c - np.cos(t)).max() <= bound


def test_normals_within_contract_of_float64_box_muller():
    """The normals of 2**18 counters against Box-Muller in float64 on the
    same uniforms: within 8 float32 ulp of max(|n|, 1) (the contract of
    docs/math.md, "Words to uniforms to normals"), words and uniforms
    bit-identical by construction (they are tl.randint4x's and
    uint_to_uniform_float's)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernel in the interpreter")
    n = 1 << 20
    got = ops.randn((n,), seed=2 ** 40 + 17, offset=8, device="cpu").numpy()
    from ddm_fast.backends import reference
    counters = torch.arange(2, 2 + n // 4, dtype=torch.int64)
    words = reference.philox4x32(counters & 0xFFFFFFFF, counters >> 32,
                                 2 ** 40 + 17)
    u = [reference._uniform(w).numpy() for w in words]
    u1 = np.maximum(u[0], np.float32(1e-7)).astype(np.float64)
    u3 = np.maximum(u[2], np.float32(1e-7)).astype(np.float64)
    th1 = (np.float32(6.283185307179586) * u[1]).astype(np.float64)
    th3 = (np.float32(6.283185307179586) * u[3]).astype(np.float64)
    r1, r3 = np.sqrt(-2 * np.log(u1)), np.sqrt(-2 * np.log(u3))
    want = np.stack([r1 * np.cos(th1), r1 * np.sin(th1),
                     r3 * np.cos(th3), r3 * np.sin(th3)], axis=1).reshape(-1)
    bound = 8 * np.spacing(np.maximum(np.abs(want), 1).astype(np.float32))
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= bound), err.max()


# ------------------------------------------------- the tile paths
def _patched(monkeypatch, counters, sub):
    from ddm_fast.backends import triton_kernels
    monkeypatch.setattr(triton_kernels, "elementwise_launch",
                        lambda n: (counters, 4))
    monkeypatch.setattr(triton_kernels, "reduction_launch",
                        lambda n: (counters, 4))
    monkeypatch.setattr(triton_kernels, "sub_counters", lambda c, w: sub)


_SHAPE = (2, 3, 8, 8)
# (mask shape or None, rows, offset, (COUNTERS, SUB)): per row 192 / 64 /
# 32 elements against tiles of 64 (coefficient row pairs, or rows per
# element); masks in the data's layout (mode 1) and (O, 1, I) with
# (I, P) = (64, 192), (192, 384): mode 3; (8, 192), (1, 64): mode 4; with
# tiles of 128, (8, 64), (1, 64): mode 2; aligned and unaligned offsets;
# 2 sub-tiles per program (one for the last case)
_PATH_CASES = [
    (None, 2, 0, (16, 8)), (None, 6, 3, (16, 8)),
    ((1, 1, 8, 8), 6, 0, (16, 8)), ((2, 1, 8, 8), 2, 5, (16, 8)),
    ((1, 3, 8, 8), 6, 4, (16, 8)), ((1, 1, 1, 8), 6, 0, (16, 8)),
    ((2, 3, 1, 1), 2, 7, (16, 8)), ((2, 3, 8, 8), 12, 12, (16, 8)),
    ((1, 1, 1, 8), 12, 1, (16, 8)), ((2, 3, 1, 8), 6, 8, (32, 16)),
    ((2, 3, 1, 1), 12, 2, (32, 16)), ((2, 1, 8, 8), 2, 5, (16, 16)),
]


def _case_id(case):
    mask, rows, offset, (counters, sub) = case
    return (f"{'x'.join(map(str, mask)) if mask else 'nomask'}-r{rows}-o{offset}"
            f"-c{counters}s{sub}")


@pytest.mark.parametrize("case", _PATH_CASES, ids=_case_id)
def test_tile_paths_match_reference(monkeypatch, case):
    """affine (one and two outputs), affine_sum, affine_dots (a weight
    tensor, the combination) and randn with tiles of 64 elements, in 2
    sub-tiles or 1, so every path of the kernels runs: aligned or general,
    coefficient row pairs (scalars, gathers by row) or per-element rows,
    mask modes 0-3; NaN under land never leaks. (test_ops covers the
    weights and powers on the default tiles.)"""
    if "triton" not in backends.available():
        pytest.skip("the triton backend is unavailable")
    mask_shape, rows, offset, tiles = case
    gen = torch.Generator().manual_seed(rows * 31 + offset)
    xs = [torch.randn(_SHAPE, generator=gen) for _ in range(3)]
    mask = None
    if mask_shape is not None:
        mask = torch.rand(mask_shape, generator=gen) > 0.3
        for x in xs:  # garbage under land must never reach a result
            x[~mask.expand(_SHAPE)] = float("nan")
    weight = torch.randn(_SHAPE, generator=gen)
    c3 = torch.randn(rows, 5, generator=gen)
    c3b = torch.randn(rows, 5, generator=gen)
    c2 = torch.randn(rows, 3, generator=gen)

    def run():
        out, out2 = ops.affine(xs, c3, mask, seed=7, offset=offset, coeffs2=c3b,
                               bias=True)
        one = ops.affine(xs[:1], c2[:, :2], mask, seed=9, offset=offset)
        loss = ops.affine_sum(xs[:2], c2, mask, seed=7, offset=offset, power=2)
        dots = [ops.affine_dots(xs, c3, mask, seed=7, offset=offset, bias=True,
                                weight=w) for w in (weight, "combination")]
        noise = ops.randn(_SHAPE, 3, offset)
        return [out, out2, one, loss, *dots, noise]

    with backends.use("reference"):
        want = run()
    _patched(monkeypatch, *tiles)
    with backends.use("triton"):
        got = run()
    for k, (g, w) in enumerate(zip(got, want)):
        assert torch.isfinite(g).all(), k
        torch.testing.assert_close(g, w, rtol=2e-5, atol=2e-4,
                                   msg=lambda m, k=k: f"result {k}: {m}")


def test_sum_partials_several_iterations():
    """Stage 2 with more partials than one block (ITERS > 1), directly."""
    if "triton" not in backends.available():
        pytest.skip("the triton backend is unavailable")
    import triton
    from ddm_fast.kernels.affine_sum import sum_partials_kernel
    gen = torch.Generator().manual_seed(3)
    rows, blocks, cols = 3, 37, 2
    partials = torch.randn(rows * blocks * cols, generator=gen, dtype=torch.float64)
    out = torch.empty(rows, cols, dtype=torch.float64)
    sum_partials_kernel[(rows * cols,)](partials, out, blocks, cols, BLOCK=16,
                                        ITERS=triton.cdiv(blocks, 16))
    torch.testing.assert_close(out, partials.reshape(rows, blocks, cols).sum(1))
