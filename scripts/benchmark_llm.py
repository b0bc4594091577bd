"""Prefill speed of K-token merging vs the uncompressed prompt: the same as ``tomesd bench-llm``. See
``python scripts/benchmark_llm.py --help``."""

import sys

from tomesd.cli.bench_llm import main

if __name__ == "__main__":
    sys.exit(main())
