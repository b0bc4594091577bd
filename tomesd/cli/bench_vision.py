"""``tomesd bench-vision`` (and ``scripts/benchmark_vision.py``): throughput of token-merged vs unmerged timm
ViTs and the SAM ViT-B image encoder, in one process, interleaved, with the agreement of their outputs (see
:mod:`tomesd.lab.vision_bench`). Random weights: nothing is downloaded.

    tomesd bench-vision                                  # the README table (16-35 min at 1 thread)
    tomesd bench-vision --models deit_s --repeats 3
    tomesd bench-vision --models deit_s sam_b --compile  # compiled vs compiled (inductor)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line."""
    from tomesd.lab.vision_bench import CASES

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES), help="table rows, in order")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("samples/vision"), help="where benchmark.md/.png go")
    parser.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                        help="time compiled unpatched vs compiled tomesd (default backend: inductor) into "
                             "benchmark_compile.md instead")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the benchmark; returns the exit code (2: bad arguments)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: never ask the hub
    from tomesd.lab.vision_bench import run_benchmark

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    run_benchmark(args.models, args.repeats, args.threads, args.out, args.compile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
