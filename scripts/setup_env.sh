#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv with everything ddm_fast
# needs, on a machine that has only Python. On a machine without a CUDA
# driver torch is pinned to the CPU build 2.13.0; with nvidia-smi present the
# default torch build is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1; then
  "$VPY" -m pip install -q "torch>=2.6"
else
  "$VPY" -m pip install -q "torch==2.13.0"
fi
"$VPY" -m pip install -q "setuptools>=64" wheel "pybind11>=2.10" numpy scipy tqdm matplotlib pytest pytest-benchmark "triton==3.6.0"
# optional extras the test suite exercises: Lightning callbacks (drop-in
# compatibility with the toolbox's users), ensembles written as xarray data
"$VPY" -m pip install -q "lightning>=2.2" "xarray>=2024.1" netCDF4 "zarr>=2.16"
"$VPY" -m pip install -q --no-build-isolation --no-deps -e .
