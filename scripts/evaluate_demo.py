"""The demo model's prompt adherence and ToMe's cost in quality: the same as ``tomesd evaluate-demo``. See
``python scripts/evaluate_demo.py --help``."""

import sys

from tomesd.cli.evaluate_demo import main

if __name__ == "__main__":
    sys.exit(main())
