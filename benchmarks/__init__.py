"""ddm_fast benchmark suite: ``python -m benchmarks --json results.json``."""
