"""The speed/quality frontier of the diffusers patch: the same as ``tomesd frontier``. See
``python scripts/frontier.py --help``."""

import sys

from tomesd.cli.frontier import main

if __name__ == "__main__":
    sys.exit(main())
