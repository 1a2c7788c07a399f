"""ddm_fast benchmark suite v2 (lives beside the package, not in it).

    python -m benchmarks [--quick] [--workload NAME,...] [--json F] [--markdown M] [--plot P]
    python -m benchmarks --save          # benchmarks/results/<device>-<date>.{json,md,png}
    python -m benchmarks.readme FILE     # README's performance block from a result

Run from the repository root (or ``python path/to/benchmarks`` from
anywhere) with ddm_fast installed. See ``benchmarks/README.md``.
"""
