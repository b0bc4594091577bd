"""Draw ToMe's merge groups of a timm ViT over an image: the same as ``tomesd visualize-merges``. See
``python scripts/visualize_merges.py --help``."""

import sys

from tomesd.cli.visualize_merges import main

if __name__ == "__main__":
    sys.exit(main())
