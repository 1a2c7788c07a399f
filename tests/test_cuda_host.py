"""The CUDA kernels' own per-thread code, checked on the host (no GPU needed).

``csrc/cuda/kernels_impl.cuh`` holds every kernel's per-thread work as
``__host__ __device__`` code; ``csrc/cuda/tests/emulate_kernels.cu`` runs it
sequentially on the CPU against a direct reference (every dtype mix, mask
layout, offset class, the int64 index path, aligned and misaligned
pointers), and ``host_check.cpp`` checks the shared element-wise header
(Philox known answers, the fp16/bf16 conversions, the fast divisions). Both
need only a compiler: CI (which has nvcc but no GPU) runs them, so a CUDA
kernel bug is caught before a GPU ever sees it.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDES = ["-I" + os.path.join(ROOT, "csrc", "include"),
            "-I" + os.path.join(ROOT, "csrc", "cuda")]
TESTS = os.path.join(ROOT, "csrc", "cuda", "tests")


def _build_and_run(compiler, source, tmp_path, extra, args=()):
    exe = str(tmp_path / os.path.splitext(os.path.basename(source))[0])
    subprocess.run([compiler, "-O2", "-std=c++17", *extra, *INCLUDES,
                    os.path.join(TESTS, source), "-o", exe],
                   check=True, capture_output=True, text=True)
    run = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return run.stdout


def test_header_math_on_host(tmp_path):
    out = _build_and_run("g++", "host_check.cpp", tmp_path, [])
    assert "host_check: all passed" in out


def test_cuda_kernel_code_emulated_on_host(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.environ.get("DDM_FAST_CUDA") != "0":
        required = "cuda" in os.environ.get("DDM_FAST_REQUIRE_BACKENDS", "")
        if required or os.environ.get("CI"):
            pytest.fail("nvcc is not on PATH: the CUDA kernels cannot be checked")
        pytest.skip("nvcc is not on PATH")
    out = _build_and_run(nvcc, "emulate_kernels.cu", tmp_path,
                         ["--expt-relaxed-constexpr"], args=["400"])
    assert "emulate_kernels: all passed" in out
