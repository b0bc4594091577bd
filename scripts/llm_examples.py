"""One prompt answered by a real model at several K: the same as ``tomesd llm-examples``. See
``python scripts/llm_examples.py --help``."""

import sys

from tomesd.cli.llm_examples import main

if __name__ == "__main__":
    sys.exit(main())
