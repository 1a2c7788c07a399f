#!/usr/bin/env bash
# The main job: set up .venv if needed, then train, sample and evaluate the
# Lorenz-96 example. Usage: bash scripts/lorenz96.sh [OUT_DIR] [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/lorenz96}
shift || true
bash scripts/setup_env.sh
.venv/bin/python examples/lorenz96/main.py --out "$OUT" "$@"
