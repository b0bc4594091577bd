"""The K-token reproduction 'code': the same as ``tomesd reproduce-llm code``. See
``python scripts/reproduce_llm_code.py --help``."""

import sys

from tomesd.cli.reproduce_llm import main

if __name__ == "__main__":
    sys.exit(main(["code", *sys.argv[1:]], prog="reproduce_llm_code.py"))
