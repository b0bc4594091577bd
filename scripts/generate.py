"""Batch generation with token merging and a per-image speed log: the same as ``tomesd generate`` (also
under ``accelerate launch``). See ``python scripts/generate.py --help``."""

import sys

from tomesd.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
