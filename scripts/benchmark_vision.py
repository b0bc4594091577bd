"""Throughput of token-merged vs unmerged vision encoders: the same as ``tomesd bench-vision``. See
``python scripts/benchmark_vision.py --help``."""

import sys

from tomesd.cli.bench_vision import main

if __name__ == "__main__":
    sys.exit(main())
