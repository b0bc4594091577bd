"""Speed of token merging vs merge ratio and patch options: the same as ``tomesd bench``. See
``python scripts/benchmark.py --help``."""

import sys

from tomesd.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
