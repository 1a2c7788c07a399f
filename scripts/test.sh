#!/usr/bin/env bash
# Set up .venv if needed and run the test suite.
# The backends this machine must have are declared here: a backend that fails
# to build or import then fails the suite instead of skipping its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ -z "${DDM_FAST_REQUIRE_BACKENDS:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    export DDM_FAST_REQUIRE_BACKENDS=reference,triton,cpu,cuda
  else
    export DDM_FAST_REQUIRE_BACKENDS=reference,triton,cpu
  fi
fi
.venv/bin/python -m pytest -q tests "$@"
