"""The tomesd A/B app (Gradio), shipped with the package so it starts from any directory: ``tomesd app``
(or ``python -m tomesd.ui``; in a clone also ``python -m ui``); ``tomesd app --help`` lists its options."""

from .app import build_app

__all__ = ["build_app"]
