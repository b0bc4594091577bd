"""``python -m ui`` in a clone: the A/B app, which lives in the package as :mod:`tomesd.ui` (so that ``tomesd
app`` starts it from any directory)."""

from tomesd.ui import build_app

__all__ = ["build_app"]
