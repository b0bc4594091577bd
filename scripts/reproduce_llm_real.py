"""The K-token reproduction 'real': the same as ``tomesd reproduce-llm real``. See
``python scripts/reproduce_llm_real.py --help``."""

import sys

from tomesd.cli.reproduce_llm import main

if __name__ == "__main__":
    sys.exit(main(["real", *sys.argv[1:]], prog="reproduce_llm_real.py"))
