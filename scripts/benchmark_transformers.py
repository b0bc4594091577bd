"""Speed of token-merged vs unmerged Hugging Face vision encoders: the same as ``tomesd bench-transformers``.
See ``python scripts/benchmark_transformers.py --help``."""

import sys

from tomesd.cli.bench_transformers import main

if __name__ == "__main__":
    sys.exit(main())
