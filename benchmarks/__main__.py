"""``python -m benchmarks`` (from anywhere after ``pip install -e .``, or
from the repository root) or ``python path/to/benchmarks`` (from anywhere):
see ``--help``."""
import os
import sys

if not __package__:  # run as a directory: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import ddm_fast  # noqa: F401
except ImportError as exc:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.exit(f"benchmarks: cannot import ddm_fast ({exc}).\n"
             f"Install the package (pip install -e {root}) or run from the "
             f"repository root: cd {root} && python -m benchmarks")

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
