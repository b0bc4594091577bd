"""Draw which tubelets a VideoMAE merges, for global and space-time matching: the same as
``tomesd visualize-video-merges``. See ``python scripts/visualize_video_merges.py --help``."""

import sys

from tomesd.cli.visualize_video_merges import main

if __name__ == "__main__":
    sys.exit(main())
