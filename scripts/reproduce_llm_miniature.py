"""The K-token reproduction 'miniature': the same as ``tomesd reproduce-llm miniature``. See
``python scripts/reproduce_llm_miniature.py --help``."""

import sys

from tomesd.cli.reproduce_llm import main

if __name__ == "__main__":
    sys.exit(main(["miniature", *sys.argv[1:]], prog="reproduce_llm_miniature.py"))
