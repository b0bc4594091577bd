"""``python -m ui``: the same as ``tomesd app`` (see ``python -m ui --help``)."""

from tomesd.ui.__main__ import main

if __name__ == "__main__":
    main(prog="python -m ui")
