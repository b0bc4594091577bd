"""Train a K-token encoder + LoRA adapters on a local causal LM: the same as ``tomesd train-ktoken``. See
``python scripts/train_ktoken.py --help``."""

import sys

from tomesd.cli.train_ktoken import main

if __name__ == "__main__":
    sys.exit(main())
