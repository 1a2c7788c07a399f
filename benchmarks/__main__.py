"""Run the benchmark suite: ``python -m benchmarks [--device cuda] [--json FILE]``."""
import argparse

from .suite import run_suite, write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--json", default=None, help="write the report to this file")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile baseline")
    parser.add_argument("--quick", action="store_true",
                        help="smallest shape only (a smoke run)")
    args = parser.parse_args(argv)
    report = run_suite(args.device, dtypes=tuple(args.dtypes.split(",")),
                       compile_baseline=not args.no_compile, quick=args.quick)
    print(f"device: {report['device']}, copy bandwidth "
          f"{report['copy_bandwidth_gbps']:.1f} GB/s")
    if args.json:
        write_json(report, args.json)


if __name__ == "__main__":
    main()
