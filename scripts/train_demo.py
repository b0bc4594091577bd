"""Train the demo text-to-image pipeline and ship it: the same as ``tomesd train-demo``. See
``python scripts/train_demo.py --help``."""

import sys

from tomesd.cli.train_demo import main

if __name__ == "__main__":
    sys.exit(main())
